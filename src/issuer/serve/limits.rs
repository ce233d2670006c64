//! Connection hygiene: caps on open connections (in all and per peer address), an idle
//! timeout on every connection, and per request a cap on requests in progress per peer and a
//! deadline for the body. Together with hyper's header-read timeout (set in `startup`), a
//! client that sends slowly, reads slowly or just holds sockets open is cut off, and the
//! sockets it held go back to honest clients.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::metrics;
use super::problem::ApiError;
use super::service::{Shared, MAX_BODY};

/// Open connections, in all and per peer address.
#[derive(Debug)]
struct Open {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    idle: Duration,
}

/// The acceptor that applies the connection caps and wraps each connection in the idle
/// timeout. It runs first on the raw TCP stream (before a TLS handshake): a connection over a
/// cap is closed at once, before it costs a handshake.
#[derive(Debug, Clone)]
pub(super) struct LimitAcceptor {
    open: Arc<Open>,
}

impl LimitAcceptor {
    pub(super) fn new(max: usize, max_per_ip: usize, idle: Duration) -> Self {
        Self {
            open: Arc::new(Open {
                total: Arc::new(Semaphore::new(max)),
                per_ip: Mutex::new(HashMap::new()),
                max_per_ip,
                idle,
            }),
        }
    }

    /// Takes a place for a connection from `ip`, or says which cap is reached.
    fn admit(&self, ip: IpAddr) -> Result<Place, &'static str> {
        let permit = self
            .open
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "max_connections")?;
        let mut per_ip = self.open.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.open.max_per_ip {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        metrics::get().open_connections.inc();
        Ok(Place {
            open: self.open.clone(),
            ip,
            _permit: permit,
        })
    }
}

/// A connection's place under the caps, given back when the connection closes.
#[derive(Debug)]
struct Place {
    open: Arc<Open>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        metrics::get().open_connections.dec();
        let mut per_ip = self.open.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Guarded;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Guarded, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .map_err(|e| e.to_string())
            .and_then(|peer| self.admit(peer.ip()).map_err(str::to_string));
        std::future::ready(match admitted {
            Ok(place) => Ok((Guarded::new(stream, place, self.open.idle), service)),
            Err(cap) => {
                // Dropping the stream closes it.
                debug!(cap = %cap, "connection refused: limit reached");
                Err(io::Error::new(io::ErrorKind::ConnectionRefused, cap))
            }
        })
    }
}

/// A connection under the caps, closed when no byte moved either way for the idle timeout.
#[derive(Debug)]
pub(super) struct Guarded {
    inner: TcpStream,
    _place: Place,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(inner: TcpStream, place: Place, idle: Duration) -> Self {
        Self {
            inner,
            _place: place,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Nothing moved this time: an error once the idle time is up.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle connection closed",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if r.as_ref().is_ok_and(|n| *n > 0) {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if r.as_ref().is_ok_and(|n| *n > 0) {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.stalled(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request's place under the per-peer cap, given back when the answer is made.
struct InFlight {
    svc: Shared,
    ip: IpAddr,
}

impl InFlight {
    fn enter(svc: &Shared, ip: IpAddr) -> Option<Self> {
        let mut map = svc.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= svc.cfg.serve.limits.max_requests_per_ip {
            return None;
        }
        *n += 1;
        Some(Self {
            svc: svc.clone(),
            ip,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.svc.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Middleware: at most `max_requests_per_ip` requests in progress per peer (429 beyond), and
/// the whole body within `body_timeout` (408) and [`MAX_BODY`] (413), read before any handler
/// runs.
pub(super) async fn per_request(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let Some(_place) = InFlight::enter(&svc, peer.ip()) else {
        return ApiError::Busy.into_response();
    };
    let (parts, body) = req.into_parts();
    let limit = svc.cfg.serve.limits.body_timeout;
    let body = match tokio::time::timeout(limit, read_body(body)).await {
        Err(_) => return ApiError::SlowBody.into_response(),
        Ok(Err(e)) => return e.into_response(),
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// The whole body, at most [`MAX_BODY`] bytes.
async fn read_body(mut body: Body) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(ApiError::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| ApiError::BadInput("the request body was cut off".into()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(ApiError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}
