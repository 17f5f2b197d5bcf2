package main

// The C API (tsshim.h). Each export converts C types, recovers any Go panic
// into an error (a panic must never take the Rust process down) and calls
// the plain-Go logic in node.go, listener.go and pump.go.

/*
#include <stdlib.h>
#include "tsshim.h"
*/
import "C"

import (
	"fmt"
	"runtime/debug"
	"strings"
	"unsafe"

	"tailscale.com/envknob"
	"tailscale.com/logtail"
	"tailscale.com/net/netns"
	"tailscale.com/tsnet"
)

func init() {
	// tailpass never uploads tailscale's client logs to log.tailscale.com
	// unless the operator opts in: TAILPASS_TAILSCALE_LOG_UPLOAD=1.
	if !envknob.Bool("TAILPASS_TAILSCALE_LOG_UPLOAD") {
		envknob.SetNoLogsNoSupport()
		logtail.Disable()
	}
}

func main() {}

// setErr stores err in *errp as a malloc'd C string, if errp is not NULL.
func setErr(errp **C.char, err error) {
	if errp == nil || err == nil {
		return
	}
	*errp = C.CString(strings.ReplaceAll(err.Error(), "\x00", ""))
}

// call runs body under protect and reports the outcome the C way.
func call(errp **C.char, body func() error) C.int {
	if err := protect(body); err != nil {
		setErr(errp, err)
		return -1
	}
	return 0
}

// setStr stores s in *dst as a malloc'd C string, if dst is not NULL.
func setStr(dst **C.char, s string) {
	if dst != nil {
		*dst = C.CString(s)
	}
}

//export tsshim_free
func tsshim_free(p unsafe.Pointer) {
	C.free(p)
}

//export tsshim_set_netns_enabled
func tsshim_set_netns_enabled(enabled C.int) {
	protect(func() error { netns.SetEnabled(enabled != 0); return nil })
}

//export tsshim_release_memory
func tsshim_release_memory() {
	protect(func() error { debug.FreeOSMemory(); return nil })
}

//export tsshim_setenv
func tsshim_setenv(name, value *C.char, errp **C.char) C.int {
	return call(errp, func() error {
		k := C.GoString(name)
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("invalid environment variable name %q", k)
		}
		envknob.Setenv(k, C.GoString(value))
		return nil
	})
}

//export tsshim_node_new
func tsshim_node_new(errp **C.char) C.int64_t {
	h := int64(-1)
	if call(errp, func() error { h = newNode(); return nil }) != 0 {
		return -1
	}
	return C.int64_t(h)
}

// onNode runs f with the node for handle h.
func onNode(h C.int64_t, errp **C.char, f func(n *node) error) C.int {
	return call(errp, func() error {
		n, err := lookupNode(int64(h))
		if err != nil {
			return err
		}
		return f(n)
	})
}

func setter(h C.int64_t, errp **C.char, f func(s *tsnet.Server) error) C.int {
	return onNode(h, errp, func(n *node) error { return n.configure(f) })
}

//export tsshim_node_set_dir
func tsshim_node_set_dir(h C.int64_t, dir *C.char, errp **C.char) C.int {
	v := C.GoString(dir)
	return setter(h, errp, func(s *tsnet.Server) error { s.Dir = v; return nil })
}

//export tsshim_node_set_hostname
func tsshim_node_set_hostname(h C.int64_t, hostname *C.char, errp **C.char) C.int {
	v := C.GoString(hostname)
	return setter(h, errp, func(s *tsnet.Server) error { s.Hostname = v; return nil })
}

//export tsshim_node_set_authkey
func tsshim_node_set_authkey(h C.int64_t, key *C.char, errp **C.char) C.int {
	v := C.GoString(key)
	return setter(h, errp, func(s *tsnet.Server) error { s.AuthKey = v; return nil })
}

//export tsshim_node_set_control_url
func tsshim_node_set_control_url(h C.int64_t, url *C.char, errp **C.char) C.int {
	v := C.GoString(url)
	return setter(h, errp, func(s *tsnet.Server) error { s.ControlURL = v; return nil })
}

//export tsshim_node_set_ephemeral
func tsshim_node_set_ephemeral(h C.int64_t, ephemeral C.int, errp **C.char) C.int {
	return setter(h, errp, func(s *tsnet.Server) error { s.Ephemeral = ephemeral != 0; return nil })
}

//export tsshim_node_set_tags
func tsshim_node_set_tags(h C.int64_t, tags *C.char, errp **C.char) C.int {
	v := C.GoString(tags)
	return setter(h, errp, func(s *tsnet.Server) error {
		t, err := parseTags(v)
		if err != nil {
			return err
		}
		s.AdvertiseTags = t
		return nil
	})
}

//export tsshim_node_set_log_fd
func tsshim_node_set_log_fd(h C.int64_t, fd C.int, errp **C.char) C.int {
	return onNode(h, errp, func(n *node) error { return n.setLogFD(int(fd)) })
}

//export tsshim_node_up
func tsshim_node_up(h C.int64_t, timeoutMS C.int64_t, statusJSON **C.char, errp **C.char) C.int {
	return onNode(h, errp, func(n *node) error {
		st, err := n.up(int64(timeoutMS))
		if err != nil {
			return err
		}
		setStr(statusJSON, st)
		return nil
	})
}

//export tsshim_node_cancel_up
func tsshim_node_cancel_up(h C.int64_t) {
	onNode(h, nil, func(n *node) error { n.cancelUp(); return nil })
}

//export tsshim_node_close
func tsshim_node_close(h C.int64_t, errp **C.char) C.int {
	return call(errp, func() error { return closeNode(int64(h)) })
}

func listenCommon(h C.int64_t, network, addr string, funnel, funnelOnly bool, ctlFD *C.int, errp **C.char) C.int64_t {
	lh := int64(-1)
	rc := onNode(h, errp, func(n *node) error {
		l, fd, err := n.listen(network, addr, funnel, funnelOnly)
		if err != nil {
			return err
		}
		*ctlFD = C.int(fd)
		lh = l
		return nil
	})
	if rc != 0 {
		return -1
	}
	return C.int64_t(lh)
}

//export tsshim_listen
func tsshim_listen(h C.int64_t, network, addr *C.char, ctlFD *C.int, errp **C.char) C.int64_t {
	return listenCommon(h, C.GoString(network), C.GoString(addr), false, false, ctlFD, errp)
}

//export tsshim_listen_funnel
func tsshim_listen_funnel(h C.int64_t, addr *C.char, funnelOnly C.int, ctlFD *C.int, errp **C.char) C.int64_t {
	return listenCommon(h, "tcp", C.GoString(addr), true, funnelOnly != 0, ctlFD, errp)
}

//export tsshim_node_open_channel
func tsshim_node_open_channel(h C.int64_t, fd *C.int, errp **C.char) C.int {
	return onNode(h, errp, func(n *node) error {
		cfd, err := n.openChannel()
		if err != nil {
			return err
		}
		*fd = C.int(cfd)
		return nil
	})
}

//export tsshim_listen_channel
func tsshim_listen_channel(h C.int64_t, network, addr *C.char, funnel, funnelOnly C.int, lid C.uint32_t, errp **C.char) C.int64_t {
	nw, a := C.GoString(network), C.GoString(addr)
	lh := int64(-1)
	rc := onNode(h, errp, func(n *node) error {
		if lid == 0 || uint32(lid)&rustIDBit != 0 {
			return fmt.Errorf("listen: invalid channel listener id %d", uint32(lid))
		}
		l, err := n.listenChannel(nw, a, funnel != 0, funnelOnly != 0, uint32(lid))
		lh = l
		return err
	})
	if rc != 0 {
		return -1
	}
	return C.int64_t(lh)
}

//export tsshim_listener_set_cert
func tsshim_listener_set_cert(h C.int64_t, certPEM, keyPEM *C.char, errp **C.char) C.int {
	c, k := C.GoString(certPEM), C.GoString(keyPEM)
	return call(errp, func() error { return setListenerCert(int64(h), []byte(c), []byte(k)) })
}

//export tsshim_listener_close
func tsshim_listener_close(h C.int64_t, errp **C.char) C.int {
	return call(errp, func() error { return closeListener(int64(h)) })
}

//export tsshim_dial
func tsshim_dial(h C.int64_t, network, addr *C.char, timeoutMS C.int64_t, fd *C.int, remote **C.char, errp **C.char) C.int {
	nw, a := C.GoString(network), C.GoString(addr)
	return onNode(h, errp, func(n *node) error {
		cfd, raddr, err := n.dial(nw, a, int64(timeoutMS))
		if err != nil {
			return err
		}
		*fd = C.int(cfd)
		setStr(remote, raddr)
		return nil
	})
}

//export tsshim_whois
func tsshim_whois(h C.int64_t, addr *C.char, timeoutMS C.int64_t, out **C.char, errp **C.char) C.int {
	a := C.GoString(addr)
	return onNode(h, errp, func(n *node) error {
		j, err := n.whois(a, int64(timeoutMS))
		if err != nil {
			return err
		}
		setStr(out, j)
		return nil
	})
}

//export tsshim_cert_pair
func tsshim_cert_pair(h C.int64_t, domain *C.char, timeoutMS C.int64_t, certPEM, keyPEM **C.char, errp **C.char) C.int {
	d := C.GoString(domain)
	return onNode(h, errp, func(n *node) error {
		c, k, err := n.certPair(d, int64(timeoutMS))
		if err != nil {
			return err
		}
		setStr(certPEM, string(c))
		setStr(keyPEM, string(k))
		return nil
	})
}

//export tsshim_status
func tsshim_status(h C.int64_t, timeoutMS C.int64_t, out **C.char, errp **C.char) C.int {
	return onNode(h, errp, func(n *node) error {
		j, err := n.status(int64(timeoutMS))
		if err != nil {
			return err
		}
		setStr(out, j)
		return nil
	})
}
