//! The one-command demo (`cargo run --example demo`) starts, a scripted
//! client completes a login through its loopback entry proxy (like a
//! browser configured with that proxy), and Ctrl-C leaves nothing running.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tailpass_testkit::browser::{Browser, resolve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_serves_a_login_and_stops_clean() {
    let _permit = tailpass_testkit::heavy().await;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tailpass"))
        .parent()
        .unwrap()
        .join("examples/demo");
    assert!(
        bin.is_file(),
        "{} (cargo test builds examples)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .args(["--json", "--proxy-port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("demo said {line:?}: {e}"));
    let proxy = info["proxy"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let ca = std::fs::read_to_string(info["ca_file"].as_str().unwrap()).unwrap();
    let start = info["start"].as_str().unwrap().to_string();

    // A browser through the demo laptop's proxy: page → portal → provider's
    // form → back on the page.
    let mut b = Browser::via_proxy(proxy, &ca);
    let login = b.follow(&start).await;
    assert!(login.url.contains("/auth/login?rd="), "{}", login.url);
    let href = login
        .body
        .split("href=\"")
        .find(|h| h.starts_with("/auth/oauth2/pocketid/authorize"))
        .map(|h| h[..h.find('"').unwrap()].replace("&amp;", "&"))
        .expect("provider button");
    let form_page = b.follow(&resolve(&login.url, &href)).await;
    assert!(
        form_page.body.contains(r#"id="login""#),
        "{}",
        form_page.body
    );
    let start_tag = form_page.body.find("<form id=\"login-form\"").unwrap();
    let action = tailpass_testkit::browser::attr(&form_page.body[start_tag..], "action").unwrap();
    let page = b
        .post_form(&resolve(&form_page.url, &action), &[("login", "alice")])
        .await;
    assert_eq!(page.url, start, "visited {:#?}", b.visited);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("ws page"), "{}", page.body);

    // Ctrl-C: the demo and its helper processes are gone.
    let pids: Vec<u32> = info["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "demo did not stop on Ctrl-C"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    for p in pids {
        let t = Instant::now();
        while std::path::Path::new(&format!("/proc/{p}")).exists() {
            // A zombie is not running; only a live process counts.
            let st = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            if st.split_whitespace().nth(2) == Some("Z") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "helper {p} still running"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        std::net::TcpStream::connect(proxy).is_err(),
        "the entry proxy still listens"
    );
}

/// `--help` is not an error (it was exit 64); a bad argument is, without a
/// panic.
#[test]
fn demo_help_and_bad_arguments() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tailpass"))
        .parent()
        .unwrap()
        .join("examples/demo");
    let out = Command::new(&bin).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--proxy-port N"));
    for bad in [
        &["--nope"][..],
        &["--proxy-port", "x"][..],
        &["--proxy-port"][..],
    ] {
        let out = Command::new(&bin).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("usage:") && !err.contains("panicked"),
            "{bad:?}: {err}"
        );
    }
}
