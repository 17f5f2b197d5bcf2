//! The test identity provider: `tests/idp/idp.mjs`, a real OpenID Provider
//! (the certified `oidc-provider` npm package) on 127.0.0.1, with test-control
//! endpoints under `/test/`. See tests/idp/README.md for its config and
//! endpoints.
//!
//! `Idp::start` runs `npm ci` in tests/idp once per process when its
//! node_modules is missing or older than package-lock.json, then starts the
//! IdP and waits for its ready line. The IdP exits when its stdin closes, so
//! it cannot outlive the test process; `Drop` closes stdin, then kills it.
//!
//! Set `TAILPASS_TEST_IDP_LOGS=1` to see the IdP's stderr as it runs; the
//! last lines are always kept ([`Idp::stderr_tail`]) and shown when it fails
//! to start. `NODE` and `NPM` name other node/npm commands.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

use crate::client::H1;

/// How long the IdP may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Stderr lines kept for failure messages.
const TAIL_LINES: usize = 60;

/// A running test IdP.
pub struct Idp {
    /// The issuer (from the config, else `http://127.0.0.1:<port>`).
    pub issuer: String,
    /// Where it listens (always 127.0.0.1).
    pub addr: SocketAddr,
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// tests/idp in this repository.
pub fn idp_dir() -> PathBuf {
    crate::repo_root().join("tests/idp")
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Whether tests/idp/node_modules is missing or older than the lock file.
fn needs_install(dir: &Path) -> bool {
    // npm ci and npm install write this file last.
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    let lock = modified(&dir.join("package-lock.json"));
    match (installed, lock) {
        (None, _) => true,
        (Some(i), Some(l)) => i < l,
        (Some(_), None) => false,
    }
}

/// Runs `npm ci` in tests/idp if needed, once per process; a file lock keeps
/// parallel test processes (nextest) from running it at the same time.
pub fn ensure_node_modules() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let dir = idp_dir();
    if needs_install(&dir) {
        let lock_path = crate::target_tmp().join("idp-npm-ci.lock");
        let lock = std::fs::File::create(&lock_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", lock_path.display()));
        lock.lock().unwrap();
        if needs_install(&dir) {
            let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
            let out = Command::new(&npm)
                .current_dir(&dir)
                .args(["ci", "--no-audit", "--no-fund"])
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "running `{npm} ci` in {} (is Node installed?): {e}",
                        dir.display()
                    )
                });
            assert!(
                out.status.success(),
                "`{npm} ci` in {} failed ({}):\n{}\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = lock.unlock();
    }
    *done = true;
}

impl Idp {
    /// Runs `npm ci` in tests/idp once per process if its node_modules is
    /// missing, then starts the IdP with `config` (see tests/idp/README.md)
    /// and waits for its ready line.
    pub fn start(config: serde_json::Value) -> Idp {
        ensure_node_modules();
        let dir = idp_dir();
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(&node)
            .current_dir(&dir)
            .arg(dir.join("idp.mjs"))
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting `{node} tests/idp/idp.mjs` (is Node installed?): {e}")
            });
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();

        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let echo = std::env::var_os("TAILPASS_TEST_IDP_LOGS").is_some();
        {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if echo {
                        eprintln!("[idp] {line}");
                    }
                    let mut t = tail.lock().unwrap();
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        // Stdout: the ready line, then nothing; keep draining it anyway.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });

        let fail = |what: String, mut child: Child| -> ! {
            let _ = child.kill();
            let _ = child.wait();
            // Let the stderr reader catch up with what the IdP said last.
            std::thread::sleep(Duration::from_millis(100));
            let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
            panic!(
                "test IdP {what}; its stderr ends with:\n{}",
                tail.join("\n")
            );
        };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => fail("exited before it was ready".into(), child),
            Err(_) => fail(format!("not ready within {READY_TIMEOUT:?}"), child),
        };
        let ready: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => fail(
                format!("printed {line:?} ({e}) instead of its ready line"),
                child,
            ),
        };
        let (Some(issuer), Some(port)) = (ready["issuer"].as_str(), ready["port"].as_u64()) else {
            fail(format!("printed {line:?} instead of its ready line"), child)
        };
        Idp {
            issuer: issuer.to_string(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port as u16)),
            child: Mutex::new(child),
            stdin: Mutex::new(Some(stdin)),
            tail,
        }
    }

    /// The last lines the IdP wrote to stderr (errors it logged).
    pub fn stderr_tail(&self) -> String {
        let t = self.tail.lock().unwrap();
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// `http://127.0.0.1:<port>`: the IdP reached directly.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new HTTP/1.1 connection to the IdP.
    pub async fn connect(&self) -> H1 {
        let s = tokio::net::TcpStream::connect(self.addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test IdP at {}: {e}", self.addr));
        H1::over(s).await
    }

    /// One control request on a fresh connection; panics unless it answers 200.
    async fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Response<Bytes> {
        let mut h = self.connect().await;
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let resp = h.request(b.body(Full::new(body)).unwrap()).await;
        assert_eq!(
            resp.status(),
            200,
            "test IdP {method} {path}: {}\nstderr:\n{}",
            String::from_utf8_lossy(resp.body()),
            self.stderr_tail()
        );
        resp
    }

    /// The provider process's id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Everything recorded so far, in order: `authorize`, `token`,
    /// `userinfo`, `end_session` and `end_session_confirm` events.
    pub async fn events(&self) -> Vec<serde_json::Value> {
        let resp = self.control("GET", "/test/events", None).await;
        serde_json::from_slice(resp.body()).unwrap()
    }

    /// The recorded events of one kind, in order.
    pub async fn events_of(&self, kind: &str) -> Vec<serde_json::Value> {
        let mut v = self.events().await;
        v.retain(|e| e["kind"] == kind);
        v
    }

    /// Destroys every grant, session, code, access and refresh token of
    /// `login`: a later refresh_token grant fails with `invalid_grant` and the
    /// next authorization request needs a new login.
    pub async fn revoke(&self, login: &str) {
        self.control(
            "POST",
            "/test/revoke",
            Some(serde_json::json!({ "login": login })),
        )
        .await;
    }

    /// Makes every login interaction complete at once as `login` (`None`:
    /// show the login form unless the request has a known `login_hint`).
    pub async fn set_auto_login(&self, login: Option<&str>) {
        self.control(
            "POST",
            "/test/auto-login",
            Some(serde_json::json!({ "login": login })),
        )
        .await;
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        crate::stop_child(
            stdin,
            &mut self.child.lock().unwrap_or_else(|e| e.into_inner()),
        );
    }
}
