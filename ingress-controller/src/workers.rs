//! The proxy's worker threads, as nginx's worker processes: each runs its own
//! single-threaded runtime with its own listening sockets (SO_REUSEPORT, so the kernel
//! spreads new connections across the workers) and its own upstream connection pools.
//! A request, its downstream connection and the upstream connection it goes out on are
//! then all driven by one thread: no work stealing and no cross-thread wake-up per request,
//! which is where a multi-threaded runtime spent its time under keep-alive load. What the
//! workers share is read-mostly: the routing table (one atomic load per request),
//! certificates, limits and metrics.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::access_log;
use crate::proxy::{self, Pools, Proxy};

/// Pending connections the kernel queues per listening socket (tokio's own default).
const BACKLOG: i32 = 1024;

/// How many workers `requested` means: 0 is one per CPU, as nginx's `worker_processes auto`.
pub fn count(requested: usize) -> usize {
    match requested {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    }
}

/// Binds `n` (at least one) listening sockets on `addr`, all with SO_REUSEPORT. A port 0
/// is resolved by the first bind and the others join it.
pub fn bind(mut addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut bound = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // As tokio's `TcpListener::bind`: a restart does not wait out TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        if addr.port() == 0 {
            addr = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))?;
        }
        bound.push(socket.into());
    }
    Ok(bound)
}

/// One worker's listening sockets.
#[derive(Debug)]
pub struct Listeners {
    /// Plain HTTP.
    pub http: std::net::TcpListener,
    /// HTTPS.
    pub https: std::net::TcpListener,
}

/// Starts a worker thread per element of `listeners`, each serving until `shutdown` and
/// then draining for up to `grace` (see [`proxy::serve`]). The returned future ends when
/// every worker has.
pub fn start(
    listeners: Vec<Listeners>,
    acceptor: &TlsAcceptor,
    proxy: &Arc<Proxy>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> io::Result<impl Future<Output = ()> + use<>> {
    let mut done = Vec::with_capacity(listeners.len());
    for (i, l) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // The access log's lines of one turn of the event loop go out in one write.
            .on_thread_park(access_log::flush)
            .build()?;
        // Registering a socket needs the runtime that will poll it.
        let (http, https) = {
            let _entered = runtime.enter();
            (
                TcpListener::from_std(l.http)?,
                TcpListener::from_std(l.https)?,
            )
        };
        let (acceptor, proxy, shutdown) = (acceptor.clone(), proxy.clone(), shutdown.clone());
        let (finished, wait) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("proxy-worker-{i}"))
            .spawn(move || {
                access_log::batch_until_park();
                runtime.block_on(async move {
                    let pools = Arc::new(Pools::default());
                    tokio::join!(
                        proxy::serve(
                            http,
                            None,
                            proxy.clone(),
                            pools.clone(),
                            shutdown.clone(),
                            grace
                        ),
                        proxy::serve(https, Some(acceptor), proxy, pools, shutdown, grace),
                    );
                });
                // Dropping the runtime here ends what the drain left (idle upstream
                // connections) on this thread.
                drop(runtime);
                let _ = finished.send(());
            })?;
        done.push(wait);
    }
    Ok(async move {
        // A worker that panicked drops its sender: that counts as finished too.
        for wait in done {
            let _ = wait.await;
        }
    })
}
