package main

// Listeners deliver each accepted connection to Rust as one SOCK_SEQPACKET
// message carrying the connection's fd (SCM_RIGHTS) and, in the same message,
// its exact remote and local address. Address and fd can never be paired
// wrongly, unlike a lookup by fd number after the fact.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tailscale.com/ipn"
	"tailscale.com/tsnet"
)

type listener struct {
	node *node
	ln   net.Listener
	ctl  *net.UnixConn // per-listener hand-off socket (socketpair data path)
	// mux and lid: connections go to Rust as OPEN frames on the node's
	// channel, tagged with the listener id Rust chose (channel data path).
	mux  *mux
	lid  uint32
	once sync.Once
	done chan struct{} // closed by close
	// cert is what Funnel listeners present; set (and renewed) by the
	// caller, so Funnel serves the same certificate source as the tailnet.
	cert atomic.Pointer[tls.Certificate]
}

func (l *listener) getCert(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := l.cert.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("tsshim: no certificate set for this Funnel listener yet")
}

func (l *listener) close() {
	l.once.Do(func() {
		close(l.done)
		l.ln.Close()
		if l.ctl != nil {
			l.ctl.Close()
		}
	})
}

// listenChannel listens and delivers connections on the node's channel as
// listener lid.
func (n *node) listenChannel(network, addr string, funnel, funnelOnly bool, lid uint32) (int64, error) {
	n.mu.Lock()
	m := n.mux
	n.mu.Unlock()
	if m == nil || m.isClosed() {
		return -1, errors.New("listen: the node's channel is not open")
	}
	if err := n.ensureStarted(); err != nil {
		return -1, err
	}
	l := &listener{node: n, done: make(chan struct{}), mux: m, lid: lid}
	ln, err := n.netListen(l, network, addr, funnel, funnelOnly)
	if err != nil {
		return -1, err
	}
	l.ln = ln
	return n.register(l)
}

func (n *node) register(l *listener) (int64, error) {
	h := newHandle()
	registryMu.Lock()
	if nodes[n.handle] != n { // closed while we were setting up
		registryMu.Unlock()
		l.close()
		return -1, errUnknownNode
	}
	listeners[h] = l
	registryMu.Unlock()
	go l.acceptLoop(h)
	return h, nil
}

func (n *node) netListen(l *listener, network, addr string, funnel, funnelOnly bool) (net.Listener, error) {
	var (
		ln  net.Listener
		err error
	)
	if funnel {
		opts := []tsnet.FunnelOption{tsnet.FunnelTLSConfig(&tls.Config{
			GetCertificate: l.getCert,
			NextProtos:     []string{"h2", "http/1.1"},
			MinVersion:     tls.VersionTLS12,
		})}
		if funnelOnly {
			opts = append(opts, tsnet.FunnelOnly())
		}
		ln, err = n.srv.ListenFunnel(network, addr, opts...)
	} else {
		ln, err = n.srv.Listen(network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	return ln, nil
}

func (n *node) listen(network, addr string, funnel, funnelOnly bool) (int64, int, error) {
	if err := n.ensureStarted(); err != nil {
		return -1, -1, err
	}
	l := &listener{node: n, done: make(chan struct{})}
	ln, err := n.netListen(l, network, addr, funnel, funnelOnly)
	if err != nil {
		return -1, -1, err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		ln.Close()
		return -1, -1, fmt.Errorf("listen: socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "tsshim-listener")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		ln.Close()
		syscall.Close(fds[1])
		return -1, -1, fmt.Errorf("listen: control socket: %w", err)
	}
	l.ln, l.ctl = ln, fc.(*net.UnixConn)
	h, err := n.register(l)
	if err != nil {
		syscall.Close(fds[1])
		return -1, -1, err
	}
	return h, fds[1], nil
}

func (l *listener) acceptLoop(h int64) {
	defer func() {
		if r := recover(); r != nil {
			l.node.logf("tsshim: listener panic recovered: %v", r)
		}
		l.close()
		registryMu.Lock()
		delete(listeners, h)
		registryMu.Unlock()
		if l.mux != nil {
			l.mux.send(frListenerEnd, l.lid, nil)
		}
	}()
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Anything else (EMFILE in a TLS wrapper, a failed handshake
			// surfaced by Accept, a netstack hiccup) is about one connection:
			// the listener goes on, after a pause that grows to maxBackoff so
			// a persistent error cannot spin a core.
			backoff = nextBackoff(backoff)
			l.node.logf("tsshim: accept: %v (retrying in %v)", err, backoff)
			if !l.sleep(backoff) {
				return
			}
			continue
		}
		backoff = 0
		if err := l.deliver(c); err != nil {
			// The Rust side stopped reading (listener dropped): stop.
			return
		}
	}
}

const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
)

func nextBackoff(d time.Duration) time.Duration {
	if d < minBackoff {
		return minBackoff
	}
	if d *= 2; d > maxBackoff {
		return maxBackoff
	}
	return d
}

func (l *listener) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// sleep waits d or until the listener closes; false means it closed.
func (l *listener) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.done:
		return false
	}
}

// deliver sends c's fd and addresses as one message. It blocks (a parked
// goroutine, not a thread) while Rust is not accepting: backpressure.
//
// When the hand-off itself fails (socketpair: EMFILE/ENFILE, ENOMEM) the
// connection is closed and a hand-off error message without descriptor goes
// to Rust instead, so the failure reaches tailpass's log and counters.
// It returns an error only when the control socket is unusable (Rust
// dropped the listener): then the listener ends.
func (l *listener) deliver(c net.Conn) error {
	if l.mux != nil {
		return l.mux.deliver(l.lid, c)
	}
	remote, origin := connOrigin(c)
	fd, err := handOff(c, &l.node.conns)
	if err != nil {
		c.Close()
		l.node.logf("tsshim: accept hand-off: %v", err)
		return l.sendCtl(handOffErrorMsg(remote, err), nil)
	}
	msg := []byte(remote + "\n" + c.LocalAddr().String() + "\n" + origin)
	err = l.sendCtl(msg, syscall.UnixRights(fd))
	// Our copy of the fd goes either way: on success the receiver holds its
	// own; on failure closing it ends the pump, which closes c.
	syscall.Close(fd)
	return err
}

// handOffErrorMsg is the control message for a connection that could not
// be handed over (see tsshim.h). The reason is one line.
func handOffErrorMsg(remote string, err error) []byte {
	reason := strings.ReplaceAll(err.Error(), "\n", " ")
	if len(reason) > 200 {
		reason = reason[:200]
	}
	return []byte(handOffErrorTag + "\n" + remote + "\n" + reason)
}

const handOffErrorTag = "handoff-error"

// sendCtl writes one control message. A resource error on the control
// socket itself (ENOBUFS, ENOMEM, ETOOMANYREFS) loses this message only;
// the caller's fd is closed by the caller, which ends that connection.
// Only a closed or broken control socket is returned as an error.
func (l *listener) sendCtl(msg, oob []byte) error {
	_, _, err := l.ctl.WriteMsgUnix(msg, oob, nil)
	if err == nil {
		return nil
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EBADF) {
		return err
	}
	l.node.logf("tsshim: control message lost: %v", err)
	l.sleep(minBackoff)
	return nil
}

// connOrigin returns the address of whoever really opened c and where it
// came from. A Funnel connection's RemoteAddr is the Funnel relay node on the
// tailnet, not the client: WhoIs on it would name the relay. Its public
// source is FunnelConn.Src, and it is marked "funnel" so the caller never
// treats it as a tailnet peer.
func connOrigin(c net.Conn) (remote, origin string) {
	inner := c
	if tc, ok := c.(*tls.Conn); ok {
		inner = tc.NetConn()
	}
	if fc, ok := inner.(*ipn.FunnelConn); ok {
		return fc.Src.String(), "funnel"
	}
	return c.RemoteAddr().String(), "tailnet"
}

func setListenerCert(h int64, certPEM, keyPEM []byte) error {
	registryMu.Lock()
	l, ok := listeners[h]
	registryMu.Unlock()
	if !ok {
		return errors.New("unknown or closed listener handle")
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("listener certificate: %w", err)
	}
	l.cert.Store(&c)
	return nil
}

func closeListener(h int64) error {
	registryMu.Lock()
	l, ok := listeners[h]
	delete(listeners, h)
	registryMu.Unlock()
	if !ok {
		return errors.New("unknown or closed listener handle")
	}
	l.close()
	return nil
}

func (n *node) logf(format string, args ...any) {
	n.mu.Lock()
	f := n.srv.UserLogf
	n.mu.Unlock()
	if f != nil {
		f(format, args...)
	}
}
