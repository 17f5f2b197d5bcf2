//! Headless Chromium (Debian's package) driven by playwright-core
//! (tests/browser/*.mjs): where it is, where screenshots go, and running
//! the script. Browser tests skip loudly when Chromium is absent, unless
//! `TAILPASS_REQUIRE_BROWSER` is set (CI sets it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Chromium: `$CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// `target/browser-artifacts/<test>/`.
pub fn artifacts_dir_path(test: &str) -> PathBuf {
    crate::target_tmp()
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .join("browser-artifacts")
        .join(test)
}

/// `target/browser-artifacts/<test>/`, emptied.
pub fn artifacts_dir(test: &str) -> PathBuf {
    let dir = artifacts_dir_path(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// tests/browser with its node_modules installed (`npm ci` if missing, once
/// per process: the browser tests run in parallel).
pub async fn browser_scripts() -> PathBuf {
    static READY: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    READY
        .get_or_init(|| async {
            let dir = crate::repo_root().join("tests/browser");
            if !dir
                .join("node_modules/playwright-core/package.json")
                .is_file()
            {
                eprintln!("tests/browser/node_modules missing: running npm ci");
                let status = tokio::process::Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&dir)
                    .status()
                    .await
                    .expect("running npm (is Node.js installed?)");
                assert!(status.success(), "npm ci --prefix tests/browser failed");
            }
            dir
        })
        .await
        .clone()
}

/// Whether the browser tests can run; false (with a loud note) when
/// Chromium is absent and TAILPASS_REQUIRE_BROWSER is not set.
pub fn browser_available(test: &str) -> bool {
    let chromium = chromium_path();
    if chromium.exists() {
        return true;
    }
    assert!(
        std::env::var_os("TAILPASS_REQUIRE_BROWSER").is_none(),
        "TAILPASS_REQUIRE_BROWSER is set but {} does not exist (apt-get install chromium)",
        chromium.display()
    );
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! SKIPPED {test}: {} not found.\n\
         !! Install it (apt-get install chromium) or set CHROMIUM=/path;\n\
         !! set TAILPASS_REQUIRE_BROWSER=1 to make this a failure.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        chromium.display()
    );
    false
}

/// Runs tests/browser/login.mjs with `envs`; returns its final JSON line.
pub async fn run_login_mjs(test: &str, envs: &[(&str, String)]) -> serde_json::Value {
    run_script("login.mjs", test, envs, Duration::from_secs(300)).await
}

/// Runs the playwright script `script` of tests/browser with `envs`
/// (`ARTIFACTS` and `CHROMIUM` set) within `limit`; asserts it succeeded
/// and returns its final JSON line.
pub async fn run_script(
    script: &str,
    test: &str,
    envs: &[(&str, String)],
    limit: Duration,
) -> serde_json::Value {
    let dir = browser_scripts().await;
    let artifacts = artifacts_dir(test);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join(script))
        .current_dir(&dir)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium_path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} finished within {limit:?}"))
        .expect("running node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "{script} ({:?}, {}): artifacts in {}\n--- stderr\n{stderr}--- stdout\n{stdout}",
        t0.elapsed(),
        out.status,
        artifacts.display()
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{script} printed nothing ({})", out.status));
    let v: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{script} said {last:?}: {e}"));
    assert!(
        out.status.success() && v["ok"] == true,
        "{script} failed at step {}: {}",
        v["step"],
        v["error"].as_str().unwrap_or("?")
    );
    v
}
