//! A TCP proxy for fault tests: put it between a client and PostgreSQL, Redis or
//! RabbitMQ, then
//! * `cut()` to kill every live connection and refuse new ones (the port is closed, as
//!   when the server is down);
//! * `stall()` to stop forwarding in both directions while every socket stays open (a
//!   silent network partition: nothing arrives, nothing fails, new connections hang);
//! * `hold_replies()` to forward what the client sends but hold back the server's answers
//!   (the request is executed, the answer never comes);
//!
//! and `restore()` to forward again (held bytes flow on, intact) and listen on the same
//! port again after a cut.

#![allow(dead_code)] // each test module uses a different subset

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Which directions bytes flow in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    /// Client → server.
    up: bool,
    /// Server → client.
    down: bool,
}

const FORWARD: Flow = Flow { up: true, down: true };

struct State {
    cut: watch::Sender<bool>,
    flow: watch::Sender<Flow>,
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
        let (flow, _) = watch::channel(FORWARD);
        let state = Arc::new(Mutex::new(State { cut, flow, live: CancellationToken::new() }));
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

    /// Stops forwarding in both directions; sockets stay open and new connections are
    /// accepted but get no answer, until `restore()`.
    pub fn stall(&self) {
        self.set_flow(Flow { up: false, down: false });
    }

    /// Forwards client → server but holds every answer back, until `restore()` (or a
    /// `cut()`, which drops what was held).
    pub fn hold_replies(&self) {
        self.set_flow(Flow { up: true, down: false });
    }

    /// Lets new connections through again and forwards everything held.
    pub fn restore(&self) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.flow.send_replace(FORWARD);
        state.cut.send_replace(false);
    }

    fn set_flow(&self, flow: Flow) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).flow.send_replace(flow);
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
        let (live, flow) = {
            let state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if *state.cut.borrow() {
                continue; // accepted just before the cut: drop it
            }
            (state.live.clone(), state.flow.subscribe())
        };
        tokio::spawn(pipe(inbound, upstream, live, flow));
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

async fn pipe(inbound: TcpStream, upstream: SocketAddr, live: CancellationToken, flow: watch::Receiver<Flow>) {
    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    let up = forward(client_read, server_write, flow.clone(), |f| f.up);
    let down = forward(server_read, client_write, flow, |f| f.down);
    tokio::select! {
        () = live.cancelled() => {} // both sockets drop here, mid-stream
        _ = futures_util::future::join(up, down) => {}
    }
}

/// Copies one direction; while `open(flow)` is false the bytes read wait (and the rest
/// stay in the kernel's buffers), so nothing is lost or reordered when it flows again.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut flow: watch::Receiver<Flow>,
    open: fn(&Flow) -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if flow.wait_for(open).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
