//! A TCP proxy for fault tests: put it between a client and PostgreSQL, Redis or
//! RabbitMQ, then `cut()` to kill every live connection and refuse new ones (they are
//! accepted and closed at once, which clients see as the server going away) and
//! `restore()` to let traffic through again.

#![allow(dead_code)] // each test module uses a different subset

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct State {
    cut: bool,
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
        let state = Arc::new(Mutex::new(State { cut: false, live: CancellationToken::new() }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, upstream, state.clone(), stop.clone()));
        TcpProxy { addr, state, stop }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops all live connections and refuses new ones until `restore()`.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.cut = true;
        state.live.cancel();
        state.live = CancellationToken::new();
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).cut = false;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, state: Arc<Mutex<State>>, stop: CancellationToken) {
    loop {
        let (inbound, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let live = {
            let state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.cut {
                drop(inbound); // refused: closed before a byte is exchanged
                continue;
            }
            state.live.clone()
        };
        tokio::spawn(pipe(inbound, upstream, live));
    }
}

async fn pipe(mut inbound: TcpStream, upstream: SocketAddr, live: CancellationToken) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
    tokio::select! {
        () = live.cancelled() => {} // both sockets drop here, mid-stream
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
