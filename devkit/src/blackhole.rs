//! A TCP proxy on loopback whose open connections can go silent: the
//! network failure a lost node or a dropped route looks like from a client.
//!
//! ```text
//!  client ──> 127.0.0.1:P ──> upstream A        (forwarding)
//!               blackhole(B):
//!  client ──> 127.0.0.1:P ─X  bytes read and dropped both ways, nothing closed
//!  client ──> 127.0.0.1:P ──> upstream B        (connections opened afterwards)
//! ```
//!
//! Nothing is closed or reset when the proxy goes silent, and what each side
//! sends is read and thrown away, so neither side's TCP stack sees back
//! pressure or an error: only a liveness check of the client's own (HTTP/2
//! PING, TCP keepalive) can tell. Not a general proxy: no TLS awareness, no
//! half-close subtleties beyond passing EOF on, loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct Blackhole {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: Mutex<SocketAddr>,
    /// One flag per connection opened so far; set when it goes silent.
    silenced: Mutex<Vec<Arc<AtomicBool>>>,
    accepted: AtomicU64,
}

impl Blackhole {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            upstream.ip().is_loopback(),
            "the blackhole proxy forwards to loopback only, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the blackhole proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            silenced: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Every open connection goes silent; connections opened from now on
    /// reach `next` instead.
    pub fn blackhole(&self, next: SocketAddr) {
        *lock(&self.shared.upstream) = next;
        for flag in lock(&self.shared.silenced).iter() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in a set owned by this task, so aborting the
    // proxy ends them too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let upstream = *lock(&shared.upstream);
        let silenced = Arc::new(AtomicBool::new(false));
        lock(&shared.silenced).push(silenced.clone());
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pump(client_read, server_write, silenced.clone()),
                pump(server_read, client_write, silenced),
            );
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silenced: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if silenced.load(Ordering::Relaxed) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    // Pass the end on only while forwarding: a silent network says nothing.
    if !silenced.load(Ordering::Relaxed) {
        let _ = to.shutdown().await;
    }
}
