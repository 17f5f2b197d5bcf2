package main

// Handing connections to Rust. Every tailnet connection becomes one end of a
// unix stream socketpair; two goroutines copy bytes between the tsnet conn
// and our end. Go's netpoller parks those goroutines, so an idle connection
// costs no OS thread. While idle, the tsnet->Rust copy holds a 2 KiB buffer
// (gonet has no readiness API: a read needs a buffer) and the Rust->tsnet
// copy holds none (it waits for readability, then borrows a pooled one).

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// connSet tracks a node's live connections so close can end them while the
// node's netstack still runs (see closeNode).
type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// closeAll closes every tracked connection, refuses new ones and returns
// how many it closed.
func (s *connSet) closeAll() int {
	s.mu.Lock()
	s.closed = true
	m := s.m
	s.m = nil
	s.mu.Unlock()
	for c := range m {
		c.Close()
	}
	return len(m)
}

// handOff returns the caller's end (close-on-exec) of a new socketpair whose
// other end is pumped to and from c. Ownership of c passes to the pump.
// With a non-nil set, c is tracked there until the pump ends.
func handOff(c net.Conn, set *connSet) (int, error) {
	if set != nil && !set.add(c) {
		c.Close()
		return -1, errors.New("node is closing")
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		if set != nil {
			set.remove(c)
		}
		return -1, fmt.Errorf("socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "tsshim-conn")
	uc, err := net.FileConn(f) // dups fds[0] (close-on-exec, non-blocking)
	f.Close()
	if err != nil {
		syscall.Close(fds[1])
		if set != nil {
			set.remove(c)
		}
		return -1, fmt.Errorf("socketpair conn: %w", err)
	}
	go pump(c, uc.(*net.UnixConn), set)
	return fds[1], nil
}

type closeWriter interface{ CloseWrite() error }

// pump copies both ways. EOF in one direction becomes a half-close in the
// other; an error in either direction tears the whole connection down.
func pump(c net.Conn, uc *net.UnixConn, set *connSet) {
	var left atomic.Int32
	left.Store(2)
	var once sync.Once
	teardown := func() {
		once.Do(func() {
			c.Close()
			uc.Close()
			if set != nil {
				set.remove(c)
			}
		})
	}
	done := func(err error, dst net.Conn) {
		if err != nil {
			teardown()
		} else if cw, ok := dst.(closeWriter); ok {
			if cw.CloseWrite() != nil {
				teardown()
			}
		} else {
			teardown()
		}
		if left.Add(-1) == 0 {
			teardown()
		}
	}
	go func() {
		defer recoverTeardown(teardown)
		done(copyAdaptive(uc, c), uc)
	}()
	defer recoverTeardown(teardown)
	done(copyFromUnix(c, uc), c)
}

// copyFromUnix copies uc to dst like copyAdaptive, but holds no buffer at
// all while uc is idle: it parks in the netpoller until uc is readable
// (peeking one byte on the stack) and only then borrows a pooled buffer.
func copyFromUnix(dst io.Writer, uc *net.UnixConn) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var (
			one     [1]byte
			n       int
			peekErr error
		)
		err := rc.Read(func(fd uintptr) bool {
			n, _, peekErr = syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return peekErr != syscall.EAGAIN
		})
		if err == nil {
			err = peekErr
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil // EOF
		}
		eof, err := copyBurst(dst, uc)
		if eof || err != nil {
			return err
		}
	}
}

// recoverTeardown keeps a panic in a pump goroutine (there is no caller to
// report it to) from killing the process; the connection is dropped.
func recoverTeardown(teardown func()) {
	if r := recover(); r != nil {
		teardown()
	}
}

const (
	// smallBuf is what a tsnet->Rust copy holds while idle; a read that
	// fills it switches to a pooled bigBuf until data stops streaming.
	// (512 B cost half the one-stream throughput in the benchmark: DERP
	// delivers a stream in short reads, and each one that leaves burst
	// mode became a 512 B write.)
	smallBuf = 2 << 10
	bigBuf   = 64 << 10
)

var bigPool = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}

// copyAdaptive is io.Copy that holds only a small buffer while idle and
// borrows a large pooled one while reads keep filling the small one.
// It returns nil on a clean EOF from src.
func copyAdaptive(dst io.Writer, src io.Reader) error {
	small := make([]byte, smallBuf)
	for {
		n, err := src.Read(small)
		if n > 0 {
			if _, werr := dst.Write(small[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return eofIsNil(err)
		}
		if n < len(small) {
			continue
		}
		eof, err := copyBurst(dst, src)
		if eof || err != nil {
			return err
		}
	}
}

// copyBurst copies with a big buffer until a read comes back short (data
// stopped streaming), end of stream (eof) or an error.
func copyBurst(dst io.Writer, src io.Reader) (eof bool, err error) {
	bp := bigPool.Get().(*[]byte)
	defer bigPool.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false, werr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return true, nil
			}
			return false, err
		}
		if n < len(buf)/2 {
			return false, nil
		}
	}
}

func eofIsNil(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
