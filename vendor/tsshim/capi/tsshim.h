/*
 * tsshim.h — the C contract between tailpass (Rust) and its embedded tsnet (Go).
 *
 * This header is the single source of truth: the Go side includes it in its cgo
 * preamble, so the C compiler rejects any exported Go function whose signature
 * drifts from a declaration here, and the Rust side generates its bindings from
 * it with bindgen.
 *
 * Conventions
 *  - Handles (nodes, listeners) are positive int64 values; 0 and negatives are
 *    never valid handles. Unknown or closed handles give an error, never a crash.
 *  - Functions returning int return 0 on success and -1 on failure. On failure,
 *    if `err` is not NULL, *err receives a malloc'd NUL-terminated message that
 *    the caller frees with tsshim_free. On success *err is left untouched.
 *  - Input strings (char *) are only read, never kept or modified (cgo
 *    exports cannot spell const).
 *  - Every string out-parameter (char **) is malloc'd by the callee and freed
 *    by the caller with tsshim_free.
 *  - Every file descriptor handed out is close-on-exec and owned by the caller.
 *  - Go panics inside any function are recovered and reported as errors.
 *  - Timeouts are in milliseconds; a value <= 0 means "no timeout".
 */
#ifndef TSSHIM_H
#define TSSHIM_H

#include <stdint.h>

/* Frees memory returned by any tsshim function. NULL is allowed. */
void tsshim_free(void *p);

/* Process-wide: whether tailscale may bind sockets to a specific network
 * interface (netns). Disable for containers without CAP_NET_ADMIN and for
 * the loopback-only test tailnet. Enabled by default. */
void tsshim_set_netns_enabled(int enabled);

/* Process-wide: runs Go's garbage collector and returns freed memory to
 * the operating system (debug.FreeOSMemory). */
void tsshim_release_memory(void);

/* Process-wide: sets a tailscale environment knob (TS_*) and updates the
 * value tailscale already read at start-up. Call before creating nodes;
 * knobs are read without locks by running nodes. */
int tsshim_setenv(char *name, char *value, char **err);

/* Creates a node (not yet started). Returns its handle, or -1. */
int64_t tsshim_node_new(char **err);

/* Setters: only before the node starts (before up/listen/dial). */
int tsshim_node_set_dir(int64_t node, char *dir, char **err);
int tsshim_node_set_hostname(int64_t node, char *hostname, char **err);
int tsshim_node_set_authkey(int64_t node, char *authkey, char **err);
int tsshim_node_set_control_url(int64_t node, char *url, char **err);
int tsshim_node_set_ephemeral(int64_t node, int ephemeral, char **err);
/* Tags as a comma-separated list, e.g. "tag:web,tag:prod"; "" clears. */
int tsshim_node_set_tags(int64_t node, char *tags, char **err);
/* Where tsnet's logs go: fd >= 0 writes lines to a duplicate of fd (the caller
 * keeps ownership of fd); fd < 0 discards them (the default). */
int tsshim_node_set_log_fd(int64_t node, int fd, char **err);

/* Starts the node and waits until it is connected to the tailnet, at most
 * timeout_ms. On success *status_json receives the status (see tsshim_status).
 * tsshim_node_cancel_up and tsshim_node_close abort a pending up. */
int tsshim_node_up(int64_t node, int64_t timeout_ms, char **status_json, char **err);
/* Aborts every tsshim_node_up in progress on this node. Never fails. */
void tsshim_node_cancel_up(int64_t node);

/* Closes the node: aborts pending ups, closes its listeners (pending accepts
 * see end of stream) and leaves the tailnet. Safe before start; a second
 * close of the same handle reports an "unknown node" error, never a crash. */
int tsshim_node_close(int64_t node, char **err);

/* Listens on the tailnet (network "tcp", "tcp4" or "tcp6"; addr ":port").
 * Returns a listener handle and, in *ctl_fd, a SOCK_SEQPACKET socket. Each
 * accepted connection arrives on ctl_fd as ONE message whose payload is
 * "<remote ip:port>\n<local ip:port>\n<origin>" and whose SCM_RIGHTS data
 * carries exactly one stream socket fd for the connection's bytes. origin is
 * "tailnet" (remote is a tailnet peer, fit for tsshim_whois) or "funnel"
 * (remote is the public client's address as the Funnel relay reported it;
 * never a tailnet identity).
 *
 * When the shim accepted a connection but could not hand it over (making
 * the socketpair failed: EMFILE, ENFILE, ENOMEM), it closes that connection
 * and sends instead ONE message with NO descriptor whose payload is
 * "handoff-error\n<remote ip:port>\n<reason>" (reason: one line, at most
 * 200 bytes). The listener goes on. A connection message that arrives with
 * its descriptor missing (MSG_CTRUNC: the receiver's descriptor table was
 * full) is likewise a lost connection, not the end of the listener.
 *
 * The shim's accept loop survives every accept error but the listener's
 * own close (it backs off from 5 ms up to 1 s between failures). When the
 * listener ends, ctl_fd reads EOF (zero bytes, no descriptor). */
int64_t tsshim_listen(int64_t node, char *network, char *addr,
                      int *ctl_fd, char **err);
/* Like tsshim_listen, for public Funnel traffic on addr (":443", ":8443" or
 * ":10000"), TLS terminated in the shim with the certificate given by
 * tsshim_listener_set_cert (ALPN h2, http/1.1); until one is set,
 * handshakes fail. funnel_only != 0 accepts only Funnel traffic. */
int64_t tsshim_listen_funnel(int64_t node, char *addr, int funnel_only,
                             int *ctl_fd, char **err);
/* Sets (or replaces, for renewal) the certificate chain and key (PEM) a
 * Funnel listener presents. New handshakes use it at once. */
int tsshim_listener_set_cert(int64_t listener, char *cert_pem, char *key_pem,
                             char **err);

/* The channel data path: one framed SOCK_STREAM socket per node carries
 * every connection of the node (instead of a socketpair per connection).
 *
 * tsshim_node_open_channel makes the node's channel and returns the
 * caller's end in *fd (close-on-exec). A node has one live channel at a
 * time; after one ended, a new one may be opened. Frames, both ways, are
 *   [type u8][stream u32][len u32][len bytes of payload]   (big endian)
 * with len <= 65536. Stream ids with bit 31 set are allocated by the caller
 * (dials), the others by the shim (accepted connections). Types:
 *   1 OPEN      shim->caller  stream opened by a listener; payload:
 *               listener id u32, then "<remote ip:port>\n<local ip:port>\n<origin>"
 *               (origin as for tsshim_listen): the address arrives with the stream.
 *   2 DIAL      caller->shim  payload: timeout_ms u32, then "<network>\n<addr>"
 *   3 DIAL_OK   shim->caller  payload: the peer's "ip:port"
 *   4 DIAL_ERR  shim->caller  payload: the error text; the stream id is free again
 *   5 DATA      both          payload: bytes of the stream
 *   6 WINDOW    both          payload: u32, more bytes the sender may now send
 *   7 FIN       both          the sender sends no more data (half-close)
 *   8 RST       both          the stream is gone; nothing more on it either way
 *   9 HANDOFF_ERROR shim->caller  stream = listener id; "<remote ip:port>\n<reason>":
 *               a connection the listener accepted was lost before it opened
 *  10 LISTENER_END  shim->caller  stream = listener id; the listener ended
 * Each side starts every stream with 262144 bytes of credit for DATA it may
 * send and returns credit (WINDOW) as its application consumes the bytes; a
 * peer sending beyond its credit gets the stream reset. A frame the shim
 * cannot decode ends the channel. When the channel ends (either side
 * closes it, or the node closes), every stream and listener on it ends. */
int tsshim_node_open_channel(int64_t node, int *fd, char **err);
/* Like tsshim_listen / tsshim_listen_funnel (funnel != 0), but connections
 * arrive as OPEN frames on the node's channel tagged with listener_id
 * (1..2^31-1, chosen by the caller, unique among its listeners). */
int64_t tsshim_listen_channel(int64_t node, char *network, char *addr,
                              int funnel, int funnel_only,
                              uint32_t listener_id, char **err);

/* Stops a listener. Its ctl_fd then reads end of stream. */
int tsshim_listener_close(int64_t listener, char **err);

/* Dials addr ("host:port"; host is a MagicDNS name or a tailnet IP) over the
 * tailnet. *fd receives a stream socket for the connection's bytes;
 * *remote_addr (may be NULL) the peer's "ip:port". */
int tsshim_dial(int64_t node, char *network, char *addr,
                int64_t timeout_ms, int *fd, char **remote_addr, char **err);

/* WhoIs for a peer "ip:port" as seen by this node. *json receives
 * tailscale's apitype.WhoIsResponse as JSON (Node, UserProfile, CapMap). */
int tsshim_whois(int64_t node, char *addr, int64_t timeout_ms,
                 char **json, char **err);

/* The TLS certificate chain and private key (PEM) for one of the node's
 * cert domains. */
int tsshim_cert_pair(int64_t node, char *domain, int64_t timeout_ms,
                     char **cert_pem, char **key_pem, char **err);

/* The node's status as JSON:
 * {"backend_state","self":{"stable_id","host_name","dns_name","addresses",
 *  "tags","user_login"},"peers":[{"stable_id","host_name","dns_name",
 *  "addresses","tags","online"}],"magic_dns_suffix","cert_domains","health"} */
int tsshim_status(int64_t node, int64_t timeout_ms, char **json, char **err);

#endif /* TSSHIM_H */
