//! The agent's TCP HTTP listeners (healthz, metrics, health check node ports), hardened against
//! slow and numerous clients: each listener holds a bounded number of connections, and all of them
//! together a bounded share of the process's descriptors; a connection must send a request's
//! headers within a deadline; a request must be answered within a deadline; and no connection
//! lives longer than a maximum age (a client that never reads its response). Anything above a
//! limit is closed at once, so a flood costs the agent no more than the limits and the unix API
//! socket (served apart, with its own descriptors) keeps answering.
//!
//! Built on hyper's HTTP/1 connection builder (its `header_read_timeout`) and tower-http's
//! `TimeoutLayer`, with `tokio::sync::Semaphore` permits as the connection counts, rather than a
//! hand-written HTTP loop: axum's own `serve` has neither limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_http::timeout::TimeoutLayer;

/// The limits of one TCP listener of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections one listener holds at once. A connection above it is closed as soon as it is
    /// accepted (rather than left in the kernel's backlog, where a client cannot tell a full agent
    /// from a slow one and every later client waits behind it).
    pub max_connections: usize,
    /// A request's headers must be complete this long after the connection became ready for a
    /// request: after it was accepted, and after each response on a kept-alive connection. hyper
    /// runs this one clock for both, so it is the slowloris bound and the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// A handler must answer within this (else 408 Request Timeout).
    pub request_timeout: Duration,
    /// A connection is closed this long after it was accepted, whatever it is doing: the bound on
    /// a client that never reads its response (writes would wait forever) and on a kept-alive
    /// connection's lifetime.
    pub max_connection_age: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// The descriptors all TCP listeners of the agent may hold together (one permit per connection).
/// Half the process's soft `RLIMIT_NOFILE` (at least 64): the other half stays for the agent's own
/// work (the unix API's clients, netlink, eBPF objects, the store, the sources' watches).
#[derive(Clone, Debug)]
pub struct ConnectionBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl ConnectionBudget {
    /// A budget of `total` connections.
    pub fn new(total: usize) -> ConnectionBudget {
        ConnectionBudget { permits: Arc::new(Semaphore::new(total)), total }
    }

    /// Half of this process's soft descriptor limit (read from `/proc/self/limits`; 1024, the usual
    /// default, when it cannot be read), at least 64.
    pub fn for_this_process() -> ConnectionBudget {
        let soft =
            std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| soft_open_files(&text)).unwrap_or(1024);
        ConnectionBudget::new((soft / 2).clamp(64, Semaphore::MAX_PERMITS as u64) as usize)
    }

    /// How many connections the budget allows in all.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// The soft limit of "Max open files" in the text of `/proc/self/limits` (`None` when unlimited
/// or absent).
fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Serves `app` on `listener` under `limits` and `budget` until the returned task is aborted
/// (which closes the listener and every connection it accepted). `what` names the listener in
/// logs.
pub fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    budget: &ConnectionBudget,
    what: String,
) -> tokio::task::JoinHandle<()> {
    let app = app.layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout));
    let own = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let shared = Arc::clone(&budget.permits);
    tokio::spawn(async move {
        // Connection tasks live in the set: aborting this task drops it and closes them all.
        let mut connections = JoinSet::new();
        let mut refused: u64 = 0;
        loop {
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or another transient error): wait rather than spin;
                    // the connections in the kernel's backlog are taken when there is room.
                    tracing::warn!(listener = %what, error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let permits = Arc::clone(&own).try_acquire_owned().ok().zip(Arc::clone(&shared).try_acquire_owned().ok());
            let Some(permits) = permits else {
                // Over a limit: closed at once. Logged at the first and every 1,000th.
                if refused.is_multiple_of(1000) {
                    tracing::warn!(listener = %what, %peer, refused = refused + 1, "connection limit reached; closing new connections");
                }
                refused += 1;
                drop(stream);
                continue;
            };
            let app = app.clone();
            connections.spawn(async move {
                let _permits = permits;
                serve_connection(stream, app, limits).await;
            });
        }
    })
}

/// Serves one connection under the header-read deadline and the maximum age.
async fn serve_connection(stream: tokio::net::TcpStream, app: Router, limits: ListenerLimits) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // Requests are a line and a few headers: 16 KiB bounds what one connection buffers.
        .max_buf_size(16 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    match tokio::time::timeout(limits.max_connection_age, conn).await {
        Ok(Ok(())) => {}
        // Timeouts and clients going away are what the limits are for: not worth more than debug.
        Ok(Err(e)) => tracing::debug!(error = %e, "connection ended"),
        Err(_) => tracing::debug!("connection closed at its maximum age"),
    }
}

/// Binds `addr` (IPv6 addresses only IPv6, so that `[::]` and `0.0.0.0` may both be bound; the
/// address is reused at once after a previous listener on it closed).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_soft_descriptor_limit_is_read() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63448                63448                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(soft_open_files(text), Some(1024));
        assert_eq!(soft_open_files("Max open files            unlimited            unlimited            files"), None);
    }

    #[tokio::test]
    async fn a_slow_handler_is_answered_408_at_the_request_timeout() {
        let app = Router::new().route(
            "/",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let limits = ListenerLimits { request_timeout: Duration::from_millis(200), ..ListenerLimits::default() };
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve(listener, app, limits, &ConnectionBudget::new(64), "test".into());
        let started = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        assert!(buf.starts_with("HTTP/1.1 408"), "{buf}");
        assert!(started.elapsed() < Duration::from_secs(5));
        task.abort();
    }
}
