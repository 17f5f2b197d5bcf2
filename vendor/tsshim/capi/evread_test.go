package main

import (
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// gonetNet is a gVisor netstack on a loopback link: the connections it
// makes are *gonet.TCPConn, as tsnet's are.
type gonetNet struct {
	st   *stack.Stack
	addr tcpip.FullAddress
	ln   *gonet.TCPListener
}

var gonetPort atomic.Uint32

func newGonetNet(t *testing.T) *gonetNet {
	t.Helper()
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	if err := st.CreateNIC(1, loopback.New()); err != nil {
		t.Fatal(err)
	}
	ip := tcpip.AddrFrom4([4]byte{100, 64, 0, 1})
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: ip.WithPrefix()}
	if err := st.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	st.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	addr := tcpip.FullAddress{NIC: 1, Addr: ip, Port: uint16(7000 + gonetPort.Add(1))}
	ln, err := gonet.ListenTCP(st, addr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); st.Close() })
	return &gonetNet{st: st, addr: addr, ln: ln}
}

// pair dials the stack's listener: ours is the dialed end.
func (g *gonetNet) pair(t *testing.T) (ours, peer net.Conn) {
	t.Helper()
	got := make(chan net.Conn, 1)
	go func() { c, _ := g.ln.Accept(); got <- c }()
	c, err := gonet.DialTCP(g.st, g.addr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	p := <-got
	if p == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); p.Close() })
	return c, p
}

// The fields evread.go reads exist with the types it needs; a gVisor
// upgrade that changes them fails here (tailpass would still work, with
// a goroutine per connection again).
func TestGonetPartsFound(t *testing.T) {
	if !gonetLayout.ok {
		t.Fatal("gonet.TCPConn no longer has ep, wq and read as evread.go expects")
	}
	ours, peer := newGonetNet(t).pair(t)
	if _, _, ok := gonetParts(ours); !ok {
		t.Fatal("gonetParts refused a fresh gonet connection")
	}
	if _, _, ok := gonetParts(&net.TCPConn{}); ok {
		t.Fatal("gonetParts accepted a host TCP connection")
	}
	// Bytes gonet's Read left behind are still the endpoint's.
	peer.Write([]byte("abc"))
	b := make([]byte, 1)
	if _, err := ours.Read(b); err != nil || b[0] != 'a' {
		t.Fatal(b, err)
	}
	ep, _, _ := gonetParts(ours)
	var rest [8]byte
	w := tcpip.SliceWriter(rest[:])
	if res, err := ep.Read(&w, tcpip.ReadOptions{}); err != nil || string(rest[:res.Count]) != "bc" {
		t.Fatalf("endpoint read %q, %v", rest[:res.Count], err)
	}
}

// Idle gVisor connections on the channel park no goroutine; each wakes
// when its peer writes, and EOF reaches Rust as FIN.
func TestMuxIdleGonetStreamsParkNoGoroutine(t *testing.T) {
	const n = 300
	m, r := newTestMux(t)
	g := newGonetNet(t)
	peers := make([]net.Conn, n)
	ids := map[uint32]int{}
	base := runtime.NumGoroutine()
	for i := range peers {
		ours, peer := g.pair(t)
		s, err := m.register(0, ours)
		if err != nil {
			t.Fatal(err)
		}
		s.startReading()
		if s.ev == nil {
			t.Fatal("gonet stream not read by events")
		}
		peers[i], ids[s.id] = peer, i
	}
	time.Sleep(200 * time.Millisecond)
	if grown := runtime.NumGoroutine() - base; grown > n/10 {
		t.Fatalf("%d idle streams added %d goroutines", n, grown)
	}
	for i, p := range peers {
		if _, err := p.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		p.Close()
	}
	data, fins := map[uint32]bool{}, map[uint32]bool{}
	for len(fins) < n {
		typ, id, p, ok := r.next(10 * time.Second)
		if !ok {
			t.Fatalf("%d of %d FINs, %d data", len(fins), n, len(data))
		}
		i, known := ids[id]
		switch {
		case !known:
			t.Fatalf("frame %d for unknown stream %d", typ, id)
		case typ == frData:
			if len(p) != 1 || p[0] != byte(i) || data[id] || fins[id] {
				t.Fatalf("stream %d: data %v (seen %v, fin %v)", i, p, data[id], fins[id])
			}
			data[id] = true
		case typ == frFin:
			if !data[id] {
				t.Fatalf("stream %d: FIN before its byte", i)
			}
			fins[id] = true
		default:
			t.Fatalf("stream %d: unexpected frame %d", i, typ)
		}
	}
}

// A peer reset reaches Rust as RST and unregisters the stream.
func TestMuxGonetPeerResetResetsTheStream(t *testing.T) {
	m, r := newTestMux(t)
	ours, peer := newGonetNet(t).pair(t)
	s, err := m.register(0, ours)
	if err != nil {
		t.Fatal(err)
	}
	s.startReading()
	// Unread bytes at close make gVisor send RST.
	r.send(frData, s.id, []byte("unread"))
	time.Sleep(100 * time.Millisecond)
	peer.Close()
	for {
		typ, _, _, ok := r.next(5 * time.Second)
		if !ok {
			t.Fatal("no RST")
		}
		if typ == frRst {
			break
		}
		if typ != frWindow {
			t.Fatalf("unexpected frame %d", typ)
		}
	}
	if m.get(s.id) != nil {
		t.Fatal("reset stream still registered")
	}
}

// Rust's RST resets the tailnet peer: it reads an error, not EOF (a
// cut-off answer must not look whole).
func TestMuxRustResetResetsThePeer(t *testing.T) {
	m, r := newTestMux(t)
	ours, peer := newGonetNet(t).pair(t)
	s, err := m.register(0, ours)
	if err != nil {
		t.Fatal(err)
	}
	s.startReading()
	r.send(frData, s.id, []byte("partial answer"))
	r.send(frRst, s.id, nil)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	all, err := io.ReadAll(peer)
	if err == nil {
		t.Fatalf("peer read %q and a clean EOF after a reset", all)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("peer never saw the reset")
	}
}
