//! The public listener gets its certificate from a real ACME server: Pebble,
//! Let's Encrypt's test ACME server (built with `go install`, pinned), with
//! its companion DNS server answering 127.0.0.1 for every name. Pebble
//! validates us with TLS-ALPN-01 on the public listener itself.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tailpass::config::Config;
use tailpass::server::{Gateway, Options};
use tailpass::tls::LocalCa;
use tailpass_testkit::client::H1;
use tailpass_testkit::{ConfigBuilder, NodeSpec, RouteSpec, Section, TestNet, free_port};

const PEBBLE: &str = "github.com/letsencrypt/pebble/v2/cmd/pebble@v2.10.3";
const CHALLTESTSRV: &str = "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@v2.10.3";

fn go_install(pkg: &str, name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pebble-bin");
    let status = Command::new(std::env::var("GO").unwrap_or_else(|_| "go".into()))
        .env("GOBIN", &dir)
        .env("GOFLAGS", "-trimpath")
        .args(["install", pkg])
        .status()
        .expect("go install (is Go installed?)");
    assert!(status.success(), "go install {pkg}");
    dir.join(name)
}

/// `TAILPASS_TEST_ACME_LOGS=1` shows Pebble's and tailpass's logs.
fn verbose() -> bool {
    std::env::var_os("TAILPASS_TEST_ACME_LOGS").is_some()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_listener_gets_a_certificate_from_pebble_and_serves_public_routes_only() {
    if verbose() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,rustls_acme=debug")
            .try_init();
    }
    let pebble = go_install(PEBBLE, "pebble");
    let chall = go_install(CHALLTESTSRV, "pebble-challtestsrv");
    let dir = tempfile::tempdir().unwrap();

    // Pebble's own API certificate, from a local CA the ACME client trusts.
    let ca = LocalCa::open_or_create(&dir.path().join("api-ca")).unwrap();
    let (c, k) = ca
        .issue(&["localhost".into()], Duration::from_secs(3600))
        .unwrap();
    std::fs::write(dir.path().join("api.pem"), c).unwrap();
    std::fs::write(dir.path().join("api-key.pem"), k).unwrap();

    let (dns, mgmt_chall, api, mgmt, tls_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _chall = Kill(
        Command::new(chall)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""])
            .args(["-management", &format!("127.0.0.1:{mgmt_chall}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cfg = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{api}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": dir.path().join("api.pem"),
        "privateKey": dir.path().join("api-key.pem"),
        "httpPort": free_port(),
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    std::fs::write(dir.path().join("pebble.json"), cfg.to_string()).unwrap();
    let _pebble = Kill(
        Command::new(pebble)
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(if verbose() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(if verbose() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap(),
    );
    wait_port(mgmt_chall);
    wait_port(api);
    wait_port(mgmt);

    let net = TestNet::start();
    let echo = tailpass_testkit::upstream::start_echo().await;
    let echo = format!("http://{echo}");
    let toml = ConfigBuilder::new()
        .node(NodeSpec::on(&net, "gw", dir.path().join("gw")).cert("local-ca"))
        .section(
            Section::new("public")
                .set("listen", format!("127.0.0.1:{tls_port}"))
                .list("domains", &["blog.tailpass.test"])
                .set("acme_directory", format!("https://localhost:{api}/dir"))
                .list("acme_contact", &["mailto:ops@tailpass.test"])
                .path("acme_cache_dir", dir.path().join("acme"))
                .path("acme_ca_file", dir.path().join("api-ca/ca.pem")),
        )
        .route(RouteSpec::new("/", &echo).access("public"))
        .route(RouteSpec::new("/admin", &echo))
        .build();
    let gw = Gateway::start(Config::parse(&toml, &|_| None).unwrap(), Options::default())
        .await
        .unwrap();
    assert_eq!(gw.public.unwrap().port(), tls_port);

    // Pebble's issuing root, from its management API.
    let api_ca = std::fs::read_to_string(dir.path().join("api-ca/ca.pem")).unwrap();
    let roots_pem = {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", mgmt))
            .await
            .unwrap();
        let tls =
            tailpass_testkit::client::tls_over(tcp, "localhost", &api_ca, &[b"http/1.1"]).await;
        let r = H1::over(tls).await.get("localhost", "/roots/0", &[]).await;
        String::from_utf8(r.into_body().to_vec()).unwrap()
    };

    // Until the order completes, handshakes fail; then the issued chain
    // verifies against Pebble's root for our domain.
    let deadline = Instant::now() + Duration::from_secs(90);
    let tls = loop {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .unwrap();
        match tokio_rustls::TlsConnector::from(tailpass_testkit::client::tls_config(
            &roots_pem,
            &[b"http/1.1"],
        ))
        .connect(ServerName::try_from("blog.tailpass.test").unwrap(), tcp)
        .await
        {
            Ok(t) => break t,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no ACME certificate in time: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut h = H1::over(tls).await;
    let mut get = async |p: &str| {
        let r = h
            .get(
                "blog.tailpass.test",
                p,
                &[("Tailscale-User-Login", "root@evil")],
            )
            .await;
        (r.status(), r.into_body())
    };
    let (st, body) = get("/post/1").await;
    assert_eq!(st, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(j["headers"]["tailscale-user-login"].is_null(), "{j}");
    assert_eq!(j["headers"]["x-forwarded-proto"][0], "https");
    // A tailnet route does not exist on the public listener.
    assert_eq!(get("/admin").await.0, 404);
    // The certificate was cached for the next start.
    assert!(std::fs::read_dir(dir.path().join("acme")).unwrap().count() > 0);
    gw.shutdown().await;
}
