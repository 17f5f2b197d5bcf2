//! Portal benchmark: what a login session costs per request, in one run,
//! reported as ratios against a baseline from the same run. Asserts nothing
//! about time.
//!
//!     cargo bench --bench portal
//!     TAILPASS_BENCH_SECS=5 TAILPASS_BENCH_CONNS=8 TAILPASS_BENCH_OPS=200000 TAILPASS_BENCH_ROUNDS=3 cargo bench --bench portal
//!
//! - decision (in-process): a login route's whole session check — cookie
//!   JWT verification (HS256), binding check, store lookup, roles from
//!   rules, policy — against the decision of a tailnet-only route (WhoIs
//!   identity, no session), with the embedded file store and with a real
//!   `redis-server` on 127.0.0.1 (one round trip and an AES-GCM open per
//!   check);
//! - end to end over the test tailnet (seed stack: real provider, login
//!   done once): GET on a login route with the session cookie against GET
//!   on a tailnet-only route to the same upstream, once with the file
//!   store and once with Redis;
//! - the cost of an identity assertion (ES256, `assertion = true`) end to
//!   end: the tailnet-only route against the same route signing one per
//!   request (the signature alone: `cargo test --release --lib
//!   cost_per_assertion -- --ignored --nocapture`).
//!
//! Without redis-server the Redis figures are skipped (said loudly).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tailpass::config::Config;
use tailpass::identity::PeerIdentity;
use tailpass::policy::{self, Caller};
use tailpass::session::{Binding, Keys, Record, SessionCookie, Store, now};
use tailpass::tailnet::WhoIs;
use tailpass_testkit::browser::Browser;
use tailpass_testkit::client::H1;
use tailpass_testkit::env_num;
use tailpass_testkit::redis::{self, RedisServer};
use tailpass_testkit::stack::{Seed, SeedOptions};

const CFG: &str = r#"
[[node]]
hostname = "gw"
state_dir = "/tmp/unused"
[[provider]]
name = "p"
issuer = "https://auth.example.ts.net"
client_id = "c"
[[rule]]
roles = ["admin"]
groups = ["admins"]
[[rule]]
roles = ["user"]
domains = ["example.com"]
[[route]]
path = "/plain"
upstream = "http://127.0.0.1:1"
allow_users = ["alice@example.com"]
[[route]]
path = "/app"
upstream = "http://127.0.0.1:1"
roles = ["admin"]
"#;

/// Warms up, then times `$body` (which may `.await`) `$ops` times; ns/op.
macro_rules! per_op {
    ($ops:expr, $body:block) => {{
        for _ in 0..$ops / 10 $body
        let t = Instant::now();
        for _ in 0..$ops $body
        t.elapsed().as_nanos() as f64 / $ops as f64
    }};
}

/// ns/op of a tailnet-only decision and of a login route's whole session
/// check, with the store `store_url` names (`None`: the file store).
async fn decision_bench(ops: u64, store_url: Option<&str>) -> (f64, f64) {
    let secret = "x".repeat(48);
    let dir = tempfile::tempdir().unwrap();
    let cfg = match store_url {
        None => format!(
            "{CFG}[portal]\nstate_dir = {:?}\nsession_secret = {{ env = \"S\" }}\n",
            dir.path()
        ),
        Some(u) => format!(
            "{CFG}[portal]\nsession_secret = {{ env = \"S\" }}\nstate_dir = {:?}\n[sessions]\nstore = {u:?}\n",
            dir.path()
        ),
    };
    let c = Config::parse(&cfg, &|_| Some(secret.clone())).unwrap();
    let pt = c.portal.as_ref().unwrap();
    let keys = Keys::new(&pt.session_secret, &[]).unwrap();
    let store = Store::for_portal(pt).unwrap();
    let j = serde_json::json!({
        "Node": {"StableID": "nStable1", "Name": "laptop.ts.net.", "Tags": []},
        "UserProfile": {"ID": 1, "LoginName": "alice@example.com", "DisplayName": "Alice"},
    });
    let who = PeerIdentity::tailnet(
        "100.64.0.9:1234".parse().unwrap(),
        WhoIs::from_json(&j.to_string()).unwrap(),
    );
    let binding = Binding::of(&who).unwrap();
    let t = now();
    let mut claims = BTreeMap::new();
    claims.insert("email".to_string(), serde_json::json!("alice@example.com"));
    claims.insert("groups".to_string(), serde_json::json!(["admins", "users"]));
    store
        .put(
            "sid1",
            Record {
                provider: "p".into(),
                sub: "alice".into(),
                binding: binding.clone(),
                claims,
                id_token: "h.p.s".into(),
                refresh_token: None,
                created: t,
                auth_time: Some(t),
                expires: t + 3600,
                refreshed: t,
            },
        )
        .await
        .unwrap();
    let cookie = keys.sign(&SessionCookie {
        sid: "sid1".into(),
        node: binding.node.clone(),
        usr: binding.user.clone(),
        iat: t,
        exp: t + 3600,
    });
    let (plain, app) = (&c.routes[0], &c.routes[1]);
    let no_roles = Default::default();
    let base = per_op!(ops, {
        let d = policy::evaluate(
            plain,
            &http::Method::GET,
            &Caller {
                who: &who,
                session: None,
                roles: &no_roles,
                now: t,
            },
        );
        assert!(matches!(d, policy::Decision::Allow(_)));
    });
    let with_session = per_op!(ops, {
        let b = Binding::of(&who).unwrap();
        let ck = keys.verify(&cookie, &b, t).unwrap();
        let rec = store.get(&ck.sid, t).await.unwrap().unwrap();
        assert!(rec.binding == b);
        let s = rec.into_session(&ck.sid);
        let roles = policy::roles(&c.rules, &who, Some(&s));
        let d = policy::evaluate(
            app,
            &http::Method::GET,
            &Caller {
                who: &who,
                session: Some(&s),
                roles: &roles,
                now: t,
            },
        );
        assert!(matches!(d, policy::Decision::Allow(_)));
    });
    (base, with_session)
}

async fn load(
    node: &tailpass::tailnet::Node,
    host: &str,
    ca: &str,
    path: &str,
    cookie: Option<&str>,
    conns: usize,
    secs: u64,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut h = H1::connect(node, host, ca).await;
        let (host, path) = (host.to_string(), path.to_string());
        let cookie = cookie.map(|c| format!("tailpass_session={c}"));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let hdrs: Vec<(&str, &str)> =
                    cookie.iter().map(|c| ("cookie", c.as_str())).collect();
                let r = h.get(&host, &path, &hdrs).await;
                assert_eq!(r.status(), 200, "{path}");
                n += 1;
            }
            n
        }));
    }
    let t0 = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

/// Requests per second on a login route with the session cookie and on a
/// tailnet-only route (same upstream) through a fresh seed stack whose
/// gateway keeps sessions in `store_url` (`None`: the file store).
async fn end_to_end(store_url: Option<&str>, conns: usize, secs: u64) -> (f64, f64, f64) {
    let mut extra = "[[route]]\nnode = \"gw\"\npath = \"/plain\"\nupstream = \"http://{echo}\"\n\
        [[route]]\nnode = \"gw\"\npath = \"/signed\"\nupstream = \"http://{echo}\"\nassertion = true\n"
        .to_string();
    if let Some(u) = store_url {
        extra.push_str(&format!("[sessions]\nstore = {u:?}\n"));
    }
    let seed = Seed::start(SeedOptions {
        auto_login: Some("alice".into()),
        extra,
        ..Default::default()
    })
    .await;
    let laptop = seed.client("laptop").await;
    let mut b = Browser::new(&laptop, &seed.ca);
    let end = b
        .follow(&seed.url("/auth/oauth2/pocketid/authorize?rd=%2Fapp%2F"))
        .await;
    assert_eq!(end.status, 200);
    let cookie = b.cookie(&seed.gw_host, "tailpass_session").unwrap();
    let (gw, ca) = (&seed.gw_host, &seed.ca);
    // Interleaved rounds, the order rotating, so drift on a shared machine
    // falls on every path alike; the sums give the rates.
    let rounds = env_num("TAILPASS_BENCH_ROUNDS", 3) as usize;
    let paths = [
        ("/app/bench", Some(cookie.as_str())),
        ("/plain/bench", None),
        ("/signed/bench", None),
    ];
    let mut rates = [0.0f64; 3];
    for round in 0..rounds {
        for k in 0..3 {
            let i = (round + k) % 3;
            let (path, cookie) = paths[i];
            rates[i] += load(&laptop, gw, ca, path, cookie, conns, secs).await / rounds as f64;
        }
    }
    std::mem::forget(seed);
    (rates[0], rates[1], rates[2])
}

async fn run() {
    let ops = env_num("TAILPASS_BENCH_OPS", 200_000);
    let secs = env_num("TAILPASS_BENCH_SECS", 5);
    let conns = env_num("TAILPASS_BENCH_CONNS", 8) as usize;
    let redis =
        redis::available("the Redis figures of the portal bench").then(|| RedisServer::start(None));
    let redis_url = redis.as_ref().map(|r| r.url());

    println!("portal benchmark");
    let (base, sess) = decision_bench(ops, None).await;
    println!(
        "decision ({ops} ops), file store: tailnet-only route {base:.0} ns/op, login route with session check {sess:.0} ns/op, ratio {:.1}",
        sess / base
    );
    if let Some(u) = &redis_url {
        let (base_r, sess_r) = decision_bench(ops / 10, Some(u)).await;
        println!(
            "decision ({} ops), Redis store: tailnet-only route {base_r:.0} ns/op, login route with session check {sess_r:.0} ns/op, ratio {:.1}; Redis check / file check {:.1}",
            ops / 10,
            sess_r / base_r,
            sess_r / sess
        );
    }
    let (with, without, signed) = end_to_end(None, conns, secs).await;
    println!(
        "tailnet, file store ({conns} connections x {secs} s, same echo upstream): login route with session \
         {with:.0} req/s, tailnet-only route {without:.0} req/s, ratio {:.2}",
        with / without
    );
    println!(
        "tailnet: tailnet-only route with a signed assertion {signed:.0} req/s, ratio to without {:.2}",
        signed / without
    );
    if let Some(u) = &redis_url {
        let (with_r, without_r, _) = end_to_end(Some(u), conns, secs).await;
        println!(
            "tailnet, Redis store: login route with session {with_r:.0} req/s, tailnet-only route \
             {without_r:.0} req/s, ratio {:.2}; against the file store's ratio {:.2} \
             (each stack against its own tailnet-only route; raw Redis/file {:.2})",
            with_r / without_r,
            (with_r / without_r) / (with / without),
            with_r / with
        );
    }
    drop(redis);
}

fn main() {
    tailpass_testkit::bench_main(run());
}
