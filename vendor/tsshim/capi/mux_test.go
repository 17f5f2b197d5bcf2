package main

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// rustEnd is the test's stand-in for the Rust side of a channel.
type rustEnd struct {
	t *testing.T
	c net.Conn
}

func newTestMux(t *testing.T) (*mux, *rustEnd) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := rustSide(t, fds[0]), rustSide(t, fds[1])
	m := newMux(nil, a.(*net.UnixConn))
	t.Cleanup(func() { m.fail(nil); b.Close() })
	return m, &rustEnd{t: t, c: b}
}

func (r *rustEnd) send(typ byte, id uint32, p []byte) {
	var hdr [frameHeader]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], id)
	binary.BigEndian.PutUint32(hdr[5:], uint32(len(p)))
	if _, err := r.c.Write(append(hdr[:], p...)); err != nil {
		r.t.Fatal(err)
	}
}

// next reads one frame; ok is false on timeout or end of stream.
func (r *rustEnd) next(d time.Duration) (typ byte, id uint32, p []byte, ok bool) {
	r.c.SetReadDeadline(time.Now().Add(d))
	var hdr [frameHeader]byte
	if _, err := io.ReadFull(r.c, hdr[:]); err != nil {
		return 0, 0, nil, false
	}
	p = make([]byte, binary.BigEndian.Uint32(hdr[5:]))
	if _, err := io.ReadFull(r.c, p); err != nil {
		r.t.Fatal(err)
	}
	return hdr[0], binary.BigEndian.Uint32(hdr[1:]), p, true
}

func tcpPair(t *testing.T) (ours, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); got <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return c, <-got
}

func window(n int) []byte {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], uint32(n))
	return p[:]
}

// A stream sends at most its window to Rust, resumes on WINDOW, writes
// Rust's bytes to the connection returning credit, and half-closes both ways.
// Run over a host TCP pair (the reader goroutine) and over a gVisor pair
// (the event-driven reader, as every tsnet connection).
func TestMuxStreamWindowsAndHalfClose(t *testing.T) {
	t.Run("reader goroutine", func(t *testing.T) {
		ours, peer := tcpPair(t)
		testWindowsAndHalfClose(t, ours, peer, false)
	})
	t.Run("gvisor events", func(t *testing.T) {
		ours, peer := newGonetNet(t).pair(t)
		testWindowsAndHalfClose(t, ours, peer, true)
	})
}

func testWindowsAndHalfClose(t *testing.T, ours, peer net.Conn, evented bool) {
	m, r := newTestMux(t)
	s, err := m.register(0, ours)
	if err != nil {
		t.Fatal(err)
	}
	s.startReading()
	if (s.ev != nil) != evented {
		t.Fatalf("event-driven reader: %v, want %v", s.ev != nil, evented)
	}

	big := bytes.Repeat([]byte{7}, initialWindow+5000)
	go peer.Write(big)
	got := 0
	for got < initialWindow {
		typ, id, p, ok := r.next(5 * time.Second)
		if !ok || typ != frData || id != s.id {
			t.Fatalf("frame %d for %d (ok %v) after %d bytes", typ, id, ok, got)
		}
		got += len(p)
	}
	if got != initialWindow {
		t.Fatalf("sent %d bytes on a window of %d", got, initialWindow)
	}
	if typ, _, _, ok := r.next(300 * time.Millisecond); ok {
		t.Fatalf("frame %d past the window", typ)
	}
	// One byte more than the rest, so the reader can also see EOF later.
	r.send(frWindow, s.id, window(5001))
	for got < len(big) {
		typ, _, p, ok := r.next(5 * time.Second)
		if !ok || typ != frData {
			t.Fatal("no data after WINDOW")
		}
		got += len(p)
	}

	// Rust → peer, credit back, then FIN: the peer reads EOF.
	r.send(frData, s.id, []byte("hello"))
	r.send(frFin, s.id, nil)
	all, err := io.ReadAll(peer)
	if err != nil || string(all) != "hello" {
		t.Fatalf("peer got %q, %v", all, err)
	}
	typ, _, p, ok := r.next(5 * time.Second)
	if !ok || typ != frWindow || binary.BigEndian.Uint32(p) != 5 {
		t.Fatalf("want WINDOW 5, got %d %v", typ, p)
	}
	// The peer closes too: FIN to Rust, the stream is finished.
	peer.Close()
	if typ, _, _, ok := r.next(5 * time.Second); !ok || typ != frFin {
		t.Fatalf("want FIN, got %d", typ)
	}
	deadline := time.Now().Add(5 * time.Second)
	for m.get(s.id) != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if m.get(s.id) != nil {
		t.Fatal("finished stream still registered")
	}
}

// Rust sending beyond the window it was granted gets the stream reset.
func TestMuxResetsAStreamOverItsWindow(t *testing.T) {
	m, r := newTestMux(t)
	// A pipe's writes block until the peer reads, and it never does.
	ours, peer := net.Pipe()
	defer peer.Close()
	s, _ := m.register(0, ours)
	// Without any WINDOW from us, Rust may send initialWindow bytes in all.
	chunk := make([]byte, maxPayload)
	for i := 0; i < initialWindow/maxPayload+1; i++ {
		r.send(frData, s.id, chunk)
	}
	for {
		typ, id, _, ok := r.next(10 * time.Second)
		if !ok {
			t.Fatal("no RST")
		}
		if typ == frRst && id == s.id {
			break
		}
		if typ == frWindow {
			t.Fatal("credit returned while nothing was written")
		}
	}
}

// Garbage from Rust fails the channel and closes every stream's conn.
func TestMuxGarbageFailsTheChannel(t *testing.T) {
	for _, garbage := range [][]byte{
		{99, 0, 0, 0, 1, 0, 0, 0, 0},           // unknown type
		{frData, 0, 0, 0, 1, 0xff, 0xff, 0, 0}, // oversize
		{frDial, 0, 0, 0, 1, 0, 0, 0, 0},       // dial with a shim id
		{frWindow, 0, 0, 0, 1, 0, 0, 0, 1, 1},  // short window
		{frOpen, 0, 0, 0, 1, 0, 0, 0, 0},       // OPEN is shim→Rust only
	} {
		m, r := newTestMux(t)
		ours, peer := tcpPair(t)
		s, _ := m.register(0, ours)
		go s.readLoop()
		r.c.Write(garbage)
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := peer.Read(make([]byte, 1)); err == nil {
			t.Fatalf("%v: stream conn still open", garbage)
		}
		if !m.isClosed() {
			t.Fatalf("%v: channel not failed", garbage)
		}
		if _, _, _, ok := r.next(5 * time.Second); ok {
			// Frames queued before the failure may still arrive; the
			// socket must end after them.
			for ok {
				_, _, _, ok = r.next(5 * time.Second)
			}
		}
		peer.Close()
	}
}
