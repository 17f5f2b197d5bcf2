//! The access log: one line per request, written when the response body
//! ends or is dropped (a client that goes away is logged too), with the
//! bytes sent and the duration; the request and upstream-error metrics are
//! counted from the same [`Answer`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use hyper::body::{Frame, SizeHint};

use super::outcome::Answer;
use crate::http::response::Body;
use crate::identity::PeerIdentity;
use crate::metrics::Metrics;

/// What the line says besides the answer.
pub(crate) struct AccessLog {
    /// The node that took the request (`None`: loopback or public).
    pub(crate) node: Option<String>,
    pub(crate) who: Arc<PeerIdentity>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) seen: Seen,
    pub(crate) start: Instant,
    pub(crate) metrics: Option<Arc<Metrics>>,
}

/// What the pipeline learned for the log and metrics, besides the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The route for the log: `route[2] /term`, `portal` or `-`.
    pub(crate) route: String,
    /// The route for metrics: its path (with its host when it has one), so
    /// reordering the file keeps dashboards; `portal` or `-`.
    pub(crate) label: String,
    /// Who is signed in (the login's email, else its subject), if anyone.
    pub(crate) login: Option<String>,
}

impl Seen {
    /// No route was matched (or the path was refused before routing).
    pub(crate) fn nothing() -> Seen {
        Seen::named("-")
    }

    /// The portal, or another fixed name.
    pub(crate) fn named(name: &str) -> Seen {
        Seen {
            route: name.into(),
            label: name.into(),
            login: None,
        }
    }
}

impl AccessLog {
    /// The node label: the node's name, or the listener kind.
    fn node_label(&self) -> &str {
        match (&self.node, &*self.who) {
            (Some(n), _) => n,
            (None, PeerIdentity::Internet { .. }) => "public",
            (None, _) => "loopback",
        }
    }
}

/// One finished line: the request's facts and the answer's words.
struct Line {
    log: AccessLog,
    decision: &'static str,
    reason: String,
}

/// Wraps a response body to count its bytes; the access-log line is written
/// when the body ends or is dropped (a client that goes away is logged too).
struct LoggedBody {
    inner: Body,
    bytes: u64,
    status: u16,
    line: Option<Line>,
}

/// The answer's response, logged when its body ends.
pub(crate) fn logged(answer: Answer, log: AccessLog) -> Response<Body> {
    let resp = answer.response;
    let status = resp.status().as_u16();
    if let Some(m) = &log.metrics {
        if let Some(kind) = answer.upstream_error {
            m.upstream_error(&log.seen.label, kind);
        }
        m.request_duration(&log.seen.label, log.node_label(), log.start.elapsed());
    }
    let line = Line {
        log,
        decision: answer.decision,
        reason: answer.reason,
    };
    resp.map(|inner| {
        http_body_util::BodyExt::boxed(LoggedBody {
            inner,
            bytes: 0,
            status,
            line: Some(line),
        })
    })
}

impl LoggedBody {
    fn finish(&mut self) {
        if let Some(Line {
            log: l,
            decision,
            reason,
        }) = self.line.take()
        {
            if let Some(m) = &l.metrics {
                m.request(&l.seen.label, l.node_label(), decision, self.status);
            }
            // Free text as `&str`: quoted in text logs (a peer such as
            // `local client 127.0.0.1:5000` stays one value), plain in
            // JSON. Words without spaces (node, method, decision) stay bare.
            let peer = l.who.to_string();
            tracing::info!(
                target: "tailpass::access",
                node = %l.node_label(),
                peer = peer.as_str(),
                peer_addr = %l.who.addr(),
                login = l.seen.login.as_deref().unwrap_or("-"),
                method = %l.method,
                path = l.path.as_str(),
                route = l.seen.route.as_str(),
                decision = %decision,
                reason = reason.as_str(),
                status = self.status,
                bytes = self.bytes,
                duration_ms = l.start.elapsed().as_millis() as u64,
                "request"
            );
        }
    }
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body_util::BodyExt;

    use super::*;
    use crate::gateway::outcome::Outcome;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn access_log_line_names_peer_route_decision_status_bytes_and_duration() {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_writer(buf.clone())
            .finish();
        let body_len = tracing::subscriber::with_default(sub, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let denied = Outcome::Denied {
                    reason: "requires user a@b".into(),
                    page: None,
                };
                let resp = logged(
                    denied.answer(false),
                    AccessLog {
                        node: Some("gw".into()),
                        who: Arc::new(PeerIdentity::Funnel {
                            addr: "203.0.113.7:4567".parse().unwrap(),
                        }),
                        method: "GET".into(),
                        path: "/admin".into(),
                        seen: Seen {
                            route: "route[2] /admin".into(),
                            label: "/admin".into(),
                            login: Some("alice@example.com".into()),
                        },
                        start: Instant::now(),
                        metrics: None,
                    },
                );
                resp.into_body().collect().await.unwrap().to_bytes().len()
            })
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("tailpass::access"))
            .collect();
        assert_eq!(lines.len(), 1, "exactly one line per request: {out}");
        let j: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let f = &j["fields"];
        assert_eq!(f["status"], 403);
        assert_eq!(f["bytes"], body_len as u64);
        assert_eq!(f["route"], "route[2] /admin");
        assert_eq!(f["decision"], "deny");
        assert_eq!(f["node"], "gw");
        assert_eq!(f["login"], "alice@example.com");
        assert_eq!(f["peer"], "public client 203.0.113.7:4567 (Funnel)");
        assert!(f["duration_ms"].is_u64());
    }
}
