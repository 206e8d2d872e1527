//! The connections a listener accepts: how many may be open at once, and
//! how long a client may take to send its headers or leave a kept-alive
//! connection idle.
//!
//! Each port serves HTTP/1.1 with hyper directly rather than through
//! `axum::serve`, which has neither timeout nor cap: one client that opens
//! connections and never finishes a request would otherwise hold a file
//! descriptor each, forever. hyper's own `header_read_timeout` is not used
//! because it also bounds the wait between two requests, so a load
//! balancer's pooled connection would be closed after a few seconds of
//! quiet; here the two waits have their own limits.
//!
//! - **Header read:** from the connection's start, or from the first byte
//!   of a later request, the headers must be complete within
//!   `header_read_timeout`, however the bytes trickle in; then the
//!   connection is dropped without an answer.
//! - **Idle:** a kept-alive connection with no request for `idle_timeout`
//!   is closed. An answer whose body is still being written after its
//!   handler returned (a streamed export) is not idle: each write of it
//!   restarts the timer, so a slow reader gets the whole answer and only a
//!   reader that takes nothing for `idle_timeout` is cut off.
//! - **Cap:** past `max_connections` open on a port, a new connection is
//!   answered `503` with `Retry-After` and `Connection: close` and closed,
//!   so a client or balancer knows to go elsewhere; if even the few
//!   refusals in progress at once are used up, it is closed at once.
//!
//! A request being handled is bounded by the request timeout instead, so a
//! slow body or a slow broker is answered 503, not cut off.

use std::convert::Infallible;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Request, Response, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::config::ConnectionLimits;
use crate::metrics::{Metrics, Port};
use crate::state::AppState;

/// Refusals being answered at once, per port. Each holds a socket for up
/// to [`REFUSAL_TIME`]; past this many, a connection is closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;
/// How long a refusal waits for the request it answers.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// `Retry-After` of a refusal: connections free up as requests finish.
const REFUSAL_RETRY_AFTER_SECS: u64 = 1;
/// Pause after an accept error that is not about one connection (such as
/// running out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` under `state.settings.connections` until
/// `state.shutdown` is cancelled, then stops accepting and returns once
/// every open connection has finished its request in flight and closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    port: Port,
    state: AppState,
) -> io::Result<()> {
    let limits = state.settings.connections;
    let capacity =
        u32::try_from(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let open = Arc::new(Semaphore::new(capacity as usize));
    let refusing = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let shutdown = state.shutdown.clone();
    loop {
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    if !is_connection_error(&error) {
                        tracing::error!(%error, listener = port.as_label(), "cannot accept a connection");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        }
                    }
                    continue;
                }
            },
        };
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                let connection = Connection {
                    router: router.clone(),
                    limits,
                    port,
                    metrics: state.metrics.clone(),
                    shutdown: shutdown.clone(),
                    _permit: permit,
                };
                tokio::spawn(connection.run(stream));
            }
            Err(_) => {
                // Counted, and logged only at debug: a flood of refusals
                // must not become a flood of log lines.
                state.metrics.connection_refused(port);
                tracing::debug!(
                    listener = port.as_label(),
                    max_connections = limits.max_connections,
                    "connection refused: too many open"
                );
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    tokio::spawn(refuse(stream, limits.max_connections, permit));
                }
            }
        }
    }
    drop(listener);
    // Every connection holds a permit until it closes: having them all
    // back means every connection has drained.
    let _drained = open.acquire_many(capacity).await;
    Ok(())
}

/// Errors about one connection (it was reset before it was accepted);
/// anything else concerns the listener or the process.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection and what it needs to be served.
struct Connection {
    router: Router,
    limits: ConnectionLimits,
    port: Port,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

/// Why a connection was closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    HeaderRead,
    Idle,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let _open = self.metrics.connection_guard(self.port);
        let activity = Arc::new(Activity::new(Instant::now()));
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let router = self.router.clone();
        let service = service_fn({
            let activity = activity.clone();
            move |request: Request<Incoming>| {
                let busy = RequestGuard::begin(&activity);
                let mut router = router.clone();
                async move {
                    let response = router.call(request.map(Body::new)).await;
                    // The guard lives as long as the body, which hyper
                    // drops once the last byte is written (or the
                    // connection ends).
                    let streaming = busy.streaming();
                    response.map(|response| {
                        response.map(|body| {
                            Body::new(body.map_frame(move |frame| {
                                let _ = &streaming;
                                frame
                            }))
                        })
                    })
                }
            }
        });
        let mut connection = pin!(http1::Builder::new().serve_connection(io, service));
        let mut draining = false;
        loop {
            let changed = activity.changed.notified();
            let deadline = activity.deadline(&self.limits);
            let expiry = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            // The connection is polled first, so headers that have arrived
            // are parsed before their deadline is judged.
            tokio::select! {
                biased;
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                () = self.shutdown.cancelled(), if !draining => {
                    // Idle connections close now, busy ones after their
                    // answer; a stalled one still meets its deadline.
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = changed => {}
                () = expiry => {
                    match activity.expired(&self.limits, Instant::now()) {
                        Some(Expired::HeaderRead) => {
                            self.metrics.header_read_timed_out(self.port);
                            tracing::debug!(
                                listener = self.port.as_label(),
                                "closing a connection whose request headers are overdue"
                            );
                            return;
                        }
                        Some(Expired::Idle) => return,
                        None => {}
                    }
                }
            }
        }
    }
}

/// Answers one request on a connection past the cap with a 503 and closes
/// it, within [`REFUSAL_TIME`].
async fn refuse(stream: TcpStream, max_connections: usize, _permit: OwnedSemaphorePermit) {
    let service = service_fn(move |_request: Request<Incoming>| async move {
        Ok::<_, Infallible>(too_many_connections(max_connections))
    });
    let connection = http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Ok(Err(error)) = tokio::time::timeout(REFUSAL_TIME, connection).await {
        tracing::debug!(%error, "refused connection ended with an error");
    }
}

fn too_many_connections(max_connections: usize) -> Response<Body> {
    let body = json!({
        "error": "too_many_connections",
        "message": format!(
            "this gateway has {max_connections} connections open, its limit; retry shortly or on another instance"
        ),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(RETRY_AFTER, HeaderValue::from(REFUSAL_RETRY_AFTER_SECS));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Where a connection is between requests, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's headers to be complete: since the
    /// connection started, or since the first byte after an idle spell.
    AwaitingHead { since: Instant },
    /// Requests are being handled; the request timeout bounds them.
    Busy { requests: usize },
    /// The handler has answered and the body is still being written: the
    /// last write was at `since`.
    Streaming { since: Instant },
    /// The last answer is out and nothing new has arrived.
    Idle { since: Instant },
}

/// A connection's phase, updated by its IO and its requests and read by
/// its watchdog, which `changed` wakes on every change of phase.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new(started: Instant) -> Self {
        Self {
            phase: Mutex::new(Phase::AwaitingHead { since: started }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, phase: Phase) {
        *self.phase() = phase;
        self.changed.notify_one();
    }

    fn bytes_arrived(&self) {
        let idle = matches!(*self.phase(), Phase::Idle { .. });
        if idle {
            self.set(Phase::AwaitingHead {
                since: Instant::now(),
            });
        }
    }

    /// A write reached the socket: a body being streamed is not idle.
    fn bytes_written(&self) {
        let streaming = matches!(*self.phase(), Phase::Streaming { .. });
        if streaming {
            self.set(Phase::Streaming {
                since: Instant::now(),
            });
        }
    }

    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        match *self.phase() {
            // `None` when the limit is too large to add to the clock:
            // practically no limit.
            Phase::AwaitingHead { since } => since.checked_add(limits.header_read_timeout),
            Phase::Idle { since } | Phase::Streaming { since } => {
                since.checked_add(limits.idle_timeout)
            }
            Phase::Busy { .. } => None,
        }
    }

    fn expired(&self, limits: &ConnectionLimits, now: Instant) -> Option<Expired> {
        let expired = self
            .deadline(limits)
            .is_some_and(|deadline| deadline <= now);
        match *self.phase() {
            Phase::AwaitingHead { .. } if expired => Some(Expired::HeaderRead),
            Phase::Idle { .. } | Phase::Streaming { .. } if expired => Some(Expired::Idle),
            _ => None,
        }
    }
}

/// Marks the connection busy while one request is handled, whether the
/// handler finishes or is dropped.
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn begin(activity: &Arc<Activity>) -> Self {
        let mut phase = activity.phase();
        *phase = match *phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        };
        drop(phase);
        activity.changed.notify_one();
        Self(activity.clone())
    }

    /// The handler has answered; the body may still be written. The last
    /// request in flight moves the connection to [`Phase::Streaming`]
    /// until the returned guard, held by the body, is dropped.
    fn streaming(self) -> Self {
        {
            let mut phase = self.0.phase();
            if *phase == (Phase::Busy { requests: 1 }) {
                *phase = Phase::Streaming {
                    since: Instant::now(),
                };
            }
        }
        self.0.changed.notify_one();
        self
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let next = match *self.0.phase() {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        };
        self.0.set(next);
    }
}

/// The socket, reporting each read that brings bytes to the connection's
/// [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.bytes_written();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.bytes_written();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(75),
        max_connections: 10,
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_moves_from_headers_to_busy_to_idle_and_back() {
        let started = Instant::now();
        let activity = Arc::new(Activity::new(started));
        assert_eq!(
            activity.deadline(&LIMITS),
            Some(started + LIMITS.header_read_timeout)
        );
        assert_eq!(activity.expired(&LIMITS, started), None);
        assert_eq!(
            activity.expired(&LIMITS, started + LIMITS.header_read_timeout),
            Some(Expired::HeaderRead)
        );

        let first = RequestGuard::begin(&activity);
        let second = RequestGuard::begin(&activity);
        assert_eq!(activity.deadline(&LIMITS), None, "busy: no deadline");
        drop(first);
        assert_eq!(activity.deadline(&LIMITS), None, "one request left");
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(second);
        let idle_since = Instant::now();
        assert_eq!(
            activity.deadline(&LIMITS),
            Some(idle_since + LIMITS.idle_timeout)
        );
        assert_eq!(
            activity.expired(&LIMITS, idle_since + LIMITS.header_read_timeout),
            None,
            "an idle connection is not held to the header timeout"
        );
        assert_eq!(
            activity.expired(&LIMITS, idle_since + LIMITS.idle_timeout),
            Some(Expired::Idle)
        );

        tokio::time::advance(Duration::from_secs(5)).await;
        activity.bytes_arrived();
        let head_since = Instant::now();
        assert_eq!(
            activity.deadline(&LIMITS),
            Some(head_since + LIMITS.header_read_timeout)
        );
        activity.bytes_arrived();
        assert_eq!(
            activity.deadline(&LIMITS),
            Some(head_since + LIMITS.header_read_timeout),
            "more bytes of the same headers do not extend the deadline"
        );
    }

    #[test]
    fn a_limit_too_large_for_the_clock_means_no_deadline() {
        let activity = Activity::new(Instant::now());
        let limits = ConnectionLimits {
            header_read_timeout: Duration::MAX,
            ..LIMITS
        };
        assert_eq!(activity.deadline(&limits), None);
    }
}
