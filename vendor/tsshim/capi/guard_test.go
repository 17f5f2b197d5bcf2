package main

import (
	"errors"
	"strings"
	"tailscale.com/tsnet"
	"testing"
)

func TestProtectRecoversPanics(t *testing.T) {
	err := protect(func() error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "recovered Go panic): boom") {
		t.Fatalf("got %v", err)
	}
	var m map[string]int
	err = protect(func() error { m["x"] = 1; return nil }) // nil map write
	if err == nil {
		t.Fatal("nil map write not recovered")
	}
	var p *node
	err = protect(func() error { return p.configure(nil) }) // nil deref
	if err == nil {
		t.Fatal("nil dereference not recovered")
	}
	want := errors.New("plain")
	if got := protect(func() error { return want }); got != want {
		t.Fatalf("plain error changed: %v", got)
	}
}

func TestParseTags(t *testing.T) {
	for in, want := range map[string]string{
		"":                    "",
		"tag:a":               "tag:a",
		" tag:web , tag:db-1": "tag:web,tag:db-1",
	} {
		got, err := parseTags(in)
		if err != nil || strings.Join(got, ",") != want {
			t.Errorf("parseTags(%q) = %v, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"web", "tag:", "tag:a b", "tag:a,,tag:b", "tag:ü"} {
		if _, err := parseTags(bad); err == nil {
			t.Errorf("parseTags(%q) accepted", bad)
		}
	}
}

func TestNodeLifecycleWithoutNetwork(t *testing.T) {
	h := newNode()
	n, err := lookupNode(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.configure(func(s *tsnet.Server) error { s.Hostname = "x"; return nil }); err != nil {
		t.Fatal(err)
	}
	// Close before start, then again: the second is an error, not a crash.
	if err := closeNode(h); err != nil {
		t.Fatalf("close before start: %v", err)
	}
	if err := closeNode(h); !errors.Is(err, errUnknownNode) {
		t.Fatalf("second close: %v", err)
	}
	if _, err := lookupNode(h); err == nil {
		t.Fatal("closed node still found")
	}
	if err := n.configure(func(*tsnet.Server) error { return nil }); err == nil {
		t.Fatal("configure after close accepted")
	}
	if _, err := n.up(10); err == nil {
		t.Fatal("up after close accepted")
	}
	if err := closeListener(12345); err == nil {
		t.Fatal("unknown listener closed")
	}
}
