//! A request body on its way upstream. An upload may last as long as it
//! keeps moving: it is cut only when no chunk arrives for the body idle
//! timeout. Its end starts the route's `response_timeout`, so the time
//! spent uploading never counts against the upstream's answer.
//!
//! Request trailers (HTTP/1.1 chunked, HTTP/2) are header fields too: some
//! frameworks merge them into the request's headers, so a trailer
//! `Tailscale-User-Login: mallory` must never reach an upstream. The body
//! is streamed frame by frame, and every trailers frame goes through the
//! route's header hygiene (`http::headers::Hygiene`, the same rule as the
//! head: protected names in any case and `_` for `-`, and other `_` names
//! unless the route allows them) before it is sent on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::http::headers::Hygiene;

/// Why an upload was cut.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: no data for {0:?}")]
pub(crate) struct Stalled(pub Duration);

/// What the proxy learns about an upload while it is sent.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    finished: AtomicBool,
    stalled: AtomicBool,
    wake: Notify,
}

impl Progress {
    /// Resolves once the whole body has been read from the client.
    pub(crate) async fn finished(&self) {
        loop {
            let woken = self.wake.notified();
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }

    /// Whether the upload was cut by the idle timeout.
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The error of any request body, once boxed.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body with an idle timeout between chunks.
pub(crate) struct Upload {
    // Boxed once, so one upstream client serves every body type (hyper's
    // `Incoming` in production, `Full`/`Empty` in the pipeline's tests).
    inner: UnsyncBoxBody<Bytes, BoxError>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    progress: Arc<Progress>,
    done: bool,
    /// The route's header rule, applied to request trailers.
    hygiene: Arc<Hygiene>,
}

impl Upload {
    pub(crate) fn new<B>(inner: B, idle: Duration, hygiene: Arc<Hygiene>) -> (Upload, Arc<Progress>)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        let inner = inner.map_err(Into::into).boxed_unsync();
        let progress = Arc::new(Progress::default());
        let done = inner.is_end_stream();
        if done {
            progress.finish();
        }
        let up = Upload {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            progress: progress.clone(),
            done,
            hygiene,
        };
        (up, progress)
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut f))) => {
                if let Some(trailers) = f.trailers_mut() {
                    let removed = self.hygiene.strip(trailers);
                    if !removed.is_empty() {
                        tracing::info!(trailers = ?removed, "removed client-sent protected or underscore trailers");
                    }
                }
                let next = tokio::time::Instant::now() + self.idle;
                self.timer.as_mut().reset(next);
                if self.inner.is_end_stream() {
                    self.done = true;
                    self.progress.finish();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(None) => {
                self.done = true;
                self.progress.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => {
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.progress.stalled.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Stalled(self.idle).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentityHeaders;
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};

    /// A chunked upload whose trailers try to pose as identity headers.
    #[tokio::test]
    async fn protected_names_never_pass_in_request_trailers() {
        let mut t = HeaderMap::new();
        for (k, v) in [
            ("tailscale-user-login", "mallory@example.com"),
            ("tailscale_user_name", "Mallory"),
            ("remote-user", "root"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-auth-user", "mallory"),
            ("x_custom", "1"),
            ("x-checksum", "abc"),
        ] {
            t.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(t)),
        ];
        let names = IdentityHeaders {
            login: http::HeaderName::from_static("x-auth-user"),
            ..Default::default()
        };
        let hy = Arc::new(Hygiene::new(&names, false));
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let (up, progress) = Upload::new(body, Duration::from_secs(5), hy);
        let got = up.collect().await.unwrap();
        assert!(!progress.stalled());
        let trailers = got.trailers().cloned().expect("trailers kept");
        let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-checksum"], "{trailers:?}");
        assert_eq!(got.to_bytes(), Bytes::from_static(b"hello"));
    }
}
