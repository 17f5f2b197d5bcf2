package main

// Reading tsnet connections without a parked goroutine per connection.
//
// A tsnet connection is a *gonet.TCPConn over gVisor's netstack. gonet's
// Read blocks its goroutine, so a channel stream read that way needs one
// goroutine (and a buffer) per idle connection: the biggest part of a
// proxied connection's idle memory (docs/tailnet.md). gVisor itself is
// event-driven: every endpoint has a waiter queue that calls a listener
// when the endpoint becomes readable. gonet keeps both in unexported
// fields, so we find them once by reflection (name *and* type checked:
// a gVisor upgrade that changes them makes gonetParts report false and
// every stream falls back to the goroutine reader; TestGonetPartsFound
// catches that on the upgrade), register the stream on the waiter queue,
// and read with the endpoint's non-blocking Read from a goroutine that
// exists only while there is something to read and credit to read it
// into. An idle connection then costs a waiter entry, not a goroutine.

import (
	"net"
	"reflect"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Offsets of gonet.TCPConn's ep and wq fields; ok when both exist with
// the types this file relies on.
var gonetLayout = func() (l struct {
	ep, wq uintptr
	ok     bool
}) {
	t := reflect.TypeOf(gonet.TCPConn{})
	ep, ok1 := t.FieldByName("ep")
	wq, ok2 := t.FieldByName("wq")
	l.ok = ok1 && ok2 &&
		ep.Type == reflect.TypeOf((*tcpip.Endpoint)(nil)).Elem() &&
		wq.Type == reflect.TypeOf((*waiter.Queue)(nil))
	l.ep, l.wq = ep.Offset, wq.Offset
	return l
}()

// gonetParts returns c's gVisor endpoint and waiter queue when c is a
// gonet TCP connection. (gonet's Read reads straight from the endpoint
// and keeps nothing back, so reading the endpoint ourselves loses no
// bytes.)
func gonetParts(c net.Conn) (tcpip.Endpoint, *waiter.Queue, bool) {
	tc, ok := c.(*gonet.TCPConn)
	if !ok || tc == nil || !gonetLayout.ok {
		return nil, nil, false
	}
	p := unsafe.Pointer(tc)
	ep := *(*tcpip.Endpoint)(unsafe.Add(p, gonetLayout.ep))
	wq := *(**waiter.Queue)(unsafe.Add(p, gonetLayout.wq))
	if ep == nil || wq == nil {
		return nil, nil, false
	}
	return ep, wq, true
}

// evReader is a stream's event-driven reader.
type evReader struct {
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	entry waiter.Entry
	// Guarded by the stream's mu: a drain goroutine runs (scheduled), and
	// something happened since it last looked (again).
	scheduled, again bool
}

const evMask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// startReading starts copying the connection to Rust: event-driven for a
// gonet connection, with a reader goroutine otherwise.
func (s *mstream) startReading() {
	ep, wq, ok := gonetParts(s.c)
	if !ok {
		go s.readLoop()
		return
	}
	ev := &evReader{ep: ep, wq: wq}
	ev.entry.Init(s, evMask)
	s.mu.Lock()
	s.ev = ev
	s.mu.Unlock()
	wq.EventRegister(&ev.entry)
	// Bytes may have arrived before the registration.
	s.schedule()
}

// NotifyEvent is called by gVisor, with the waiter queue locked, when the
// endpoint becomes readable, hangs up or fails: it must not block.
func (s *mstream) NotifyEvent(waiter.EventMask) {
	s.schedule()
}

// schedule makes sure a drain goroutine will look at the endpoint.
func (s *mstream) schedule() {
	s.mu.Lock()
	ev := s.ev
	if ev == nil || s.dead {
		s.mu.Unlock()
		return
	}
	if ev.scheduled {
		ev.again = true
		s.mu.Unlock()
		return
	}
	ev.scheduled = true
	s.mu.Unlock()
	go s.drain()
}

// drain reads what the endpoint has, within the credit Rust granted, and
// returns when it would block or the credit is spent; a notification or
// new credit schedules it again.
func (s *mstream) drain() {
	var big *[]byte
	defer func() {
		if big != nil {
			bigPool.Put(big)
		}
		if r := recover(); r != nil {
			s.abort(true)
		}
	}()
	ev := s.ev // set before the first schedule, never changed
	for {
		s.mu.Lock()
		ev.again = false
		credit, dead := s.credit, s.dead
		s.mu.Unlock()
		if dead {
			return
		}
		if credit > 0 {
			if big == nil {
				big = bigPool.Get().(*[]byte)
			}
			buf := (*big)[:min(credit, maxPayload)]
			w := tcpip.SliceWriter(buf)
			res, err := ev.ep.Read(&w, tcpip.ReadOptions{})
			switch err.(type) {
			case nil:
				if res.Count > 0 {
					ev.ep.ModerateRecvBuf(res.Count)
					s.mu.Lock()
					s.credit -= res.Count
					s.mu.Unlock()
					if !s.m.send(frData, s.id, buf[:res.Count]) {
						s.abort(false)
						return
					}
					continue
				}
			case *tcpip.ErrWouldBlock:
			case *tcpip.ErrClosedForReceive:
				s.readEOF()
				return // rdone: nothing more to read, stay scheduled
			default:
				s.abort(true)
				return
			}
		}
		// Nothing to read, or no credit: go idle unless something
		// happened meanwhile.
		s.mu.Lock()
		if ev.again && !s.dead {
			s.mu.Unlock()
			continue
		}
		ev.scheduled = false
		s.mu.Unlock()
		return
	}
}

// stopEvents unregisters the stream from its waiter queue; called once the
// stream is dead, never with s.mu held (the queue calls NotifyEvent, which
// takes s.mu, with its own lock held).
func (s *mstream) stopEvents() {
	s.mu.Lock()
	ev := s.ev
	s.mu.Unlock()
	if ev != nil {
		ev.wq.EventUnregister(&ev.entry)
	}
}

// resetConn makes the connection's close a reset (RST), where it can.
func resetConn(c net.Conn) {
	if ep, _, ok := gonetParts(c); ok {
		ep.Abort()
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}
