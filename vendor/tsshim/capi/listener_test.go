package main

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"tailscale.com/tsnet"
)

// chanListener is a net.Listener fed by the test: each item is a conn or
// an error for one Accept call.
type chanListener struct {
	items  chan any
	closed chan struct{}
}

func newChanListener() *chanListener {
	return &chanListener{items: make(chan any, 16), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case it := <-l.items:
		if err, ok := it.(error); ok {
			return nil, err
		}
		return it.(net.Conn), nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// addrConn is one end of a net.Pipe with tailnet-looking addresses: it
// needs no descriptor, so the tests can run with a full fd table.
type addrConn struct {
	net.Conn
	remote string
}

func (c addrConn) RemoteAddr() net.Addr { return fakeAddr(c.remote) }
func (c addrConn) LocalAddr() net.Addr  { return fakeAddr("100.64.0.1:443") }

func pipeConn(remote string) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	return addrConn{a, remote}, b
}

// startTestListener runs acceptLoop over ln and returns the Rust end of
// the control socket.
func startTestListener(t *testing.T, ln net.Listener) (*listener, int) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "ctl")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{srv: &tsnet.Server{}}
	l := &listener{node: n, ln: ln, ctl: fc.(*net.UnixConn), done: make(chan struct{})}
	go l.acceptLoop(-1)
	t.Cleanup(func() { l.close(); syscall.Close(fds[1]) })
	return l, fds[1]
}

type ctlMsg struct {
	payload string
	fds     []int
}

// readCtl reads one control message the way the Rust side does.
func readCtl(t *testing.T, fd int) ctlMsg {
	t.Helper()
	tv := syscall.NsecToTimeval(int64(10 * time.Second))
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	buf := make([]byte, 512)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, _, _, err := syscall.Recvmsg(fd, buf, oob, syscall.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("reading control message: %v", err)
	}
	m := ctlMsg{payload: string(buf[:n])}
	scms, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range scms {
		fds, err := syscall.ParseUnixRights(&s)
		if err != nil {
			t.Fatal(err)
		}
		m.fds = append(m.fds, fds...)
	}
	t.Cleanup(func() {
		for _, fd := range m.fds {
			syscall.Close(fd)
		}
	})
	return m
}

func TestAcceptLoopSurvivesAcceptErrors(t *testing.T) {
	ln := newChanListener()
	_, rust := startTestListener(t, ln)
	for i := 0; i < 4; i++ {
		ln.items <- errors.New("accept: too many open files")
	}
	c, _ := pipeConn("100.64.0.2:41000")
	ln.items <- c
	m := readCtl(t, rust)
	if want := "100.64.0.2:41000\n100.64.0.1:443\ntailnet"; m.payload != want || len(m.fds) != 1 {
		t.Fatalf("got %q with %d fds, want %q with one", m.payload, len(m.fds), want)
	}
	// Closing the listener ends the loop: the control socket reads EOF.
	ln.Close()
	if m := readCtl(t, rust); m.payload != "" || len(m.fds) != 0 {
		t.Fatalf("after close: got %q with %d fds, want EOF", m.payload, len(m.fds))
	}
}

func TestNextBackoffGrowsToOneSecond(t *testing.T) {
	var d time.Duration
	for i := 0; i < 20; i++ {
		d = nextBackoff(d)
	}
	if d != maxBackoff || nextBackoff(0) != minBackoff || nextBackoff(minBackoff) != 2*minBackoff {
		t.Fatalf("backoff: got %v after 20 steps", d)
	}
}

// fillFDs opens descriptors until the table is full (under a lowered soft
// limit) and returns a function that closes them and restores the limit.
func fillFDs(t *testing.T) func() {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var held []int
	for {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatalf("filling the fd table: %v", err)
			}
			break
		}
		held = append(held, fd)
	}
	return func() {
		for _, fd := range held {
			syscall.Close(fd)
		}
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	}
}

func TestHandOffFailureReachesRustAndListenerGoesOn(t *testing.T) {
	ln := newChanListener()
	_, rust := startTestListener(t, ln)

	release := fillFDs(t)
	c, peer := pipeConn("100.64.0.3:42000")
	ln.items <- c
	m := readCtl(t, rust)
	release()
	if len(m.fds) != 0 || !strings.HasPrefix(m.payload, "handoff-error\n100.64.0.3:42000\n") ||
		!strings.Contains(m.payload, "too many open files") {
		t.Fatalf("got %q with %d fds, want a hand-off error naming EMFILE", m.payload, len(m.fds))
	}
	// The lost connection was closed, not leaked.
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection that could not be handed over is still open")
	}

	c2, _ := pipeConn("100.64.0.3:42001")
	ln.items <- c2
	m = readCtl(t, rust)
	if !strings.HasPrefix(m.payload, "100.64.0.3:42001\n") || len(m.fds) != 1 {
		t.Fatalf("after releasing fds: got %q with %d fds", m.payload, len(m.fds))
	}
}
