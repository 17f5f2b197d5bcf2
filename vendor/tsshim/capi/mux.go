package main

// The channel: one framed SOCK_STREAM socket per node between the shim and
// Rust carries every connection of that node, instead of a socketpair per
// connection. Frames are [type u8][stream u32][len u32][payload], big
// endian (see tsshim.h for the contract). Each stream has a credit window
// in each direction, so a stream whose reader is slow stops only itself
// and the memory it can pin is bounded by the window.
//
// Per stream, a tsnet (gonet) conn is read through gVisor's waiter queue
// by a goroutine that runs only while there is something to read
// (evread.go); other conns by a reader goroutine with a small buffer. A
// writer goroutine runs only while bytes from Rust are queued.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
)

// Frame types (tsshim.h).
const (
	frOpen        = 1  // shim→Rust: an accepted connection
	frDial        = 2  // Rust→shim: dial, payload timeout_ms u32 + "network\naddr"
	frDialOK      = 3  // shim→Rust: payload the peer's "ip:port"
	frDialErr     = 4  // shim→Rust: payload the error text
	frData        = 5  // both ways
	frWindow      = 6  // both ways: payload u32 credit increment
	frFin         = 7  // both ways: no more data from the sender (half-close)
	frRst         = 8  // both ways: the stream is gone
	frHandOffErr  = 9  // shim→Rust: stream = listener id, "peer\nreason"
	frListenerEnd = 10 // shim→Rust: stream = listener id

	frameHeader = 9
	// maxPayload bounds every frame; a longer one is a protocol error.
	maxPayload = 64 << 10
	// initialWindow is each side's receive window per stream.
	initialWindow = 256 << 10
	// rustIDBit marks stream ids that Rust allocates (dials); the shim
	// allocates ids without it (accepted connections).
	rustIDBit = 1 << 31
)

var errChannelClosed = errors.New("channel to tailpass closed")

type mux struct {
	node *node
	conn *net.UnixConn

	// Frames go out write-through: the sender that finds nobody writing
	// writes them itself (no hand-off to another goroutine); senders that
	// come while it writes append to wbuf, and it writes those too.
	wmu     sync.Mutex
	wbuf    []byte
	spare   []byte
	writing bool
	wclosed bool

	mu      sync.Mutex
	streams map[uint32]*mstream
	nextID  uint32
	closed  bool
	once    sync.Once
}

// openChannel makes the node's channel and returns Rust's end.
func (n *node) openChannel() (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return -1, errUnknownNode
	}
	if n.mux != nil && !n.mux.isClosed() {
		// A failed channel may be replaced (its streams and listeners
		// have ended); a live one may not.
		return -1, errors.New("the node's channel is already open")
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("channel: socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "tsshim-channel")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		syscall.Close(fds[1])
		return -1, fmt.Errorf("channel: %w", err)
	}
	m := newMux(n, fc.(*net.UnixConn))
	n.mux = m
	return fds[1], nil
}

func newMux(n *node, c *net.UnixConn) *mux {
	m := &mux{node: n, conn: c, streams: map[uint32]*mstream{}}
	go m.readLoop()
	return m
}

func (m *mux) logf(format string, args ...any) {
	if m.node != nil {
		m.node.logf(format, args...)
	}
}

func (m *mux) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// send writes one frame (or queues it behind the frames being written);
// false when the channel is closed. It blocks while the channel's socket
// buffer is full: Rust reads the channel without ever blocking, so that
// is only ever a short wait.
func (m *mux) send(typ byte, id uint32, payload []byte) bool {
	var hdr [frameHeader]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], id)
	binary.BigEndian.PutUint32(hdr[5:], uint32(len(payload)))
	m.wmu.Lock()
	if m.wclosed {
		m.wmu.Unlock()
		return false
	}
	m.wbuf = append(m.wbuf, hdr[:]...)
	m.wbuf = append(m.wbuf, payload...)
	if m.writing {
		m.wmu.Unlock()
		return true
	}
	m.writing = true
	for len(m.wbuf) > 0 && !m.wclosed {
		buf := m.wbuf
		m.wbuf, m.spare = m.spare[:0], nil
		m.wmu.Unlock()
		_, err := m.conn.Write(buf)
		m.wmu.Lock()
		if cap(buf) <= 1<<20 {
			m.spare = buf[:0] // a burst's big buffer is not kept
		}
		if err != nil {
			m.writing = false
			m.wmu.Unlock()
			m.fail(fmt.Errorf("channel write: %w", err))
			return true
		}
	}
	m.writing = false
	closeNow := m.wclosed
	m.wmu.Unlock()
	if closeNow {
		m.conn.Close() // close() came while we wrote
	}
	return true
}

func (m *mux) sendWindow(id uint32, n int) bool {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], uint32(n))
	return m.send(frWindow, id, p[:])
}

// readLoop decodes frames from Rust until the channel ends. Anything it
// cannot make sense of fails the whole channel (our two halves disagree).
func (m *mux) readLoop() {
	defer func() {
		if r := recover(); r != nil {
			m.fail(fmt.Errorf("channel reader panic: %v", r))
		}
	}()
	br := bufio.NewReaderSize(m.conn, 64<<10)
	var hdr [frameHeader]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			m.fail(eofIsNil(err))
			return
		}
		typ, id, n := hdr[0], binary.BigEndian.Uint32(hdr[1:]), binary.BigEndian.Uint32(hdr[5:])
		if n > maxPayload {
			m.fail(fmt.Errorf("channel: frame of %d bytes (limit %d)", n, maxPayload))
			return
		}
		payload := framePayload(typ, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			m.fail(fmt.Errorf("channel: truncated frame: %w", err))
			return
		}
		if err := m.handle(typ, id, payload); err != nil {
			m.fail(err)
			return
		}
	}
}

func (m *mux) handle(typ byte, id uint32, p []byte) error {
	switch typ {
	case frDial:
		if id&rustIDBit == 0 {
			return fmt.Errorf("channel: dial with a shim stream id %d", id)
		}
		if len(p) < 4 {
			return errors.New("channel: short dial frame")
		}
		timeoutMS := int64(binary.BigEndian.Uint32(p))
		network, addr, ok := strings.Cut(string(p[4:]), "\n")
		if !ok {
			return errors.New("channel: dial frame without network and address")
		}
		go m.dial(id, network, addr, timeoutMS)
	case frData:
		if s := m.get(id); s != nil {
			s.pushData(p)
		}
	case frWindow:
		if len(p) != 4 {
			return errors.New("channel: window frame of the wrong size")
		}
		if s := m.get(id); s != nil {
			s.addCredit(int(binary.BigEndian.Uint32(p)))
		}
	case frFin:
		if s := m.get(id); s != nil {
			s.finFromRust()
		}
	case frRst:
		if s := m.get(id); s != nil {
			s.abort(false)
		}
	default:
		return fmt.Errorf("channel: unexpected frame type %d from tailpass", typ)
	}
	return nil
}

// fail ends the channel: every stream is dropped, the socket closed.
// Rust sees end of stream and fails every stream and listener of the node.
func (m *mux) fail(err error) {
	m.once.Do(func() {
		if err != nil {
			m.logf("tsshim: channel failed: %v", err)
		}
		m.wmu.Lock()
		m.wclosed = true
		m.wbuf = nil
		m.wmu.Unlock()
		m.conn.Close()
		m.abortAll()
	})
}

// close ends the channel; a frame being written is finished first.
func (m *mux) close() {
	m.once.Do(func() {
		m.abortAll()
		m.wmu.Lock()
		m.wclosed = true
		writing := m.writing
		m.wmu.Unlock()
		if !writing {
			m.conn.Close()
		}
	})
}

func (m *mux) abortAll() {
	m.mu.Lock()
	m.closed = true
	all := make([]*mstream, 0, len(m.streams))
	for _, s := range m.streams {
		all = append(all, s)
	}
	m.mu.Unlock()
	for _, s := range all {
		s.abort(false)
	}
}

func (m *mux) get(id uint32) *mstream {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.streams[id]
}

// register adds c as stream id (id 0: allocate a shim id). Ownership of c
// passes to the stream on success.
func (m *mux) register(id uint32, c net.Conn) (*mstream, error) {
	if m.node != nil && !m.node.conns.add(c) {
		return nil, errors.New("node is closing")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	fail := func(err error) (*mstream, error) {
		if m.node != nil {
			m.node.conns.remove(c)
		}
		return nil, err
	}
	if m.closed {
		return fail(errChannelClosed)
	}
	if id == 0 {
		for {
			m.nextID = (m.nextID + 1) &^ rustIDBit
			if m.nextID != 0 && m.streams[m.nextID] == nil {
				break
			}
		}
		id = m.nextID
	} else if m.streams[id] != nil {
		return fail(fmt.Errorf("stream id %d is in use", id))
	}
	s := &mstream{m: m, id: id, c: c, credit: initialWindow, rxCredit: initialWindow}
	s.cond = sync.NewCond(&s.mu)
	m.streams[id] = s
	return s, nil
}

func (m *mux) remove(s *mstream) {
	m.mu.Lock()
	if m.streams[s.id] == s {
		delete(m.streams, s.id)
	}
	m.mu.Unlock()
	if m.node != nil {
		m.node.conns.remove(s.c)
	}
}

func (m *mux) dial(id uint32, network, addr string, timeoutMS int64) {
	defer func() {
		if r := recover(); r != nil {
			m.send(frDialErr, id, []byte(fmt.Sprintf("dial %s: internal error (recovered Go panic): %v", addr, r)))
		}
	}()
	c, err := m.node.dialConn(network, addr, timeoutMS)
	if err != nil {
		m.send(frDialErr, id, []byte(err.Error()))
		return
	}
	s, err := m.register(id, c)
	if err != nil {
		c.Close()
		m.send(frDialErr, id, []byte(fmt.Sprintf("dial %s: %v", addr, err)))
		return
	}
	if !m.send(frDialOK, id, []byte(c.RemoteAddr().String())) {
		s.abort(false)
		return
	}
	s.startReading()
}

// deliver hands an accepted connection to Rust as an OPEN frame carrying
// the listener, the peer's exact address and the origin (security
// invariant 2: the address arrives with the stream). An error means the
// channel is gone and the listener should end.
func (m *mux) deliver(lid uint32, c net.Conn) error {
	remote, origin := connOrigin(c)
	s, err := m.register(0, c)
	if err != nil {
		c.Close()
		if errors.Is(err, errChannelClosed) {
			return err
		}
		if !m.send(frHandOffErr, lid, handOffErrorMsg(remote, err)[len(handOffErrorTag)+1:]) {
			return errChannelClosed
		}
		return nil
	}
	p := make([]byte, 4, 4+len(remote)+64)
	binary.BigEndian.PutUint32(p, lid)
	p = append(p, remote+"\n"+c.LocalAddr().String()+"\n"+origin...)
	if !m.send(frOpen, s.id, p) {
		s.abort(false)
		return errChannelClosed
	}
	s.startReading()
	return nil
}

// mstream is one connection on the channel.
type mstream struct {
	m  *mux
	id uint32
	c  net.Conn

	mu     sync.Mutex
	cond   *sync.Cond // credit arrived or the stream died
	credit int        // bytes we may still send to Rust
	queue  [][]byte   // from Rust, not yet written to c
	// rxCredit: bytes Rust may still send us (the window we granted
	// minus what it sent, plus what we credited back).
	rxCredit int
	// writing: a writer goroutine runs. finIn: Rust sent FIN. wdone: c's
	// write side is closed. rdone: c read EOF and FIN went to Rust.
	writing, finIn, wdone, rdone, dead bool
	// ev reads c without a goroutine while idle (evread.go); nil when c
	// is read by readLoop.
	ev *evReader
}

// waitCredit blocks until Rust granted credit; -1 when the stream died.
func (s *mstream) waitCredit() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.credit <= 0 && !s.dead {
		s.cond.Wait()
	}
	if s.dead {
		return -1
	}
	return s.credit
}

func (s *mstream) addCredit(n int) {
	s.mu.Lock()
	unblocked := s.credit <= 0 && s.credit+n > 0
	s.credit += n
	over := s.credit > 1<<30
	s.cond.Broadcast()
	evented := s.ev != nil
	s.mu.Unlock()
	if over {
		s.abort(true) // a peer granting absurd credit is broken
		return
	}
	if evented && unblocked {
		s.schedule() // it went idle for want of credit
	}
}

// readLoop copies c to Rust as DATA frames within the credit Rust granted.
// While idle it holds only a small buffer; reads that fill it switch to a
// pooled big one until data stops streaming.
func (s *mstream) readLoop() {
	var big *[]byte
	defer func() {
		if big != nil {
			bigPool.Put(big)
		}
		if r := recover(); r != nil {
			s.abort(true)
		}
	}()
	small := make([]byte, smallBuf)
	for {
		credit := s.waitCredit()
		if credit < 0 {
			return
		}
		buf := small
		if big != nil {
			buf = (*big)[:maxPayload]
		}
		if credit < len(buf) {
			buf = buf[:credit]
		}
		n, err := s.c.Read(buf)
		if n > 0 {
			s.mu.Lock()
			s.credit -= n
			s.mu.Unlock()
			if !s.m.send(frData, s.id, buf[:n]) {
				s.abort(false)
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				s.readEOF()
			} else {
				s.abort(true)
			}
			return
		}
		switch {
		case big == nil && n == len(small):
			big = bigPool.Get().(*[]byte)
		case big != nil && n < maxPayload/2:
			bigPool.Put(big)
			big = nil
		}
	}
}

func (s *mstream) readEOF() {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return
	}
	s.rdone = true
	both := s.wdone
	s.mu.Unlock()
	s.m.send(frFin, s.id, nil)
	if both {
		s.finish()
	}
}

// pushData queues bytes from Rust for c. More than the window we granted
// is a broken peer: the stream is reset.
func (s *mstream) pushData(p []byte) {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return
	}
	if s.finIn || len(p) > s.rxCredit {
		s.mu.Unlock()
		s.abort(true)
		return
	}
	s.rxCredit -= len(p)
	s.queue = append(s.queue, p)
	start := !s.writing
	s.writing = true
	s.mu.Unlock()
	if start {
		go s.writeLoop()
	}
}

// writeLoop writes queued bytes to c, returning credit as they leave.
func (s *mstream) writeLoop() {
	defer func() {
		if r := recover(); r != nil {
			s.abort(true)
		}
	}()
	for {
		s.mu.Lock()
		if s.dead {
			s.mu.Unlock()
			return
		}
		if len(s.queue) == 0 {
			s.queue = nil
			s.writing = false
			fin := s.finIn && !s.wdone
			if fin {
				s.wdone = true
			}
			s.mu.Unlock()
			if fin {
				s.closeWrite()
			}
			return
		}
		p := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		s.mu.Unlock()
		_, err := s.c.Write(p)
		releasePayload(p)
		if err != nil {
			s.abort(true)
			return
		}
		s.mu.Lock()
		s.rxCredit += len(p)
		s.mu.Unlock()
		s.m.sendWindow(s.id, len(p))
	}
}

func (s *mstream) finFromRust() {
	s.mu.Lock()
	if s.dead || s.finIn {
		s.mu.Unlock()
		return
	}
	s.finIn = true
	now := !s.writing && !s.wdone
	if now {
		s.wdone = true
	}
	s.mu.Unlock()
	if now {
		s.closeWrite()
	}
}

func (s *mstream) closeWrite() {
	cw, ok := s.c.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		s.abort(true)
		return
	}
	s.mu.Lock()
	both := s.rdone
	s.mu.Unlock()
	if both {
		s.finish()
	}
}

// finish ends a stream both sides closed cleanly.
func (s *mstream) finish() {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return
	}
	s.dead = true
	s.queue = nil
	s.cond.Broadcast()
	s.mu.Unlock()
	s.stopEvents()
	s.c.Close()
	s.m.remove(s)
}

// abort drops the stream; with rst, Rust is told. The tailnet peer is
// reset, not closed: a stream that ends this way did not end cleanly, and
// a peer that read EOF could take a cut-off answer for a whole one.
func (s *mstream) abort(rst bool) {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return
	}
	s.dead = true
	s.queue = nil
	s.cond.Broadcast()
	s.mu.Unlock()
	s.stopEvents()
	resetConn(s.c)
	s.c.Close()
	s.m.remove(s)
	if rst {
		s.m.send(frRst, s.id, nil)
	}
}

// framePayload is the buffer a frame's payload is read into: DATA frames
// borrow a pooled 64 KiB buffer (given back once written to the tsnet
// conn, releasePayload), so a stream from Rust makes no garbage per frame.
func framePayload(typ byte, n uint32) []byte {
	if typ == frData && n > smallBuf {
		return (*bigPool.Get().(*[]byte))[:n]
	}
	return make([]byte, n)
}

func releasePayload(p []byte) {
	if cap(p) == bigBuf {
		p = p[:bigBuf]
		bigPool.Put(&p)
	}
}
