//! [`Node`]: one tailnet node (a tsnet server inside this process).

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::channel::Channel;
use super::listener::Listener;
use super::stream::{DataPath, TailnetStream};
use super::{Error, Result, Status, WhoIs, ffi};

/// Where a node's tsnet logs go.
#[derive(Debug, Default)]
pub enum LogSink {
    /// Dropped (the default).
    #[default]
    Discard,
    /// Each line becomes a `tracing` debug event, target `tailpass::tsnet`.
    Tracing,
    /// Written to this descriptor (tailpass keeps it open until the node closes).
    Fd(std::os::fd::OwnedFd),
}

/// How to create a node. Secrets are never shown by `Debug`.
pub struct NodeConfig {
    /// Host name on the tailnet (the first label of its MagicDNS name).
    pub hostname: String,
    /// Directory for the node's state (keys, certs). Created if missing.
    pub state_dir: PathBuf,
    /// Auth key used the first time the node registers.
    pub auth_key: Option<String>,
    /// Coordination server; `None` means Tailscale's.
    pub control_url: Option<String>,
    /// Register as an ephemeral node (removed when it goes offline).
    pub ephemeral: bool,
    /// ACL tags to advertise (`tag:name`).
    pub tags: Vec<String>,
    /// Where tsnet logs go.
    pub logs: LogSink,
    /// Timeout for dial, whois, status, cert and listen calls.
    pub call_timeout: Duration,
    /// How connections travel between the shim and Rust
    /// (default: [`DataPath::from_env`]).
    pub data_path: DataPath,
}

impl NodeConfig {
    /// A config with the required fields and defaults for the rest.
    pub fn new(hostname: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            hostname: hostname.into(),
            state_dir: state_dir.into(),
            auth_key: None,
            control_url: None,
            ephemeral: false,
            tags: Vec::new(),
            logs: LogSink::Discard,
            call_timeout: Duration::from_secs(15),
            data_path: DataPath::from_env(),
        }
    }
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("hostname", &self.hostname)
            .field("state_dir", &self.state_dir)
            .field("auth_key", &self.auth_key.as_ref().map(|_| "<redacted>"))
            .field("control_url", &self.control_url)
            .field("ephemeral", &self.ephemeral)
            .field("tags", &self.tags)
            .field("logs", &self.logs)
            .field("call_timeout", &self.call_timeout)
            .field("data_path", &self.data_path)
            .finish()
    }
}

/// A tailnet node. Cheap to clone (an `Arc`); `Send + Sync`.
///
/// The node leaves the tailnet on [`Node::close`], or when the last clone
/// (including listeners made from it) is dropped.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    handle: i64,
    hostname: String,
    call_timeout: Duration,
    closed: AtomicBool,
    data_path: DataPath,
    /// The node's channel (channel data path), opened on first use and
    /// again after it failed.
    channel: Mutex<Option<Channel>>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("hostname", &self.inner.hostname)
            .field("handle", &self.inner.handle)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            // tsnet's Close can take seconds (it flushes and waits for its
            // goroutines); never block whatever thread dropped us.
            let h = self.handle;
            let _ = std::thread::Builder::new()
                .name("tailnet-close".into())
                .spawn(move || {
                    if let Err(e) = ffi::node_close(h) {
                        tracing::debug!(error = %e, "closing dropped tailnet node");
                    }
                });
        }
    }
}

/// Runs a blocking shim call off the async worker threads.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Protocol(format!(
            "blocking tailnet call failed: {e}"
        ))),
    }
}

impl Node {
    /// Creates a node from its config. Nothing touches the network until
    /// [`Node::up`], [`Node::listen`] or [`Node::dial`].
    pub fn new(config: NodeConfig) -> Result<Node> {
        if config.hostname.is_empty() {
            return Err(Error::InvalidArgument {
                what: "hostname",
                reason: "must not be empty".into(),
            });
        }
        let handle = ffi::node_new()?;
        let node = Node {
            inner: Arc::new(Inner {
                handle,
                hostname: config.hostname.clone(),
                call_timeout: config.call_timeout,
                closed: AtomicBool::new(false),
                data_path: config.data_path,
                channel: Mutex::new(None),
            }),
        };
        // On any error below, dropping `node` closes the half-made handle.
        let dir = config
            .state_dir
            .to_str()
            .ok_or_else(|| Error::InvalidArgument {
                what: "state dir",
                reason: "is not valid UTF-8".into(),
            })?;
        ffi::node_set(handle, ffi::Setting::Dir, dir)?;
        ffi::node_set(handle, ffi::Setting::Hostname, &config.hostname)?;
        if let Some(key) = &config.auth_key {
            ffi::node_set(handle, ffi::Setting::AuthKey, key)?;
        }
        if let Some(url) = &config.control_url {
            ffi::node_set(handle, ffi::Setting::ControlUrl, url)?;
        }
        ffi::node_set_ephemeral(handle, config.ephemeral)?;
        if !config.tags.is_empty() {
            ffi::node_set(handle, ffi::Setting::Tags, &config.tags.join(","))?;
        }
        match config.logs {
            LogSink::Discard => ffi::node_set_log_fd(handle, None)?,
            LogSink::Fd(fd) => ffi::node_set_log_fd(handle, Some(fd.as_raw_fd()))?,
            LogSink::Tracing => {
                let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| Error::Io(e.into()))?;
                ffi::node_set_log_fd(handle, Some(wr.as_raw_fd()))?;
                drop(wr); // the shim holds its own duplicate
                let host = config.hostname.clone();
                std::thread::Builder::new()
                    .name(format!("tsnet-log-{host}"))
                    .spawn(move || {
                        let mut last_login_url = None;
                        for line in BufReader::new(std::fs::File::from(rd)).lines() {
                            let Ok(l) = line else { break };
                            match login_url(&l) {
                                // Needs the operator: shown at WARN, once per URL
                                // (tsnet repeats it every 5 s).
                                Some(url) if last_login_url.as_deref() != Some(url) => {
                                    tracing::warn!(target: "tailpass::tsnet", node = %host, url, "this node is not logged in: open the URL to add it to the tailnet, or set the node's auth_key");
                                    last_login_url = Some(url.to_string());
                                }
                                _ => tracing::debug!(target: "tailpass::tsnet", node = %host, "{l}"),
                            }
                        }
                    })?;
            }
        }
        Ok(node)
    }

    /// The configured host name.
    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }

    fn handle(&self) -> Result<i64> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        Ok(self.inner.handle)
    }

    /// Starts the node and waits until it is connected, at most `timeout`.
    ///
    /// Dropping the returned future cancels the wait.
    pub async fn up(&self, timeout: Duration) -> Result<Status> {
        let h = self.handle()?;
        struct CancelOnDrop(i64, bool);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                if !self.1 {
                    ffi::node_cancel_up(self.0);
                }
            }
        }
        let mut guard = CancelOnDrop(h, false);
        let json = blocking(move || ffi::node_up(h, Some(timeout))).await;
        guard.1 = true;
        Status::from_json(&json.map_err(|e| self.closed_or(e))?)
    }

    fn closed_or(&self, e: Error) -> Error {
        if self.inner.closed.load(Ordering::SeqCst) && e.is_closed() {
            Error::Closed
        } else {
            e
        }
    }

    /// Listens for tailnet TCP connections on `port` (all tailnet addresses).
    pub async fn listen(&self, port: u16) -> Result<Listener> {
        self.listen_on("tcp", format!(":{port}"), None).await
    }

    /// Listens for public Funnel connections on `port` (443, 8443 or 10000).
    /// TLS is terminated in the shim with the certificate given to
    /// [`Listener::set_cert`]. With `funnel_only`, tailnet peers are not
    /// accepted on this listener.
    pub async fn listen_funnel(&self, port: u16, funnel_only: bool) -> Result<Listener> {
        self.listen_on("tcp", format!(":{port}"), Some(funnel_only))
            .await
    }

    /// The node's channel, opened (again) if there is none alive. Opening
    /// is quick (a socketpair and two goroutines): no blocking pool.
    fn channel(&self) -> Result<Channel> {
        let h = self.handle()?;
        let mut slot = self.inner.channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = slot.as_ref().filter(|c| c.is_alive()) {
            return Ok(ch.clone());
        }
        let fd = ffi::node_open_channel(h).map_err(|e| self.closed_or(e))?;
        let ch = Channel::start(fd)?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    async fn listen_on(
        &self,
        network: &'static str,
        addr: String,
        funnel: Option<bool>,
    ) -> Result<Listener> {
        let h = self.handle()?;
        if self.inner.data_path == DataPath::Channel {
            let cl = self.channel()?.add_listener()?;
            let (a, id) = (addr.clone(), cl.id());
            let lh = blocking(move || ffi::listen_channel(h, network, &a, funnel, id))
                .await
                .map_err(|e| self.closed_or(e))?;
            return Ok(Listener::on_channel(self.clone(), lh, cl, addr));
        }
        let a = addr.clone();
        let (lh, ctl) = blocking(move || ffi::listen(h, network, &a, funnel))
            .await
            .map_err(|e| self.closed_or(e))?;
        Listener::new(self.clone(), lh, ctl, addr)
    }

    /// Dials `addr` (`host:port`, host a MagicDNS name or tailnet IP).
    pub async fn dial(&self, addr: &str) -> Result<TailnetStream> {
        let h = self.handle()?;
        let timeout = self.inner.call_timeout;
        if self.inner.data_path == DataPath::Channel {
            let (s, peer) = self
                .channel()?
                .dial(addr, timeout)
                .await
                .map_err(|e| self.closed_or(e))?;
            return Ok(TailnetStream::from_channel(
                s,
                peer,
                None,
                super::stream::Origin::Tailnet,
            ));
        }
        let a = addr.to_string();
        let (fd, remote) = blocking(move || ffi::dial(h, "tcp", &a, Some(timeout)))
            .await
            .map_err(|e| self.closed_or(e))?;
        let peer: SocketAddr = remote
            .parse()
            .map_err(|_| Error::Protocol(format!("dial: bad remote address {remote:?}")))?;
        TailnetStream::from_fd(fd, peer, None, super::stream::Origin::Tailnet)
    }

    /// Who is behind `peer`, as this node sees it.
    pub async fn whois(&self, peer: SocketAddr) -> Result<WhoIs> {
        let h = self.handle()?;
        let timeout = self.inner.call_timeout;
        let json = blocking(move || ffi::whois(h, &peer.to_string(), Some(timeout)))
            .await
            .map_err(|e| self.closed_or(e))?;
        WhoIs::from_json(&json)
    }

    /// The TLS certificate chain and key (PEM) for one of the node's cert domains.
    pub async fn cert_pair(&self, domain: &str) -> Result<CertPair> {
        let h = self.handle()?;
        let d = domain.to_string();
        // Issuing a certificate can take a while (ACME DNS challenge).
        let timeout = self.inner.call_timeout.max(Duration::from_secs(120));
        let (cert_pem, key_pem) = blocking(move || ffi::cert_pair(h, &d, Some(timeout)))
            .await
            .map_err(|e| self.closed_or(e))?;
        Ok(CertPair { cert_pem, key_pem })
    }

    /// The node's current status.
    pub async fn status(&self) -> Result<Status> {
        let h = self.handle()?;
        let timeout = self.inner.call_timeout;
        let json = blocking(move || ffi::status(h, Some(timeout)))
            .await
            .map_err(|e| self.closed_or(e))?;
        Status::from_json(&json)
    }

    /// Leaves the tailnet: pending `up` calls fail, listeners end (pending
    /// accepts return [`Error::ListenerClosed`]). Closing twice is fine.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let h = self.inner.handle;
        blocking(move || ffi::node_close(h)).await
    }
}

/// A certificate chain and private key in PEM.
#[derive(Clone)]
pub struct CertPair {
    /// Certificate chain, leaf first.
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Process-wide tsnet settings. Call before creating the first node.
pub mod global {
    use super::{Result, ffi};

    /// Whether tailscale may bind its sockets to a specific interface.
    /// Turn off in containers without `CAP_NET_ADMIN` and on loopback-only
    /// test tailnets.
    pub fn set_netns_enabled(enabled: bool) {
        ffi::set_netns_enabled(enabled)
    }

    /// Runs the embedded Go runtime's garbage collector and returns freed
    /// memory to the operating system.
    pub fn release_memory() {
        ffi::release_memory()
    }

    /// Sets a tailscale environment knob (`TS_*`) for this process, also
    /// updating the value tailscale read at start-up. Knobs are read without
    /// locks, so set them before the first node starts.
    pub fn set_env_knob(name: &str, value: &str) -> Result<()> {
        ffi::setenv(name, value)
    }
}
/// The login URL in tsnet's "needs login" line, if `line` is that line.
fn login_url(line: &str) -> Option<&str> {
    const MARK: &str = "To start this tsnet server, restart with TS_AUTHKEY set, or go to: ";
    let url = line.split_once(MARK)?.1.trim();
    url.starts_with("http").then_some(url)
}

#[cfg(test)]
mod tests {
    use super::login_url;

    #[test]
    fn the_login_line_is_recognised() {
        // tsnet v1.94 (printAuthURLLoop), behind its log prefix.
        let l = "2026/11/30 03:55:01 To start this tsnet server, restart with TS_AUTHKEY set, or go to: https://login.tailscale.com/a/1a2b3c";
        assert_eq!(login_url(l), Some("https://login.tailscale.com/a/1a2b3c"));
        assert_eq!(
            login_url("magicsock: disco: node [abc] now using 127.0.0.1:41641"),
            None
        );
        assert_eq!(
            login_url("To start this tsnet server, restart with TS_AUTHKEY set, or go to: "),
            None
        );
    }
}
