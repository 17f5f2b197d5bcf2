// Command gobench is the pure-Go baseline for tailpass's tailnet benchmark:
// two tsnet nodes in one process on the test tailnet (see cmd/testnet),
// measured exactly like benches/tailnet.rs measures the Rust API:
//
//   - throughput of one stream A→B (-bytes per run, -runs runs, median);
//   - connection set-up rate (-dials sequential dial+accept+close);
//   - resident memory added by -idle open idle connections.
//
// It prints one JSON object on stdout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"tailscale.com/envknob"
	"tailscale.com/net/netns"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
	"tailscale.com/wgengine/netstack"
)

func main() {
	var (
		controlURL = flag.String("control-url", "", "test control server URL (required)")
		nbytes     = flag.Int64("bytes", 64<<20, "bytes per throughput run")
		runs       = flag.Int("runs", 3, "throughput runs (median reported)")
		dials      = flag.Int("dials", 300, "sequential connections for the set-up rate")
		idle       = flag.Int("idle", 1000, "idle connections for the memory figure")
	)
	flag.Parse()
	if *controlURL == "" {
		log.Fatal("gobench: -control-url is required")
	}
	// The same process-wide knobs the Rust side sets for the test tailnet.
	netns.SetEnabled(false)
	for k, v := range map[string]string{
		"TS_DEBUG_ALWAYS_USE_DERP":      "true",
		"TS_DISABLE_PORTMAPPER":         "1",
		"TS_ASSUME_NETWORK_UP_FOR_TEST": "1",
		"TS_NETCHECK_GENERATE_204_URL":  "http://127.0.0.1:9/generate_204",
		"TS_NO_LOGS_NO_SUPPORT":         "true",
	} {
		envknob.Setenv(k, v)
	}
	dir, err := os.MkdirTemp("", "gobench")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The nodes are not closed: with over 512 TCP endpoints left (the idle
	// connections, now in TIME_WAIT) tsnet v1.94.1's Close deadlocks; the
	// process exit ends them.
	a := up(ctx, dir, "go-a", *controlURL)
	b := up(ctx, dir, "go-b", *controlURL)
	st, err := b.Up(ctx)
	if err != nil {
		log.Fatal(err)
	}
	bAddr := st.TailscaleIPs[0].String()

	// Throughput A→B: B listens and counts, A writes.
	ln, err := b.Listen("tcp", ":7001")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "%d", n)
				c.Close()
			}()
		}
	}()
	var rates []float64
	buf := make([]byte, 64<<10)
	// Warm-up (DERP path, netstack buffers), not measured.
	for i := 0; i < 3; i++ {
		c, err := a.Dial(ctx, "tcp", bAddr+":7001")
		if err != nil {
			log.Fatal(err)
		}
		c.Write(buf)
		c.(interface{ CloseWrite() error }).CloseWrite()
		io.ReadAll(c)
		c.Close()
	}
	for i := 0; i < *runs; i++ {
		c, err := a.Dial(ctx, "tcp", bAddr+":7001")
		if err != nil {
			log.Fatal(err)
		}
		t0 := time.Now()
		for sent := int64(0); sent < *nbytes; {
			n := int64(len(buf))
			if *nbytes-sent < n {
				n = *nbytes - sent
			}
			if _, err := c.Write(buf[:n]); err != nil {
				log.Fatal(err)
			}
			sent += n
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		ack, _ := io.ReadAll(c)
		el := time.Since(t0)
		c.Close()
		if got, _ := strconv.ParseInt(string(ack), 10, 64); got != *nbytes {
			log.Fatalf("receiver counted %s bytes, want %d", ack, *nbytes)
		}
		rates = append(rates, float64(*nbytes)/el.Seconds()/1e6)
	}
	sort.Float64s(rates)

	// Set-up rate: dial, accept, one byte back, close.
	ln2, err := b.Listen("tcp", ":7002")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for {
			c, err := ln2.Accept()
			if err != nil {
				return
			}
			c.Write([]byte{1})
			c.Close()
		}
	}()
	t0 := time.Now()
	var lat, dialOnly []float64
	for i := 0; i < *dials; i++ {
		t := time.Now()
		c, err := a.Dial(ctx, "tcp", bAddr+":7002")
		if err != nil {
			log.Fatal(err)
		}
		dialOnly = append(dialOnly, ms(time.Since(t)))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			log.Fatal(err)
		}
		lat = append(lat, ms(time.Since(t)))
		c.Close()
	}
	setup := float64(*dials) / time.Since(t0).Seconds()

	// Memory: RSS before and after idle connections (both ends here).
	ln3, err := b.Listen("tcp", ":7003")
	if err != nil {
		log.Fatal(err)
	}
	accepted := make(chan net.Conn, *idle)
	go func() {
		for {
			c, err := ln3.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	debug.FreeOSMemory()
	time.Sleep(500 * time.Millisecond)
	before := rssKiB()
	fdsBefore := openFDs()
	var keep []net.Conn
	var half int64
	for i := 0; i < *idle; i++ {
		if i == *idle/2 {
			// The second half's cost is the marginal one, without the
			// first connections' fixed costs (maps, fresh spans).
			debug.FreeOSMemory()
			time.Sleep(500 * time.Millisecond)
			half = rssKiB()
		}
		c, err := a.Dial(ctx, "tcp", bAddr+":7003")
		if err != nil {
			log.Fatal(err)
		}
		keep = append(keep, c, <-accepted)
	}
	debug.FreeOSMemory()
	time.Sleep(500 * time.Millisecond)
	after := rssKiB()
	fdsAfter := openFDs()
	_ = keep // held open until here

	out, _ := json.Marshal(map[string]any{
		"throughput_mb_s":       rates[len(rates)/2],
		"throughput_runs":       rates,
		"setup_per_s":           setup,
		"stalls":                countOver(lat, 1000),
		"setup_ms":              percentiles(lat),
		"dial_ms":               percentiles(dialOnly),
		"idle_conns":            *idle,
		"idle_rss_kib":          after - before,
		"idle_kib_per_conn":     float64(after-before) / float64(*idle),
		"marginal_kib_per_conn": float64(after-half) / float64(*idle-*idle/2),
		"fds_per_conn":          float64(fdsAfter-fdsBefore) / float64(*idle),
	})
	fmt.Println(string(out))
}

func up(ctx context.Context, dir, host, controlURL string) *tsnet.Server {
	s := &tsnet.Server{
		Dir:        filepath.Join(dir, host),
		Hostname:   host,
		ControlURL: controlURL,
		Ephemeral:  true,
		Logf:       logger.Discard,
		UserLogf:   logger.Discard,
	}
	if _, err := s.Up(ctx); err != nil {
		log.Fatalf("%s up: %v", host, err)
	}
	// The same TCP TIME_WAIT the shim sets (capi/node.go, timeWait), so
	// the baseline differs from the Rust side only by the shim itself.
	if ns, ok := s.Sys().Netstack.GetOK(); ok {
		opt := tcpip.TCPTimeWaitTimeoutOption(2 * time.Second)
		if err := ns.(*netstack.Impl).SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
			log.Fatal(err)
		}
	}
	return s
}

func rssKiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentiles returns p50, p90 and p99 the way benches/tailnet.rs does.
func percentiles(v []float64) []float64 {
	sort.Float64s(v)
	at := func(p float64) float64 { return v[int(float64(len(v)-1)*p+0.5)] }
	return []float64{at(0.5), at(0.9), at(0.99)}
}

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

func countOver(v []float64, limit float64) int {
	n := 0
	for _, x := range v {
		if x > limit {
			n++
		}
	}
	return n
}
