package main

// The node registry: handles given to C map to nodes here. Nothing in this
// file knows about C; exports.go converts types and recovers panics.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
	"tailscale.com/wgengine/netstack"
)

// node wraps one tsnet.Server with the lifecycle guarantees the C API promises:
// setters only before start, close safe at any time (tsnet.Server.Close must
// not run before or concurrently with Start, so mu serialises the two).
type node struct {
	handle  int64
	mu      sync.Mutex
	srv     *tsnet.Server
	started bool
	closed  bool
	logFile *os.File // our dup of the caller's log fd, closed on close

	// ctx is cancelled by close; every blocking call derives from it.
	ctx    context.Context
	cancel context.CancelFunc

	upMu      sync.Mutex
	upCancels map[int64]context.CancelFunc
	upSeq     int64

	listeners map[int64]*listener
	conns     connSet
	// mux is the node's channel to Rust (openChannel), nil until opened.
	mux *mux
}

// closeWatchdog bounds tsnet.Server.Close. In tailscale v1.94.1 Close can
// block forever: netstack stops draining its 512-packet outbound queue
// before gVisor sends a reset for every remaining TCP endpoint (open or in
// TIME_WAIT), so more than 512 of them deadlock it.
const closeWatchdog = 10 * time.Second

var (
	registryMu sync.Mutex
	nodes      = map[int64]*node{}
	listeners  = map[int64]*listener{}
	nextHandle atomic.Int64
)

func newHandle() int64 { return nextHandle.Add(1) }

func newNode() int64 {
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{
		srv: &tsnet.Server{
			// Both loggers discard until set_log_fd says otherwise: tsnet's
			// default UserLogf writes to the process's stderr.
			UserLogf: logger.Discard,
			Logf:     logger.Discard,
		},
		ctx:       ctx,
		cancel:    cancel,
		upCancels: map[int64]context.CancelFunc{},
		listeners: map[int64]*listener{},
	}
	h := newHandle()
	n.handle = h
	registryMu.Lock()
	nodes[h] = n
	registryMu.Unlock()
	return h
}

var errUnknownNode = errors.New("unknown or closed node handle")

func lookupNode(h int64) (*node, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	n, ok := nodes[h]
	if !ok {
		return nil, errUnknownNode
	}
	return n, nil
}

// configure runs f on the server if the node has not started yet.
func (n *node) configure(f func(s *tsnet.Server) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errUnknownNode
	}
	if n.started {
		return errors.New("node already started: settings must be made before up, listen or dial")
	}
	return f(n.srv)
}

func (n *node) setLogFD(fd int) error {
	return n.configure(func(s *tsnet.Server) error {
		if n.logFile != nil {
			n.logFile.Close()
			n.logFile = nil
		}
		if fd < 0 {
			s.UserLogf, s.Logf = logger.Discard, logger.Discard
			return nil
		}
		// Duplicate: os.NewFile's finalizer would otherwise close the
		// caller's fd behind its back.
		dup, err := syscall.Dup(fd)
		if err != nil {
			return fmt.Errorf("dup log fd %d: %w", fd, err)
		}
		syscall.CloseOnExec(dup)
		f := os.NewFile(uintptr(dup), "tsnet-log")
		n.logFile = f
		var wmu sync.Mutex
		logf := func(format string, args ...any) {
			line := fmt.Sprintf(format, args...)
			if !strings.HasSuffix(line, "\n") {
				line += "\n"
			}
			wmu.Lock()
			f.WriteString(line)
			wmu.Unlock()
		}
		s.UserLogf, s.Logf = logf, logf
		return nil
	})
}

// ensureStarted starts the tsnet server once. Start only initialises the
// backend; it does not wait for the network, so holding mu is fine.
func (n *node) ensureStarted() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errUnknownNode
	}
	if n.started {
		return nil
	}
	if n.srv.Dir != "" {
		if err := os.MkdirAll(n.srv.Dir, 0o700); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
	}
	n.started = true // tsnet.Start may only run once, even when it fails
	if err := n.srv.Start(); err != nil {
		return err
	}
	if ns, ok := n.srv.Sys().Netstack.GetOK(); ok {
		if impl, ok := ns.(*netstack.Impl); ok {
			opt := tcpip.TCPTimeWaitTimeoutOption(timeWait)
			if err := impl.SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
				return fmt.Errorf("netstack TIME_WAIT: %v", err)
			}
		}
	}
	return nil
}

// timeWait replaces gVisor's long default TCP TIME_WAIT (60 s).
//
// In TIME_WAIT gVisor reopens a connection on a new SYN for the same
// 4-tuple only by handing that SYN to a *listening endpoint*; tsnet has
// none (its listeners sit behind netstack's TCP forwarder), so the SYN is
// dropped until TIME_WAIT ends. The server side of a connection usually
// closes first and so holds the TIME_WAIT, and peers pick source ports at
// random: with N connections from one peer in TIME_WAIT, about N/28000 of
// that peer's new connections stall for a SYN retransmission or two (3 s).
// Measured, 500 sequential dials: 2 s gave 2 stalls of 3 s per run
// (73-132 conns/s); 100 ms gave none (572-882 conns/s). The original
// default gave 20 s connect timeouts.
//
// What a short TIME_WAIT gives up: a peer whose last FIN we re-ACK after
// 100 ms gets a reset instead (it was closing anyway), and a delayed
// duplicate segment of an old connection could in theory reach a new one
// with the same 4-tuple. Every tailnet packet is WireGuard-authenticated
// and replay-protected, so that needs a genuinely delayed packet from the
// same peer landing inside the new connection's window: no practical risk.
// Fewer TIME_WAIT endpoints also keep tsnet's Close clear of its
// 512-endpoint stall.
//
// 100 ms measured faster still (no stall in 500 sequential dials), but it
// made 300 concurrent dials to one listener time out after 15 s in about
// one run of four (tests/tailnet.rs, whois_names_the_right_node_for_300_
// concurrent_connections; 0 of 6 with 2 s). Until that is understood, 2 s.
const timeWait = 2 * time.Second

func withTimeout(parent context.Context, timeoutMS int64) (context.Context, context.CancelFunc) {
	if timeoutMS <= 0 {
		return context.WithCancel(parent)
	}
	return context.WithTimeout(parent, time.Duration(timeoutMS)*time.Millisecond)
}

func (n *node) localClient() (*local.Client, error) {
	if err := n.ensureStarted(); err != nil {
		return nil, err
	}
	return n.srv.LocalClient()
}

func (n *node) up(timeoutMS int64) (string, error) {
	if err := n.ensureStarted(); err != nil {
		return "", err
	}
	ctx, cancel := withTimeout(n.ctx, timeoutMS)
	defer cancel()
	n.upMu.Lock()
	n.upSeq++
	id := n.upSeq
	n.upCancels[id] = cancel
	n.upMu.Unlock()
	defer func() {
		n.upMu.Lock()
		delete(n.upCancels, id)
		n.upMu.Unlock()
	}()

	st, err := n.srv.Up(ctx)
	if err != nil {
		return "", n.explainUpError(ctx, timeoutMS, err)
	}
	return marshalStatus(st)
}

// explainUpError turns tsnet's bare context errors into a message that says
// what the node was waiting for.
func (n *node) explainUpError(ctx context.Context, timeoutMS int64, err error) error {
	cause := ctx.Err()
	if cause == nil {
		return err
	}
	detail := ""
	if lc, lerr := n.srv.LocalClient(); lerr == nil {
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		defer scancel()
		if st, serr := lc.StatusWithoutPeers(sctx); serr == nil {
			detail = fmt.Sprintf(" (backend state %s", st.BackendState)
			if len(st.Health) > 0 {
				detail += "; " + strings.Join(st.Health, "; ")
			}
			detail += ")"
		}
	}
	switch {
	case n.ctx.Err() != nil:
		return fmt.Errorf("up aborted: node closed%s", detail)
	case errors.Is(cause, context.DeadlineExceeded):
		return fmt.Errorf("up timed out after %v waiting for control server %q%s",
			time.Duration(timeoutMS)*time.Millisecond, n.srv.ControlURL, detail)
	default:
		return fmt.Errorf("up cancelled%s", detail)
	}
}

func (n *node) cancelUp() {
	n.upMu.Lock()
	defer n.upMu.Unlock()
	for _, c := range n.upCancels {
		c()
	}
}

func closeNode(h int64) error {
	registryMu.Lock()
	n, ok := nodes[h]
	delete(nodes, h)
	var lns []*listener
	for lh, ln := range listeners {
		if ln.node == n {
			lns = append(lns, ln)
			delete(listeners, lh)
		}
	}
	registryMu.Unlock()
	if !ok {
		return errUnknownNode
	}
	n.cancel()
	n.cancelUp()
	for _, ln := range lns {
		ln.close()
	}
	n.mu.Lock()
	n.closed = true
	started := n.started
	logFile := n.logFile
	n.logFile = nil
	m := n.mux
	n.mu.Unlock()

	// End our connections while the netstack still runs, so their FINs go
	// out through the live queue instead of piling up as resets in Close.
	closed := n.conns.closeAll()
	if m != nil {
		// Rust sees the channel end: every stream and listener of the node
		// ends there.
		m.close()
	}
	if closed > 256 && started {
		// Let their FIN exchanges finish and TIME_WAIT (timeWait) run out while
		// the stack still drains packets, so Close has few endpoints left
		// to reset (see closeWatchdog).
		time.Sleep(timeWait + time.Second)
	}
	var err error
	if started {
		done := make(chan error, 1)
		go func() { done <- protect(n.srv.Close) }()
		select {
		case err = <-done:
		case <-time.After(closeWatchdog):
			err = fmt.Errorf("tsnet close did not finish within %v (tailscale's netstack "+
				"stalls when it must reset more than 512 TCP endpoints at once); the handle "+
				"is released, but the node may stay online and keep its memory until the process exits", closeWatchdog)
		}
	}
	if logFile != nil {
		logFile.Close()
	}
	return err
}

// dialConn dials over the tailnet; errors name the address.
func (n *node) dialConn(network, addr string, timeoutMS int64) (net.Conn, error) {
	if err := n.ensureStarted(); err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(n.ctx, timeoutMS)
	defer cancel()
	c, err := n.srv.Dial(ctx, network, addr)
	if err != nil {
		if ctx.Err() != nil && n.ctx.Err() == nil {
			return nil, fmt.Errorf("dial %s: timed out after %v", addr, time.Duration(timeoutMS)*time.Millisecond)
		}
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

func (n *node) dial(network, addr string, timeoutMS int64) (fd int, remote string, err error) {
	c, err := n.dialConn(network, addr, timeoutMS)
	if err != nil {
		return -1, "", err
	}
	fd, err = handOff(c, &n.conns)
	if err != nil {
		c.Close()
		return -1, "", fmt.Errorf("dial %s: hand-off: %w", addr, err)
	}
	return fd, c.RemoteAddr().String(), nil
}

func (n *node) whois(addr string, timeoutMS int64) (string, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", fmt.Errorf("whois: %q is not an ip:port: %w", addr, err)
	}
	lc, err := n.localClient()
	if err != nil {
		return "", err
	}
	ctx, cancel := withTimeout(n.ctx, timeoutMS)
	defer cancel()
	res, err := lc.WhoIs(ctx, ap.String())
	if err != nil {
		return "", fmt.Errorf("whois %s: %w", ap, err)
	}
	b, err := json.Marshal(res)
	return string(b), err
}

func (n *node) certPair(domain string, timeoutMS int64) (certPEM, keyPEM []byte, err error) {
	lc, err := n.localClient()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := withTimeout(n.ctx, timeoutMS)
	defer cancel()
	// Refuse domains the node cannot hold a cert for, before asking control:
	// the answer is clearer and nothing leaves the machine.
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("cert %s: status: %w", domain, err)
	}
	ok := false
	for _, d := range st.CertDomains {
		if strings.EqualFold(d, domain) {
			ok = true
		}
	}
	if !ok {
		if len(st.CertDomains) == 0 {
			return nil, nil, fmt.Errorf("cert %s: this node has no cert domains (HTTPS certificates are not enabled for the tailnet, or the node is not up)", domain)
		}
		return nil, nil, fmt.Errorf("cert %s: not one of this node's cert domains %v", domain, st.CertDomains)
	}
	certPEM, keyPEM, err = lc.CertPair(ctx, domain)
	if err != nil {
		return nil, nil, fmt.Errorf("cert %s: %w", domain, err)
	}
	return certPEM, keyPEM, nil
}

func (n *node) status(timeoutMS int64) (string, error) {
	lc, err := n.localClient()
	if err != nil {
		return "", err
	}
	ctx, cancel := withTimeout(n.ctx, timeoutMS)
	defer cancel()
	st, err := lc.Status(ctx)
	if err != nil {
		return "", fmt.Errorf("status: %w", err)
	}
	return marshalStatus(st)
}

type selfOut struct {
	StableID  string   `json:"stable_id"`
	HostName  string   `json:"host_name"`
	DNSName   string   `json:"dns_name"`
	Addresses []string `json:"addresses"`
	Tags      []string `json:"tags"`
	UserLogin string   `json:"user_login"`
}

type peerOut struct {
	StableID  string   `json:"stable_id"`
	HostName  string   `json:"host_name"`
	DNSName   string   `json:"dns_name"`
	Addresses []string `json:"addresses"`
	Tags      []string `json:"tags"`
	Online    bool     `json:"online"`
	PeerAPI   []string `json:"peer_api"`
}

type statusOut struct {
	BackendState   string    `json:"backend_state"`
	Self           *selfOut  `json:"self"`
	Peers          []peerOut `json:"peers"`
	MagicDNSSuffix string    `json:"magic_dns_suffix"`
	CertDomains    []string  `json:"cert_domains"`
	Health         []string  `json:"health"`
}

func marshalStatus(st *ipnstate.Status) (string, error) {
	out := statusOut{
		BackendState:   st.BackendState,
		MagicDNSSuffix: st.MagicDNSSuffix,
		CertDomains:    append([]string{}, st.CertDomains...),
		Health:         append([]string{}, st.Health...),
	}
	if ps := st.Self; ps != nil {
		so := &selfOut{
			StableID:  string(ps.ID),
			HostName:  ps.HostName,
			DNSName:   ps.DNSName,
			Addresses: []string{},
			Tags:      []string{},
		}
		for _, ip := range ps.TailscaleIPs {
			so.Addresses = append(so.Addresses, ip.String())
		}
		if ps.Tags != nil {
			so.Tags = append(so.Tags, ps.Tags.AsSlice()...)
		}
		if u, ok := st.User[ps.UserID]; ok {
			so.UserLogin = u.LoginName
		}
		out.Self = so
	}
	out.Peers = []peerOut{}
	for _, ps := range st.Peer {
		po := peerOut{
			StableID:  string(ps.ID),
			HostName:  ps.HostName,
			DNSName:   ps.DNSName,
			Addresses: []string{},
			Tags:      []string{},
			Online:    ps.Online,
			PeerAPI:   append([]string{}, ps.PeerAPIURL...),
		}
		for _, ip := range ps.TailscaleIPs {
			po.Addresses = append(po.Addresses, ip.String())
		}
		if ps.Tags != nil {
			po.Tags = append(po.Tags, ps.Tags.AsSlice()...)
		}
		out.Peers = append(out.Peers, po)
	}
	sort.Slice(out.Peers, func(i, j int) bool { return out.Peers[i].DNSName < out.Peers[j].DNSName })
	b, err := json.Marshal(out)
	return string(b), err
}

// parseTags validates a comma-separated tag list the way control would,
// so a typo fails at configuration time rather than silently at login.
func parseTags(csv string) ([]string, error) {
	if strings.TrimSpace(csv) == "" {
		return nil, nil
	}
	var tags []string
	for _, t := range strings.Split(csv, ",") {
		t = strings.TrimSpace(t)
		name, ok := strings.CutPrefix(t, "tag:")
		if !ok || name == "" {
			return nil, fmt.Errorf("tag %q must look like tag:name", t)
		}
		for _, r := range name {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return nil, fmt.Errorf("tag %q: only letters, digits and '-' may follow tag:", t)
			}
		}
		tags = append(tags, t)
	}
	return tags, nil
}
