// Command testnet runs an offline test tailnet on 127.0.0.1: tailscale's test
// control server plus an in-process DERP relay and STUN server.
//
// It prints one JSON line to stdout once ready:
//
//	{"control_url":"http://127.0.0.1:PORT","magic_dns_domain":"...","derp_port":N,"stun_port":N}
//
// and exits when its stdin closes, so a parent that dies takes it down too.
// While running, each stdin line is a JSON command, answered by one JSON line:
//
//	{"op":"set_tags","host":"HOSTNAME","tags":["tag:a"]}  → {"ok":true}
//	{"op":"nodes"}                                          → {"ok":true,"nodes":[...]}
//
// Nodes that advertise tags (tsnet AdvertiseTags) get them, as a control
// server with a tag-owning auth key would do; -tag pins tags per hostname.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/derp/derpserver"
	"tailscale.com/net/netns"
	"tailscale.com/net/stun/stuntest"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

type tagFlags map[string][]string

func (t tagFlags) String() string { return fmt.Sprint(map[string][]string(t)) }
func (t tagFlags) Set(v string) error {
	host, tags, ok := strings.Cut(v, "=")
	if !ok || host == "" || tags == "" {
		return fmt.Errorf("want HOSTNAME=tag:a[,tag:b], got %q", v)
	}
	t[host] = strings.Split(tags, ",")
	return nil
}

func main() {
	var (
		magicDNS  = flag.String("magicdns-domain", "tail-test.ts.net", "MagicDNS domain (empty: no MagicDNS names)")
		authKey   = flag.String("authkey", "", "if set, the one auth key every node must present")
		appCaps   = flag.String("app-caps", "", `JSON app-capability grant for every peer, e.g. {"example.com/cap/x":[{"role":"admin"}]}`)
		sameUser  = flag.Bool("same-user", false, "put every node in one user")
		honorTags = flag.Bool("honor-request-tags", true, "give nodes the tags they advertise")
		verbose   = flag.Bool("v", false, "log control and DERP activity to stderr")
		tags      = tagFlags{}
	)
	flag.Var(tags, "tag", "HOSTNAME=tag:a[,tag:b]: tags for the node with that hostname (repeatable)")
	flag.Parse()

	logf := logger.Discard
	if *verbose {
		logf = log.Printf
	}
	netns.SetEnabled(false)

	var caps tailcfg.PeerCapMap
	if *appCaps != "" {
		if err := json.Unmarshal([]byte(*appCaps), &caps); err != nil {
			log.Fatalf("testnet: -app-caps: %v", err)
		}
	}

	tb := &fakeTB{logf: logf}
	defer tb.cleanup()
	derpMap, derpPort, stunPort := runDERPAndSTUN(tb, logf)

	ctl := &testcontrol.Server{
		DERPMap:          derpMap,
		MagicDNSDomain:   *magicDNS,
		RequireAuthKey:   *authKey,
		AllNodesSameUser: *sameUser,
		Logf:             logf,
	}
	if *magicDNS != "" {
		ctl.DNSConfig = &tailcfg.DNSConfig{Proxied: true}
	}
	if caps != nil {
		ctl.SetGlobalAppCaps(caps)
	}
	ctl.HTTPTestServer = httptest.NewUnstartedServer(ctl) // listens on 127.0.0.1
	ctl.HTTPTestServer.Config.ErrorLog = logger.StdLogger(logf)
	ctl.HTTPTestServer.Start()
	defer ctl.HTTPTestServer.Close()

	tg := &tagger{ctl: ctl, static: tags, honor: *honorTags}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tg.loop(ctx)

	ready, _ := json.Marshal(map[string]any{
		"control_url":      ctl.HTTPTestServer.URL,
		"magic_dns_domain": *magicDNS,
		"derp_port":        derpPort,
		"stun_port":        stunPort,
	})
	fmt.Println(string(ready))

	// Serve commands until stdin closes.
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		out, _ := json.Marshal(tg.command(line))
		fmt.Println(string(out))
	}
}

type command struct {
	Op   string   `json:"op"`
	Host string   `json:"host"`
	Tags []string `json:"tags"`
}

func (tg *tagger) command(line string) map[string]any {
	var c command
	if err := json.Unmarshal([]byte(line), &c); err != nil {
		return map[string]any{"ok": false, "error": "bad command: " + err.Error()}
	}
	switch c.Op {
	case "set_tags":
		if c.Host == "" {
			return map[string]any{"ok": false, "error": "set_tags needs host"}
		}
		tg.mu.Lock()
		tg.static[c.Host] = c.Tags
		tg.mu.Unlock()
		tg.apply()
		return map[string]any{"ok": true}
	case "nodes":
		var nodes []map[string]any
		for _, n := range tg.ctl.AllNodes() {
			nodes = append(nodes, map[string]any{
				"host": n.Hostinfo.Hostname(), "stable_id": n.StableID, "tags": n.Tags,
				"addresses": n.Addresses,
			})
		}
		return map[string]any{"ok": true, "nodes": nodes}
	default:
		return map[string]any{"ok": false, "error": fmt.Sprintf("unknown op %q", c.Op)}
	}
}

// tagger gives nodes their tags: the control server in v1.94.1 ignores
// RequestTags, so we set Node.Tags and push a fresh netmap to everyone.
type tagger struct {
	ctl    *testcontrol.Server
	honor  bool
	mu     sync.Mutex
	static map[string][]string
}

func (tg *tagger) loop(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			tg.apply()
		}
	}
}

func (tg *tagger) apply() {
	tg.mu.Lock()
	changed := false
	nodes := tg.ctl.AllNodes()
	for _, n := range nodes {
		if !n.Hostinfo.Valid() {
			continue
		}
		want, ok := tg.static[n.Hostinfo.Hostname()]
		if !ok && tg.honor {
			want = n.Hostinfo.RequestTags().AsSlice()
		}
		if len(want) == 0 && !ok {
			continue
		}
		if slices.Equal(n.Tags, want) {
			continue
		}
		// testcontrol has no atomic read-modify-write of a node: serveMap
		// writes back a whole copy. Wait until the node polls (its disco key
		// and DERP home are set), then copy and write back at once; if a
		// racing map request undoes the tags, the next tick redoes them.
		if n.DiscoKey.IsZero() || n.HomeDERP == 0 {
			continue
		}
		cur := tg.ctl.Node(n.Key)
		if cur == nil {
			continue
		}
		cur.Tags = slices.Clone(want)
		tg.ctl.UpdateNode(cur)
		changed = true
	}
	tg.mu.Unlock()
	if !changed {
		return
	}
	// Have control send every node a fresh netmap through its normal update
	// path. Masquerades are unused here; setting none is a no-op that makes
	// testcontrol mark every node changed. (ForceNetmapUpdate injects a
	// hand-built map response instead, which left retagged nodes unreachable.)
	tg.ctl.SetMasqueradeAddresses(nil)
}

// runDERPAndSTUN is tailscale's integration.RunDERPAndSTUN, except that STUN
// listens on 127.0.0.1 too (that helper binds STUN on every interface).
func runDERPAndSTUN(tb testing.TB, logf logger.Logf) (*tailcfg.DERPMap, int, int) {
	d := derpserver.New(key.NewNode(), logf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatalf("testnet: derp listen: %v", err)
	}
	srv := httptest.NewUnstartedServer(derpserver.Handler(d))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Config.ErrorLog = logger.StdLogger(logf)
	srv.Config.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
	srv.StartTLS()
	tb.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		d.Close()
	})

	stunAddr, stunCleanup := stuntest.ServeWithPacketListener(tb, loopbackPackets{})
	tb.Cleanup(stunCleanup)

	derpPort := ln.Addr().(*net.TCPAddr).Port
	m := &tailcfg.DERPMap{
		Regions: map[int]*tailcfg.DERPRegion{
			1: {
				RegionID:   1,
				RegionCode: "test",
				Nodes: []*tailcfg.DERPNode{{
					Name:             "t1",
					RegionID:         1,
					HostName:         "127.0.0.1",
					IPv4:             "127.0.0.1",
					IPv6:             "none",
					STUNPort:         stunAddr.Port,
					DERPPort:         derpPort,
					InsecureForTests: true,
					STUNTestIP:       "127.0.0.1",
				}},
			},
		},
	}
	return m, derpPort, stunAddr.Port
}

// loopbackPackets is a nettype.PacketListener that only ever binds 127.0.0.1.
type loopbackPackets struct{}

func (loopbackPackets) ListenPacket(ctx context.Context, network, _ string) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, "127.0.0.1:0")
}

// fakeTB satisfies testing.TB for the few helpers that want one outside tests.
// Unimplemented methods panic through the nil embedded interface, which would
// show up at once in the helper's own start-up.
type fakeTB struct {
	testing.TB
	logf     logger.Logf
	mu       sync.Mutex
	cleanups []func()
}

func (t *fakeTB) Helper()                           {}
func (t *fakeTB) Logf(format string, args ...any)   { t.logf(format, args...) }
func (t *fakeTB) Fatalf(format string, args ...any) { log.Fatalf("testnet: "+format, args...) }
func (t *fakeTB) Fatal(args ...any)                 { log.Fatal(append([]any{"testnet: "}, args...)...) }
func (t *fakeTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *fakeTB) cleanup() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
