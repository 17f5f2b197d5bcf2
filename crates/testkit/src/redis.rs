//! A real `redis-server` (Debian's `redis-server` package) on 127.0.0.1,
//! started by a test and killed with it, in its own directory. It persists
//! every write (append-only file, fsync always), as the deployment docs
//! configure it, so it can be killed and started again on the same port
//! with its data, as an outage does.
//!
//! When `redis-server` is not installed the test is skipped loudly, unless
//! `TAILPASS_REQUIRE_REDIS` is set (CI sets it), which makes it a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary.
pub const REDIS_SERVER: &str = "redis-server";

/// A running (or stopped) test Redis.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    password: Option<String>,
    /// Serves TLS only (`rediss://`), with a certificate for 127.0.0.1
    /// from a private CA ([`RedisServer::ca_file`]).
    tls: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Whether redis-server is installed; if not, says so loudly, and panics
/// when `TAILPASS_REQUIRE_REDIS` is set.
pub fn available(test: &str) -> bool {
    let found = Command::new(REDIS_SERVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    let required = std::env::var_os("TAILPASS_REQUIRE_REDIS").is_some_and(|v| v != "0");
    assert!(
        !required,
        "TAILPASS_REQUIRE_REDIS is set but {test} cannot run: {REDIS_SERVER} is not installed (apt-get install redis-server)"
    );
    eprintln!(
        "\n!! SKIPPED {test}: {REDIS_SERVER} is not installed (apt-get install redis-server).\n\
         !! set TAILPASS_REQUIRE_REDIS=1 to make this a failure.\n"
    );
    false
}

impl RedisServer {
    /// Starts a server on a free port, with `password` if given.
    pub fn start(password: Option<&str>) -> RedisServer {
        Self::start_with(password, false)
    }

    /// Starts a server that speaks TLS only, its certificate (for
    /// 127.0.0.1) issued by a private CA, [`RedisServer::ca_file`].
    pub fn start_tls(password: Option<&str>) -> RedisServer {
        Self::start_with(password, true)
    }

    fn start_with(password: Option<&str>, tls: bool) -> RedisServer {
        let mut r = RedisServer {
            port: crate::free_port(),
            password: password.map(str::to_string),
            tls,
            dir: tempfile::tempdir().expect("a directory for redis"),
            child: None,
        };
        if tls {
            let ca = tailpass::tls::LocalCa::open_or_create(&r.dir.path().join("ca")).unwrap();
            let (chain, key) = ca
                .issue(&["127.0.0.1".to_string()], Duration::from_secs(3600))
                .unwrap();
            std::fs::write(r.dir.path().join("cert.pem"), chain).unwrap();
            std::fs::write(r.dir.path().join("key.pem"), key).unwrap();
        }
        r.restart();
        r
    }

    /// The URL tailpass is given (`redis://127.0.0.1:PORT`, or `rediss://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The private CA of a TLS server (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca/ca.pem")
    }

    /// Its directory (the log is `redis.log` there).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Kills the server (an outage: clients see their connections drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing
    /// answers, as with a hung host.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server [`RedisServer::pause`] froze.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Starts the server (again) on the same port, with the data it had,
    /// and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args(["--bind", "127.0.0.1"]);
        if self.tls {
            let d = self.dir.path();
            cmd.args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(d.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(d.join("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(self.ca_file())
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.arg("--port").arg(self.port.to_string());
        }
        cmd.args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(self.dir.path())
        .arg("--logfile")
        .arg(self.dir.path().join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        self.child = Some(cmd.spawn().expect("starting redis-server"));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ping() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {} (log in {})",
                self.port,
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command (RESP) and returns the raw answer (bytes that are
    /// not UTF-8 replaced); `None` when the server does not answer. Plain
    /// servers only.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = String::new();
        let mut push = |parts: &[&str]| {
            req.push_str(&format!("*{}\r\n", parts.len()));
            for a in parts {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
        };
        if let Some(pw) = &self.password {
            push(&["AUTH", pw]);
        }
        push(args);
        s.write_all(req.as_bytes()).ok()?;
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    fn ping(&self) -> bool {
        if !self.tls {
            return self.command(&["PING"]).is_some_and(|o| o.contains("PONG"));
        }
        let mut cli = Command::new("redis-cli");
        cli.args(["--tls", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("--cacert")
            .arg(self.ca_file());
        if let Some(pw) = &self.password {
            cli.args(["--no-auth-warning", "-a", pw]);
        }
        cli.arg("PING")
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
