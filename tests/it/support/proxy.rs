//! A TCP proxy for fault tests: put it between a client and PostgreSQL, Redis or
//! RabbitMQ, then `cut()` to kill every live connection and refuse new ones (the port
//! is closed, as when the server is down) and `restore()` to listen on the same port
//! again.

#![allow(dead_code)] // each test module uses a different subset

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct State {
    cut: watch::Sender<bool>,
    /// Cancelled by `cut()`: every live connection watches the token of its era.
    live: CancellationToken,
}

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(false);
        let state = Arc::new(Mutex::new(State { cut, live: CancellationToken::new() }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, cut_rx, upstream, state.clone(), stop.clone()));
        TcpProxy { addr, state, stop }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops all live connections and refuses new ones until `restore()`.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.cut.send_replace(true);
        state.live.cancel();
        state.live = CancellationToken::new();
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut cut: watch::Receiver<bool>,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(_) => return,
    };
    let mut listener = Some(listener);
    loop {
        if *cut.borrow_and_update() {
            // Closing the listening socket makes new connections fail with "refused".
            listener = None;
        } else if listener.is_none() {
            listener = rebind(addr).await;
            if listener.is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        }
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            changed = cut.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            accepted = accept(listener.as_ref()) => accepted,
        };
        let Some(inbound) = accepted else { continue };
        let live = {
            let state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if *state.cut.borrow() {
                continue; // accepted just before the cut: drop it
            }
            state.live.clone()
        };
        tokio::spawn(pipe(inbound, upstream, live));
    }
}

async fn accept(listener: Option<&TcpListener>) -> Option<TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.ok().map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Listens on the same port again (SO_REUSEADDR, so closed connections in TIME_WAIT
/// do not block it).
async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        let socket = TcpSocket::new_v4().ok()?;
        socket.set_reuseaddr(true).ok()?;
        if socket.bind(addr).is_ok() {
            if let Ok(listener) = socket.listen(1024) {
                return Some(listener);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

async fn pipe(mut inbound: TcpStream, upstream: SocketAddr, live: CancellationToken) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
    tokio::select! {
        () = live.cancelled() => {} // both sockets drop here, mid-stream
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
