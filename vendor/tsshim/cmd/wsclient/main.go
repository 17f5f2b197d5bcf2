// Command wsclient is the load client of benches/websockets.rs: one tsnet
// node on the test tailnet that opens many websockets (wss://, HTTP/1.1)
// to a URL and holds them idle, so the proxy under test can be measured
// while they are open. It is a minimal RFC 6455 client: handshake, short
// masked text frames, close; enough to check that a socket still echoes.
//
// Once one websocket has echoed (the proxy is reachable), it prints
// {"ready":true} and then answers commands on stdin, one JSON line each:
//
//	open N   open N more websockets → {"opened":..,"failed":..,"open":..,"seconds":..,"last_open_seconds":..,"errors":[..]}
//	echo K   echo on K sockets spread over the open ones → {"sampled":K,"ok":..,"errors":[..]}
//	close    close every socket → {"closed":N}
//
// It exits when its stdin closes. Transient failures are retried
// (-attempts); after -max-failed sockets failed for good, open stops early.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/net/netns"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
)

type client struct {
	srv       *tsnet.Server
	host      string // host name, also the TLS server name
	path      string
	tlsConfig *tls.Config
	attempts  int
	maxFailed int
	workers   int
	open      []*wsConn
}

type wsConn struct {
	c  *tls.Conn
	br *bufio.Reader
}

func main() {
	var (
		controlURL = flag.String("control-url", "", "control server URL (required)")
		hostname   = flag.String("hostname", "wsclient", "tailnet host name")
		dir        = flag.String("dir", "", "state directory (required)")
		rawURL     = flag.String("url", "", "wss:// URL to open (required)")
		caFile     = flag.String("ca", "", "PEM file of the certificate(s) to trust (required)")
		workers    = flag.Int("concurrency", 32, "websockets being opened at once")
		attempts   = flag.Int("attempts", 5, "tries per websocket")
		maxFailed  = flag.Int("max-failed", 200, "stop opening after this many websockets failed for good")
	)
	flag.Parse()
	u, err := url.Parse(*rawURL)
	if *controlURL == "" || *dir == "" || *caFile == "" || err != nil || u.Scheme != "wss" {
		log.Fatal("wsclient: -control-url, -dir, -ca and a wss:// -url are required")
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		log.Fatalf("wsclient: no certificate in %s", *caFile)
	}
	// A client on the loopback-only test tailnet; the proxies under test
	// get the other knobs from the environment, as this process does.
	netns.SetEnabled(false)
	s := &tsnet.Server{
		Dir:        filepath.Join(*dir, *hostname),
		Hostname:   *hostname,
		ControlURL: *controlURL,
		Ephemeral:  true,
		Logf:       logger.Discard,
		UserLogf:   logger.Discard,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := s.Up(ctx); err != nil {
		log.Fatalf("wsclient: up: %v", err)
	}
	c := &client{
		srv:       s,
		host:      u.Hostname(),
		path:      u.RequestURI(),
		tlsConfig: &tls.Config{ServerName: u.Hostname(), RootCAs: pool, NextProtos: []string{"http/1.1"}},
		attempts:  *attempts,
		maxFailed: *maxFailed,
		workers:   *workers,
	}
	// The proxy's node may not be in our netmap yet: probe until it echoes.
	for {
		ws, err := c.dial(ctx)
		if err == nil {
			err = ws.echo("probe")
			ws.close()
			if err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			log.Fatalf("wsclient: %s never answered: %v", *rawURL, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	reply(map[string]any{"ready": true})

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(in.Text()), " ")
		n, _ := strconv.Atoi(arg)
		switch cmd {
		case "open":
			reply(c.openMany(n))
		case "echo":
			reply(c.echoSample(n))
		case "close":
			for _, ws := range c.open {
				ws.close()
			}
			reply(map[string]any{"closed": len(c.open)})
			c.open = nil
		default:
			reply(map[string]any{"error": "unknown command " + cmd})
		}
	}
	// Exit without closing the node (tsnet's Close stalls with many
	// endpoints; see docs/tailnet.md).
	os.Exit(0)
}

func reply(v any) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

// openMany opens n websockets, c.workers at a time.
func (c *client) openMany(n int) map[string]any {
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		failed int
		errs   []string
		stop   atomic.Bool
		jobs   = make(chan struct{})
		t0     = time.Now()
		last   time.Duration // when the last websocket that opened did
		start  = len(c.open)
	)
	for range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				ws, err := c.dialRetry()
				mu.Lock()
				if err != nil {
					failed++
					if len(errs) < 5 {
						errs = append(errs, err.Error())
					}
					if failed >= c.maxFailed {
						stop.Store(true)
					}
				} else {
					c.open = append(c.open, ws)
					last = time.Since(t0)
					if k := len(c.open) - start; k%1000 == 0 {
						fmt.Fprintf(os.Stderr, "wsclient: %d open (%.1f s)\n", k, time.Since(t0).Seconds())
					}
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n && !stop.Load(); i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return map[string]any{
		"opened":  len(c.open) - start,
		"failed":  failed,
		"open":    len(c.open),
		"seconds": time.Since(t0).Seconds(),
		// Differs from seconds when failures were retried at the end.
		"last_open_seconds": last.Seconds(),
		"errors":            errs,
	}
}

func (c *client) dialRetry() (*wsConn, error) {
	var err error
	for i := range c.attempts {
		if i > 0 {
			time.Sleep(min(time.Duration(250<<i)*time.Millisecond, 4*time.Second))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var ws *wsConn
		ws, err = c.dial(ctx)
		cancel()
		if err == nil {
			return ws, nil
		}
	}
	return nil, err
}

// dial opens one websocket: tailnet TCP, TLS, HTTP/1.1 upgrade.
func (c *client) dial(ctx context.Context) (*wsConn, error) {
	raw, err := c.srv.Dial(ctx, "tcp", c.host+":443")
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	tc := tls.Client(raw, c.tlsConfig)
	if d, ok := ctx.Deadline(); ok {
		tc.SetDeadline(d)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		tc.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: %[2]s\r\nOrigin: https://%[2]s\r\nUpgrade: websocket\r\n"+
		"Connection: Upgrade\r\nSec-WebSocket-Key: %[3]s\r\nSec-WebSocket-Version: 13\r\n\r\n", c.path, c.host, key)
	br := bufio.NewReaderSize(tc, 512)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		tc.Close()
		return nil, fmt.Errorf("upgrade refused: %s", resp.Status)
	}
	tc.SetDeadline(time.Time{})
	return &wsConn{c: tc, br: br}, nil
}

// frame writes one masked client frame with a short payload.
func (w *wsConn) frame(opcode byte, payload string) error {
	var mask [4]byte
	rand.Read(mask[:])
	f := append([]byte{0x80 | opcode, 0x80 | byte(len(payload))}, mask[:]...)
	for i := range len(payload) {
		f = append(f, payload[i]^mask[i%4])
	}
	_, err := w.c.Write(f)
	return err
}

// echo sends msg (under 126 bytes) and expects it back within 10 s.
func (w *wsConn) echo(msg string) error {
	w.c.SetDeadline(time.Now().Add(10 * time.Second))
	defer w.c.SetDeadline(time.Time{})
	if err := w.frame(0x1, msg); err != nil {
		return err
	}
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return err
	}
	if h[0] != 0x81 || int(h[1]) != len(msg) {
		return fmt.Errorf("unexpected frame header %x", h)
	}
	p := make([]byte, len(msg))
	if _, err := io.ReadFull(w.br, p); err != nil {
		return err
	}
	if string(p) != msg {
		return errors.New("echo differs")
	}
	return nil
}

func (w *wsConn) close() {
	w.c.SetDeadline(time.Now().Add(5 * time.Second))
	w.frame(0x8, "")
	w.c.Close()
}

// echoSample echoes on k sockets spread evenly over the open ones.
func (c *client) echoSample(k int) map[string]any {
	k = min(k, len(c.open))
	ok := 0
	var errs []string
	for i := range k {
		if err := c.open[i*len(c.open)/k].echo(fmt.Sprintf("sample %d", i)); err != nil {
			if len(errs) < 5 {
				errs = append(errs, err.Error())
			}
			continue
		}
		ok++
	}
	return map[string]any{"sampled": k, "ok": ok, "errors": errs}
}
