// Command goproxy is the pure-Go baseline for tailpass's websocket
// benchmark (benches/websockets.rs): what a small tsnsrv-style proxy does
// with the same work. One tsnet node serves HTTPS on :443 with a
// self-signed certificate and passes every request to -upstream through
// net/http/httputil.ReverseProxy (websocket upgrades included), after
// stripping client-sent Tailscale identity headers and setting them from
// WhoIs, as tsnsrv does.
//
// It prints one JSON line on stdout once serving:
//
//	{"fqdn":"gp.tail-test.ts.net","ca_file":"/path/cert.pem"}
//
// and exits when its stdin closes, so it cannot outlive its parent. The
// test tailnet's tsnet knobs (TS_DEBUG_ALWAYS_USE_DERP, ...) come from the
// environment, as for the tailpass binary.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
)

func main() {
	var (
		controlURL = flag.String("control-url", "", "control server URL (required)")
		hostname   = flag.String("hostname", "goproxy", "tailnet host name")
		dir        = flag.String("dir", "", "state directory; the certificate is written there (required)")
		upstream   = flag.String("upstream", "", "upstream URL, e.g. http://127.0.0.1:8080 (required)")
	)
	flag.Parse()
	target, err := url.Parse(*upstream)
	if *controlURL == "" || *dir == "" || err != nil || target.Host == "" {
		log.Fatal("goproxy: -control-url, -dir and a valid -upstream are required")
	}
	s := &tsnet.Server{
		Dir:        filepath.Join(*dir, "tsnet"),
		Hostname:   *hostname,
		ControlURL: *controlURL,
		Ephemeral:  true,
		Logf:       logger.Discard,
		UserLogf:   logger.Discard,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	st, err := s.Up(ctx)
	cancel()
	if err != nil {
		log.Fatalf("goproxy: up: %v", err)
	}
	fqdn := strings.TrimSuffix(st.Self.DNSName, ".")
	cert, caFile, err := selfSigned(fqdn, *dir)
	if err != nil {
		log.Fatalf("goproxy: certificate: %v", err)
	}
	lc, err := s.LocalClient()
	if err != nil {
		log.Fatal(err)
	}
	ln, err := s.Listen("tcp", ":443")
	if err != nil {
		log.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		},
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, err := lc.WhoIs(r.Context(), r.RemoteAddr)
		if err != nil {
			http.Error(w, "unknown peer", http.StatusForbidden)
			return
		}
		for k := range r.Header {
			if strings.HasPrefix(strings.ToLower(k), "x-tailscale-") {
				r.Header.Del(k)
			}
		}
		r.Header.Set("X-Tailscale-User-LoginName", who.UserProfile.LoginName)
		proxy.ServeHTTP(w, r)
	})
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/1.1 only, like the websocket clients of the benchmark.
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
	}
	go func() {
		if err := srv.Serve(tls.NewListener(ln, srv.TLSConfig)); err != nil {
			log.Fatalf("goproxy: serve: %v", err)
		}
	}()
	ready, _ := json.Marshal(map[string]string{"fqdn": fqdn, "ca_file": caFile})
	os.Stdout.Write(append(ready, '\n'))
	io.Copy(io.Discard, os.Stdin)
	// Exit without closing the node: tsnet's Close stalls with many
	// endpoints open (docs/tailnet.md), and the process exit ends them.
	os.Exit(0)
}

// selfSigned makes a P-256 certificate for host, signed by itself, and
// writes it (PEM) to dir/cert.pem for clients to trust.
func selfSigned(host, dir string) (tls.Certificate, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	file := filepath.Join(dir, "cert.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(file, pemBytes, 0o644); err != nil {
		return tls.Certificate{}, "", err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, file, nil
}
