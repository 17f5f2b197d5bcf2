//! The shipped binary as a child process on the test tailnet, its stderr
//! (JSON logs) collected.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `tailpass` binary Cargo built beside the running test or bench
/// (`CARGO_BIN_EXE_tailpass` when set at run time, else
/// `<target>/<profile>/tailpass`). Cargo builds it for the root package's
/// integration tests and benches; the demo example never needs it.
pub fn path() -> std::path::PathBuf {
    let bin = match std::env::var_os("CARGO_BIN_EXE_tailpass") {
        Some(b) => std::path::PathBuf::from(b),
        None => crate::profile_dir().join("tailpass"),
    };
    assert!(
        bin.is_file(),
        "{} is missing (Cargo builds it for the tailpass package's tests and benches)",
        bin.display()
    );
    bin
}

/// The binary as a child process, its stderr collected.
pub struct Tailpass {
    /// The process.
    pub child: Child,
    logs: Arc<Mutex<String>>,
}

impl Tailpass {
    /// `tailpass run` with `config`, JSON logs at info.
    pub fn start(config: &std::path::Path) -> Tailpass {
        Self::start_limited(config, None)
    }

    /// Like [`Tailpass::start`], with soft and hard `RLIMIT_NOFILE` set
    /// to `fd_limit` (through util-linux `prlimit`).
    pub fn start_limited(config: &std::path::Path, fd_limit: Option<u64>) -> Tailpass {
        let bin = path();
        let mut cmd = match fd_limit {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The same loopback-only tsnet settings the in-process tests use.
        for (k, v) in crate::TSNET_TEST_KNOBS {
            cmd.env(k, v);
        }
        cmd.env("TAILPASS_LOG", "info");
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (l, err) = (logs.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var_os("TAILPASS_TEST_BIN_LOGS").is_some() {
                    eprintln!("tailpass: {line}");
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Tailpass { child, logs }
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Sends a signal (`HUP`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) {
        let t = Instant::now();
        while !self.logs().contains(needle) {
            assert!(
                t.elapsed() < limit,
                "no {needle:?} in the log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tailpass {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on the admin listener: status and body, `None` if the
/// connection cannot be made or breaks (bounded in time).
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        crate::client::H1::try_over(s)
            .await?
            .try_get("admin", path)
            .await
    })
    .await
    .ok()??;
    Some((
        r.status().as_u16(),
        String::from_utf8_lossy(r.body()).into_owned(),
    ))
}

impl Tailpass {
    /// Waits until `/healthz` on `admin` answers 200; returns its JSON.
    pub async fn wait_healthy(&self, admin: std::net::SocketAddr) -> serde_json::Value {
        let t = Instant::now();
        loop {
            if let Some((200, body)) = admin_get(admin, "/healthz").await {
                return serde_json::from_str(&body).unwrap();
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "never healthy:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
