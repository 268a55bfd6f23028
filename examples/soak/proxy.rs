//! A TCP proxy that can be cut from outside: `SIGUSR1` closes every live connection and
//! refuses new ones (accepted and dropped at once, as a host whose service is gone),
//! `SIGUSR2` forwards again. The soak puts it in front of RabbitMQ and PostgreSQL.

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

pub async fn run(listen: &str, upstream: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
    // `true` while cut; every connection watches it and ends when it flips to true.
    let (cut_tx, cut_rx) = watch::channel(false);
    let mut cut_signal = signal(SignalKind::user_defined1())?;
    let mut restore_signal = signal(SignalKind::user_defined2())?;
    let mut terminate = signal(SignalKind::terminate())?;
    eprintln!("proxy {listen} -> {upstream}");
    loop {
        tokio::select! {
            _ = cut_signal.recv() => { cut_tx.send_replace(true); eprintln!("proxy {listen}: cut"); }
            _ = restore_signal.recv() => { cut_tx.send_replace(false); eprintln!("proxy {listen}: restored"); }
            _ = terminate.recv() => return Ok(()),
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let upstream = upstream.to_owned();
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        }
    }
}
