package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// rustSide wraps the fd handOff returns, the way the Rust side sees it.
func rustSide(t *testing.T, fd int) net.Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "rust-side")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHandOffCopiesBothWaysWithHalfClose(t *testing.T) {
	// A real TCP connection on loopback stands in for the tsnet conn.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); peer <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	remote := <-peer
	fd, err := handOff(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if flags, _ := fcntl(fd); flags&syscall.FD_CLOEXEC == 0 {
		t.Error("handed-off fd is not close-on-exec")
	}
	rs := rustSide(t, fd)

	big := make([]byte, 3<<20)
	rand.Read(big)
	// Rust side → remote, then half-close; remote still answers.
	go func() {
		rs.Write(big)
		rs.(*net.UnixConn).CloseWrite()
	}()
	got, err := io.ReadAll(remote)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("remote got %d bytes (err %v), want %d", len(got), err, len(big))
	}
	go func() {
		remote.Write(big[:12345])
		remote.(*net.TCPConn).CloseWrite()
	}()
	back, err := io.ReadAll(rs)
	if err != nil || !bytes.Equal(back, big[:12345]) {
		t.Fatalf("rust side got %d bytes (err %v)", len(back), err)
	}
	rs.Close()
	remote.Close()
}

func TestPumpTearsDownWhenRustSideCloses(t *testing.T) {
	a, b := net.Pipe() // no CloseWrite: the pump must close fully
	var set connSet
	fd, err := handOff(a, &set)
	if err != nil {
		t.Fatal(err)
	}
	rs := rustSide(t, fd)
	rs.Close()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Read(make([]byte, 1)); err != io.EOF && err != io.ErrClosedPipe {
		t.Fatalf("remote not closed after rust side closed: %v", err)
	}
	for i := 0; set.len() != 0; i++ {
		if i > 100 {
			t.Fatal("closed connection still tracked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A closing set refuses new connections and closes what it holds.
	c1, c2 := net.Pipe()
	if _, err := handOff(c1, &set); err != nil {
		t.Fatal(err)
	}
	set.closeAll()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err != io.EOF && err != io.ErrClosedPipe {
		t.Fatalf("closeAll left a connection open: %v", err)
	}
	c3, _ := net.Pipe()
	if _, err := handOff(c3, &set); err == nil {
		t.Fatal("closed set accepted a connection")
	}
}

func fcntl(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
