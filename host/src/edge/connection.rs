//! One connection: the TLS handshake, HTTP/1.1 or HTTP/2, and the timers
//! that end it.
//!
//! - TLS: the handshake must finish within the header timeout.
//! - HTTP/1.1: hyper's header-read timer (given a tokio timer, which
//!   `axum::serve` never gives it) bounds each request head, including the wait
//!   for the next one on a kept-alive connection; a head over the cap is
//!   answered 431.
//! - Both: with no request in flight, a connection is closed after the header
//!   timeout if it never completed a request head, else after the idle timeout.
//!   A request in flight is bounded by the API's request timeout.
//! - Closing (idle, or at shutdown) is graceful — in-flight requests finish —
//!   but takes at most the grace period; then the connection is dropped.
//! - While draining, HTTP/1.1 responses say `Connection: close` and hyper
//!   closes after writing them; an idle kept-alive connection is left open
//!   until its next request (closing it could race a request already on its
//!   way). HTTP/2 has GOAWAY for that race: it is sent once the connection has
//!   answered a request — at once for one that already has — so a client that
//!   connects during the drain is served before it is told to go.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use super::EdgeLimits;

/// HTTP/2 streams one connection may have open at once.
const H2_MAX_STREAMS: u32 = 64;
/// HTTP/2 flow-control windows: what a client may send before the server has
/// read it, per stream and per connection. They bound buffered request bodies.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Response bytes HTTP/2 buffers per stream for a client that does not read.
const H2_MAX_SEND_BUFFER: usize = 64 * 1024;
/// hyper refuses an HTTP/1.1 read buffer below this.
const H1_MIN_BUFFER: usize = 8 * 1024;

/// What every connection shares: the router, the limits, the protocol
/// builders, the TLS acceptor, and the drain and shutdown flags.
pub(super) struct Edge {
    router: Router,
    limits: EdgeLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    draining: watch::Receiver<bool>,
    stopping: watch::Receiver<bool>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Edge {
    pub(super) fn new(
        router: Router,
        limits: EdgeLimits,
        tls: Option<tokio_rustls::TlsAcceptor>,
        draining: watch::Receiver<bool>,
        stopping: watch::Receiver<bool>,
    ) -> Edge {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(limits.max_head_bytes)
            .max_buf_size(limits.max_head_bytes.max(H1_MIN_BUFFER));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_MAX_STREAMS)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_send_buf_size(H2_MAX_SEND_BUFFER);
        Edge {
            router,
            limits,
            tls,
            draining,
            stopping,
            http1: h1,
            http2: h2,
        }
    }

    /// Serves one accepted connection until it ends or is ended.
    pub(super) async fn serve(&self, stream: TcpStream) {
        // Responses are one small write each: do not wait for an ACK to send it.
        let _ = stream.set_nodelay(true);
        let mut stopping = self.stopping.clone();
        let Some(acceptor) = &self.tls else {
            return self.http1(TokioIo::new(stream), &mut stopping).await;
        };
        let handshake = tokio::select! {
            done = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream)) => done,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.http2(TokioIo::new(tls), &mut stopping).await
        } else {
            self.http1(TokioIo::new(tls), &mut stopping).await
        }
    }

    async fn http1<I>(&self, io: I, stopping: &mut watch::Receiver<bool>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let conn = self.http1.serve_connection(io, self.service(&activity, true));
        self.drive(conn, http1::Connection::graceful_shutdown, false, &activity, stopping)
            .await
    }

    async fn http2<I>(&self, io: I, stopping: &mut watch::Receiver<bool>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let conn = self.http2.serve_connection(io, self.service(&activity, false));
        self.drive(conn, http2::Connection::graceful_shutdown, true, &activity, stopping)
            .await
    }

    /// The router as a hyper service that counts the requests in flight and,
    /// on `http1` while draining, closes the connection after each response.
    fn service(
        &self,
        activity: &Arc<Activity>,
        http1: bool,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        let router = self.router.clone();
        let activity = activity.clone();
        let draining = self.draining.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_flight = activity.begin();
            let router = router.clone();
            let draining = draining.clone();
            async move {
                let mut response = router.oneshot(request).await;
                // Read when the response is ready, so one that was in flight
                // when the drain began closes its connection too.
                if http1 && *draining.borrow() {
                    if let Ok(response) = &mut response {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                drop(in_flight);
                response
            }
        })
    }

    /// Runs `conn` until it ends, it has been idle too long, or shutdown; then
    /// closes it gracefully for at most the grace period. With `goaway`
    /// (HTTP/2), a drain closes it gracefully too, once it has answered a request.
    async fn drive<C>(
        &self,
        conn: C,
        graceful: impl Fn(Pin<&mut C>),
        goaway: bool,
        activity: &Activity,
        stopping: &mut watch::Receiver<bool>,
    ) where
        C: Future<Output = hyper::Result<()>>,
    {
        tokio::pin!(conn);
        let idle = activity.idle(self.limits.header_timeout, self.limits.idle_timeout);
        tokio::pin!(idle);
        let mut draining = self.draining.clone();
        let drained = async {
            let _ = draining.wait_for(|d| *d).await;
            activity.answered().await;
        };
        tokio::pin!(drained);
        let mut goaway = goaway;
        let shutdown = loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended");
                    }
                    return;
                }
                () = &mut idle => break false,
                _ = stopping.wait_for(|s| *s) => break true,
                // The connection goes on until its streams are done, bounded
                // by the idle timer and shutdown like any other.
                () = &mut drained, if goaway => {
                    graceful(conn.as_mut());
                    goaway = false;
                }
            }
        };
        graceful(conn.as_mut());
        if shutdown {
            // The accept loop holds the deadline and drops what outlives it.
            let _ = conn.await;
        } else if tokio::time::timeout(self.limits.shutdown_grace, conn).await.is_err() {
            tracing::debug!("an idle connection did not close within the grace period; dropped");
        }
    }
}

/// Requests in flight on one connection, and whether one ever started.
struct Activity {
    in_flight: watch::Sender<usize>,
    started: AtomicBool,
}

/// One request in flight; dropping it (when the response is ready, or when
/// the client reset the stream) ends it.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: watch::Sender::new(0),
            started: AtomicBool::new(false),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.send_modify(|n| *n += 1);
        InFlight(self.clone())
    }

    /// Completes once a request has been answered and none is in flight.
    async fn answered(&self) {
        let mut changes = self.in_flight.subscribe();
        // `begin` marks `started` before it counts, so the count's change
        // that follows wakes this loop.
        while !(self.started.load(Ordering::Relaxed) && *changes.borrow_and_update() == 0) {
            let _ = changes.changed().await;
        }
    }

    /// Completes once no request has been in flight for `first` (before any
    /// request started) or `between` (after one did).
    async fn idle(&self, first: Duration, between: Duration) {
        let mut changes = self.in_flight.subscribe();
        loop {
            if *changes.borrow_and_update() > 0 {
                // `self` holds the sender, so this waits for a real change.
                let _ = changes.changed().await;
                continue;
            }
            let wait = if self.started.load(Ordering::Relaxed) {
                between
            } else {
                first
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => return,
                _ = changes.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARD: Duration = Duration::from_secs(10);

    /// Idle ends with no request in flight, never while one is, and again once
    /// it is done.
    #[tokio::test]
    async fn idle_waits_for_requests_in_flight() {
        let short = Duration::from_millis(10);
        let activity = Arc::new(Activity::new());
        let idle = tokio::time::timeout(GUARD, activity.idle(short, short)).await;
        assert!(idle.is_ok(), "a connection without requests goes idle");

        let request = activity.begin();
        let idle = activity.idle(short, short);
        tokio::pin!(idle);
        assert!(
            tokio::time::timeout(short * 20, idle.as_mut()).await.is_err(),
            "idle while a request is in flight"
        );
        drop(request);
        assert!(tokio::time::timeout(GUARD, idle).await.is_ok(), "idle once it is done");
    }

    /// The drain's GOAWAY waits for an answered request: not one merely begun.
    #[tokio::test]
    async fn answered_waits_for_a_finished_request() {
        let short = Duration::from_millis(50);
        let activity = Arc::new(Activity::new());
        assert!(
            tokio::time::timeout(short, activity.answered()).await.is_err(),
            "nothing answered yet"
        );
        let request = activity.begin();
        let answered = activity.answered();
        tokio::pin!(answered);
        assert!(
            tokio::time::timeout(short, answered.as_mut()).await.is_err(),
            "a request still in flight"
        );
        drop(request);
        assert!(tokio::time::timeout(GUARD, answered).await.is_ok(), "answered");
        assert!(
            tokio::time::timeout(GUARD, activity.answered()).await.is_ok(),
            "and from then on at once"
        );
    }
}
