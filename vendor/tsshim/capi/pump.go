package main

// Handing connections to Rust. Every tailnet connection becomes one end of a
// unix stream socketpair; two goroutines copy bytes between the tsnet conn
// and our end. Go's netpoller parks those goroutines, so an idle connection
// costs no OS thread, and buffers are borrowed only while data flows.

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

// handOff returns the caller's end (close-on-exec) of a new socketpair whose
// other end is pumped to and from c. Ownership of c passes to the pump.
func handOff(c net.Conn) (int, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "tsshim-conn")
	uc, err := net.FileConn(f) // dups fds[0] (close-on-exec, non-blocking)
	f.Close()
	if err != nil {
		syscall.Close(fds[1])
		return -1, fmt.Errorf("socketpair conn: %w", err)
	}
	go pump(c, uc.(*net.UnixConn))
	return fds[1], nil
}

type closeWriter interface{ CloseWrite() error }

// pump copies both ways. EOF in one direction becomes a half-close in the
// other; an error in either direction tears the whole connection down.
func pump(c net.Conn, uc *net.UnixConn) {
	var left atomic.Int32
	left.Store(2)
	var once sync.Once
	teardown := func() {
		once.Do(func() {
			c.Close()
			uc.Close()
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
	go func() { done(copyAdaptive(uc, c), uc) }()
	done(copyAdaptive(c, uc), c)
}

const (
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
