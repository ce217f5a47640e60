//! Accepting connections and serving them on connection threads.
//!
//! Each accepted connection lives its whole life on one connection thread,
//! a single-threaded runtime of its own: the request, the policy work, the
//! upstream exchange (the upstream connection's task is spawned where the
//! request runs) and the reply never hop between threads. On a
//! work-stealing runtime every step of a request can wake another worker,
//! and a wake-up costs more than the gateway's own work on a small or
//! virtualised machine. There is one thread per core by default
//! (`[server] workers`); connections go to them in turn. Accept loops,
//! housekeeping and the admin API's blocking reads stay on the main
//! runtime.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::tls::{ClientCert, TlsListener, fingerprint};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection threads.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` connection threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut workers = Self {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            next: AtomicUsize::new(0),
        };
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // SQLite lookups on a cache miss; each thread costs an
                // allocator arena.
                .max_blocking_threads(4)
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("palisade-conn-{i}"))
                    .spawn(move || {
                        // Drives the connections spawned onto this runtime
                        // until told to stop; dropping the runtime then
                        // ends whatever is still open.
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    })?,
            );
        }
        Ok(workers)
    }

    /// Runs `task` on the next connection thread.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }

    /// Stops every thread, ending connections still open (their
    /// exchanges are recorded as they are dropped), and waits for them.
    pub fn stop(mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Serves `router` on `listener`, over TLS when `tls` is set, until `stop`;
/// then lets open connections finish their requests (the caller bounds how
/// long).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsListener>>,
    router: Router,
    workers: Arc<Workers>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: back off, keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        // The socket moves to the connection thread's own reactor.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection dropped before it was served");
                continue;
            }
        };
        let acceptor = match &tls {
            Some(tls) => match tls.acceptor() {
                Some(acceptor) => Some(acceptor),
                None => continue,
            },
            None => None,
        };
        let router = router.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        // Two task shapes, so that a plain connection's task is not sized
        // for a TLS session it does not have.
        match acceptor {
            None => workers.spawn(async move {
                let Some(tcp) = register(tcp, peer) else {
                    return;
                };
                let service = service(router, peer, None);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                let _ = watcher.watch(conn.into_owned()).await;
            }),
            Some(acceptor) => workers.spawn(async move {
                let Some(tcp) = register(tcp, peer) else {
                    return;
                };
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| ClientCert(fingerprint(c)));
                let service = service(router, peer, cert);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let _ = watcher.watch(conn.into_owned()).await;
            }),
        }
    }
    graceful.shutdown().await;
    Ok(())
}

/// The accepted socket on the current connection thread's reactor.
fn register(tcp: std::net::TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    TcpStream::from_std(tcp)
        .inspect_err(|e| tracing::warn!(%peer, error = %e, "cannot register the connection"))
        .ok()
}

/// The router for one connection, with the peer's address (and client
/// certificate) in every request's extensions.
fn service(
    router: Router,
    peer: SocketAddr,
    cert: Option<ClientCert>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(cert) = &cert {
            req.extensions_mut().insert(cert.clone());
        }
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request on an open connection; returns the body.
    async fn get(conn: &mut TcpStream) -> String {
        conn.write_all(b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if body.len() >= len {
                    return body[..len].to_owned();
                }
            }
        }
    }

    type Server = tokio::task::JoinHandle<std::io::Result<()>>;

    /// Serves `router` on a free port with `threads` connection threads.
    async fn start(
        router: Router,
        threads: usize,
    ) -> (SocketAddr, Arc<Workers>, CancellationToken, Server) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let workers = Arc::new(Workers::start(threads).unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            None,
            router,
            Arc::clone(&workers),
            stop.clone(),
        ));
        (addr, workers, stop, server)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_connection_stays_on_one_connection_thread_and_they_take_turns() {
        let router = Router::new().route(
            "/thread",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                let name = std::thread::current().name().unwrap_or("?").to_owned();
                format!("{name} {}", peer.ip())
            }),
        );
        let (addr, workers, stop, server) = start(router, 2).await;

        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let first = get(&mut conn).await;
            for _ in 0..3 {
                assert_eq!(get(&mut conn).await, first, "a connection changed threads");
            }
            let (thread, ip) = first.split_once(' ').unwrap();
            assert_eq!(ip, "127.0.0.1", "the peer's address reaches the handler");
            seen.push(thread.to_owned());
        }
        assert_eq!(
            seen,
            [
                "palisade-conn-0",
                "palisade-conn-1",
                "palisade-conn-0",
                "palisade-conn-1"
            ]
        );

        // Stopping: an idle connection is closed at once and the accept
        // loop returns.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        get(&mut idle).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns once idle connections are closed")
            .unwrap()
            .unwrap();
        let mut rest = Vec::new();
        assert_eq!(idle.read_to_end(&mut rest).await.unwrap_or(0), 0);
        tokio::task::spawn_blocking(move || Arc::into_inner(workers).unwrap().stop())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_the_threads_ends_a_request_that_outlived_the_grace() {
        let router = Router::new().route(
            "/thread",
            axum::routing::get(std::future::pending::<&'static str>),
        );
        let (addr, workers, stop, server) = start(router, 1).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !server.is_finished(),
            "serve waits for the request in flight"
        );
        // What the application does when the grace period is over.
        server.abort();
        let _ = server.await;
        let workers = Arc::into_inner(workers).expect("the accept loop let go of the threads");
        tokio::task::spawn_blocking(move || workers.stop())
            .await
            .unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
            .await
            .expect("the connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing was answered");
    }
}
