//! tailpass-testkit: what the integration tests, the benches and the local
//! demo share (dev-only, never published). Nothing here is part of the
//! product; the product crate does not depend on it.
//!
//! Map:
//!
//! - [`TestNet`] (`net`): the offline test tailnet (tailscale's test
//!   control server and DERP on 127.0.0.1), Funnel ingress as Tailscale's
//!   relays do it ([`funnel_dial`]), and the loopback-only tsnet settings.
//! - [`config`]: a typed builder for tailpass config files
//!   ([`ConfigBuilder`], [`NodeSpec`], [`RouteSpec`] …), so no test writes
//!   `[[node]]` TOML by hand.
//! - [`stack`]: the seed topology (test tailnet, OIDC provider behind the
//!   `auth` node, gateway `gw` with the portal) started whole, for the
//!   browser tests, the portal bench and the demo.
//! - [`idp`]: the development OIDC provider (`oidc-provider`, tests/idp);
//!   [`forge`]: a deliberately forging provider for negative tests;
//!   [`pocket_id`]: the real Pocket ID server, built from source.
//! - [`redis`]: a real `redis-server` for the shared session store.
//! - [`upstream`]: echo, websocket and other upstream servers;
//!   [`client`]: HTTP/1 and TLS clients over tailnet streams;
//!   [`browser`]: a scripted cookie-keeping browser; [`chrome`]: headless
//!   Chromium driving tests/browser/*.mjs.
//! - [`binary`]: the shipped `tailpass` binary as a child process;
//!   [`logs`]: capture this process's log lines.
//! - [`entry`]: a loopback HTTP proxy that carries a local browser into the
//!   tailnet through a node (the demo and the browser tests).
//!
//! Below: paths, ports, child processes, and the permits that keep a
//! 2-core machine from running every tailnet test at once.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::time::Duration;

pub mod binary;
pub mod browser;
pub mod chrome;
pub mod client;
pub mod config;
pub mod entry;
pub mod forge;
pub mod idp;
pub mod logs;
mod net;
pub mod pocket_id;
pub mod redis;
pub mod stack;
pub mod upstream;

pub use config::{
    ConfigBuilder, NodeSpec, PortalSpec, ProviderSpec, RouteSpec, RuleSpec, Secret, Section,
};
pub use net::{
    TSNET_TEST_KNOBS, TestNet, TestNetOptions, funnel_dial, go_program, init_process_for_tests,
    try_funnel_dial,
};

/// The repository's root (the tailpass package: vendor/tsshim, tests/idp,
/// tests/browser, scripts/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testkit lies two levels below the repository root")
        .to_path_buf()
}

/// The directory of the running test, bench or example binary's build:
/// `<target>/<profile>/deps/NAME` and `<target>/<profile>/examples/NAME`
/// both give `<target>/<profile>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this executable");
    exe.ancestors()
        .nth(2)
        .expect("executables lie in <target>/<profile>/<kind>/")
        .to_path_buf()
}

/// `<target>/tmp`, the directory Cargo gives tests and benches as
/// `CARGO_TARGET_TMPDIR` (a library cannot read that variable, so it is
/// found from this executable's path; the demo example gets the same).
pub fn target_tmp() -> PathBuf {
    let dir = match std::env::var_os("CARGO_TARGET_TMPDIR") {
        Some(d) => PathBuf::from(d),
        None => profile_dir()
            .parent()
            .expect("a profile directory lies in the target directory")
            .join("tmp"),
    };
    std::fs::create_dir_all(&dir).expect("creating the target's tmp directory");
    dir
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops a helper process that exits when its stdin closes: closes stdin,
/// gives it a second, then kills it.
pub fn stop_child(stdin: Option<ChildStdin>, child: &mut Child) {
    drop(stdin);
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a benchmark's async body on a 2-thread runtime, then exits the
/// process without closing nodes (tsnet's Close is slow with many
/// endpoints; see docs/tailnet.md).
pub fn bench_main<F: std::future::Future<Output = ()>>(body: F) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(body);
    std::process::exit(0);
}

/// How long a test node may take to join.
pub const UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits how many tailnet tests run at once in one test process: each
/// brings its own control server and several nodes, and on a 2-core machine
/// running them all at once starves timeouts. Heavy tests take all permits.
pub static CAPACITY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PERMITS);
/// Permits in [`CAPACITY`].
pub const PERMITS: usize = 3;

/// Takes one permit (a light test).
pub async fn light() -> tokio::sync::SemaphorePermit<'static> {
    CAPACITY.acquire().await.unwrap()
}

/// Takes every permit (a test that loads the machine).
pub async fn heavy() -> tokio::sync::SemaphorePermit<'static> {
    CAPACITY.acquire_many(PERMITS as u32).await.unwrap()
}

/// A number from an environment variable, else `default` (benchmarks).
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's resident memory in KiB, after the embedded Go runtime has
/// returned what it freed (benchmarks).
pub fn rss_kib() -> i64 {
    tailpass::tailnet::global::release_memory();
    std::thread::sleep(Duration::from_millis(300));
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The data path tests run on (`TAILPASS_TAILNET_DATA_PATH`).
pub fn data_path_for_tests() -> tailpass::tailnet::DataPath {
    tailpass::tailnet::DataPath::from_env()
}
