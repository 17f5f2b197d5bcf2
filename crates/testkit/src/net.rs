//! The offline test tailnet: tailscale's test control server with DERP and
//! STUN (the `testnet` helper of vendor/tsshim), all on 127.0.0.1, and the
//! process-wide tsnet settings that keep nodes on loopback.
//!
//! `TestNet::start` builds the helper (once per process, cached by Go) and
//! runs it; nodes join from this process through the real tailpass tailnet
//! API. The helper exits when its stdin closes, so it cannot outlive the
//! process that started it.
//!
//! Set `TAILPASS_TEST_TSNET_LOGS=1` to see the nodes' tsnet logs on stderr.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tailpass::tailnet::{LogSink, Node, NodeConfig, global};

use crate::{UP_TIMEOUT, repo_root, stop_child, target_tmp};

/// Options for the test control server.
#[derive(Default, Clone)]
pub struct TestNetOptions {
    /// Require this auth key from every node.
    pub auth_key: Option<String>,
    /// App-capability grant every peer gets (JSON object: cap → [values]).
    pub app_caps: Option<serde_json::Value>,
    /// Fixed tags per hostname.
    pub tags: Vec<(String, Vec<String>)>,
}

/// A running test tailnet.
pub struct TestNet {
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    stdout: Mutex<BufReader<ChildStdout>>,
    /// The control server URL.
    pub control_url: String,
    /// The MagicDNS domain.
    pub magic_dns: String,
    dir: tempfile::TempDir,
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let stdin = self.stdin.lock().unwrap().take();
        stop_child(stdin, &mut self.child.lock().unwrap());
    }
}

fn go_module_dir() -> PathBuf {
    repo_root().join("vendor/tsshim")
}

/// Builds a program of the Go module (e.g. "./cmd/testnet") once per process.
pub fn go_program(pkg: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap();
    if let Some((_, p)) = built.iter().find(|(k, _)| k == pkg) {
        return p.clone();
    }
    let dir = target_tmp().join("tsshim-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    // Build to a private name, then rename: parallel test processes may race.
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let status = Command::new(std::env::var("GO").unwrap_or_else(|_| "go".into()))
        .current_dir(go_module_dir())
        .env("GOFLAGS", "-trimpath -buildvcs=false")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(pkg)
        .status()
        .expect("running `go build` for a test helper (is Go installed?)");
    assert!(status.success(), "go build {pkg} failed");
    std::fs::rename(&tmp, &out).unwrap();
    built.push((pkg.to_string(), out.clone()));
    out
}

/// tsnet environment knobs for a loopback-only tailnet (set in-process by
/// [`init_process_for_tests`], or in the environment of a `tailpass` child
/// process).
pub const TSNET_TEST_KNOBS: [(&str, &str); 6] = [
    ("TS_DEBUG_ALWAYS_USE_DERP", "true"),
    ("TS_DISABLE_PORTMAPPER", "1"),
    ("TS_ASSUME_NETWORK_UP_FOR_TEST", "1"),
    (
        "TS_NETCHECK_GENERATE_204_URL",
        "http://127.0.0.1:9/generate_204",
    ),
    ("TS_NO_LOGS_NO_SUPPORT", "true"),
    // Certificate requests must never reach Let's Encrypt from a test.
    (
        "TS_DEBUG_ACME_DIRECTORY_URL",
        "http://127.0.0.1:9/directory",
    ),
];

/// Process-wide tsnet settings for a loopback-only tailnet: no interface
/// binding, DERP only (no direct UDP to interface addresses), no port
/// mapping probes of the gateway, no captive-portal probe to the internet.
pub fn init_process_for_tests() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        global::set_netns_enabled(false);
        for (k, v) in TSNET_TEST_KNOBS {
            global::set_env_knob(k, v).unwrap();
        }
    });
}

impl TestNet {
    /// Starts a test tailnet with default options.
    pub fn start() -> TestNet {
        Self::with_options(TestNetOptions::default())
    }

    /// Starts a test tailnet.
    pub fn with_options(opts: TestNetOptions) -> TestNet {
        init_process_for_tests();
        let bin = go_program("./cmd/testnet", "testnet");
        let mut cmd = Command::new(bin);
        if let Some(k) = &opts.auth_key {
            cmd.arg("-authkey").arg(k);
        }
        if let Some(c) = &opts.app_caps {
            cmd.arg("-app-caps").arg(c.to_string());
        }
        for (host, tags) in &opts.tags {
            cmd.arg("-tag").arg(format!("{host}={}", tags.join(",")));
        }
        if std::env::var_os("TAILPASS_TEST_CONTROL_LOGS").is_some() {
            cmd.arg("-v");
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the testnet helper");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("reading testnet ready line");
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("testnet said {line:?}: {e}"));
        TestNet {
            control_url: ready["control_url"].as_str().unwrap().to_string(),
            magic_dns: ready["magic_dns_domain"].as_str().unwrap().to_string(),
            child: Mutex::new(child),
            stdin: Mutex::new(Some(stdin)),
            stdout: Mutex::new(stdout),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A node config pointing at this tailnet, with its own state dir.
    /// `TAILPASS_TAILNET_DATA_PATH=socketpair` runs it (and any tailpass
    /// binary a test starts) on the socketpair data path.
    pub fn node_config(&self, hostname: &str) -> NodeConfig {
        let mut c = NodeConfig::new(hostname, self.dir.path().join(hostname));
        c.control_url = Some(self.control_url.clone());
        c.ephemeral = true;
        if std::env::var_os("TAILPASS_TEST_TSNET_LOGS").is_some() {
            let fd = std::io::stderr().as_fd_owned();
            c.logs = LogSink::Fd(fd);
        }
        c
    }

    /// Joins a node and waits until it is up.
    pub async fn node(&self, hostname: &str) -> Node {
        self.join(self.node_config(hostname)).await
    }

    /// Joins a node from a config and waits until it is up.
    pub async fn join(&self, config: NodeConfig) -> Node {
        let name = config.hostname.clone();
        let node = Node::new(config).unwrap();
        node.up(UP_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("node {name} did not come up: {e}"));
        node
    }

    /// Waits until every node has every other one in its netmap, so a dial
    /// does not race the netmap update (its SYNs would be dropped and TCP's
    /// back-off makes the connect slow).
    pub async fn settle(&self, nodes: &[&Node]) {
        let deadline = std::time::Instant::now() + UP_TIMEOUT;
        for n in nodes {
            loop {
                let st = n.status().await.unwrap();
                let missing: Vec<_> = nodes
                    .iter()
                    .filter(|o| o.hostname() != n.hostname())
                    .filter(|o| st.peer(o.hostname()).is_none())
                    .map(|o| o.hostname().to_string())
                    .collect();
                if missing.is_empty() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} never saw {missing:?}",
                    n.hostname()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The helper process's id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// The FQDN of a host on this tailnet.
    pub fn fqdn(&self, host: &str) -> String {
        format!("{host}.{}", self.magic_dns)
    }

    /// Sends one command to the helper and returns its answer.
    pub fn command(&self, cmd: serde_json::Value) -> serde_json::Value {
        let mut stdin = self.stdin.lock().unwrap();
        let stdin = stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.lock().unwrap().read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "testnet command {cmd} failed: {v}");
        v
    }

    /// Sets a node's tags at the control server and pushes new netmaps.
    pub fn set_tags(&self, host: &str, tags: &[&str]) {
        self.command(serde_json::json!({"op": "set_tags", "host": host, "tags": tags}));
    }
}

trait StderrFd {
    fn as_fd_owned(&self) -> std::os::fd::OwnedFd;
}

impl StderrFd for std::io::Stderr {
    fn as_fd_owned(&self) -> std::os::fd::OwnedFd {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned().unwrap()
    }
}

/// Opens a Funnel connection to `target` (a node's host name) the way
/// Tailscale's ingress nodes do: `relay` (any node; the test control server
/// grants all of them the ingress capability) POSTs /v0/ingress to the
/// target's peerAPI, naming the public source address and target. The
/// returned stream then carries the public client's bytes.
pub async fn funnel_dial(
    net: &TestNet,
    relay: &Node,
    target: &str,
    public_src: &str,
) -> tailpass::tailnet::TailnetStream {
    try_funnel_dial(net, relay, target, public_src)
        .await
        .unwrap_or_else(|| {
            panic!(
                "Funnel ingress from {} to {target} failed",
                relay.hostname()
            )
        })
}

/// Like [`funnel_dial`], `None` if the ingress fails.
pub async fn try_funnel_dial(
    net: &TestNet,
    relay: &Node,
    target: &str,
    public_src: &str,
) -> Option<tailpass::tailnet::TailnetStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let st = relay.status().await.ok()?;
    let peer_api = st
        .peer(target)?
        .peer_api
        .iter()
        .find_map(|u| u.strip_prefix("http://").filter(|h| !h.starts_with('[')))?
        .to_string();
    let mut c = relay.dial(&peer_api).await.ok()?;
    let req = format!(
        "POST /v0/ingress HTTP/1.1\r\nHost: {peer_api}\r\n\
         Tailscale-Ingress-Src: {public_src}\r\n\
         Tailscale-Ingress-Target: {}:443\r\nContent-Length: 0\r\n\r\n",
        net.fqdn(target)
    );
    c.write_all(req.as_bytes()).await.ok()?;
    // Read the response head byte by byte: what follows belongs to the
    // tunnelled connection.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.ok()?;
        head.push(b[0]);
    }
    head.starts_with(b"HTTP/1.1 101").then_some(c)
}
