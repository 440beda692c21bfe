//! A hostile xDS client for eds-server's connection-limit drill: many
//! connections at once, and one connection that opens streams without
//! waiting for the server's stream limit, written as raw HTTP/2 frames
//! because every real HTTP/2 client library honours the limit.
//!
//! ```text
//!  xds-flood --addr A --connections N --streams M --hold-secs S
//!    1 connection opened first (so a connection cap does not refuse it)
//!    N connections: preface + SETTINGS each, at most 200 connecting at once;
//!      "held"    the server answered with its SETTINGS and kept it open
//!      "refused" the server closed it without a SETTINGS
//!    then on the first: M HEADERS frames (ADS requests, never finished), no pause;
//!      counts RST_STREAM by reason and any GOAWAY
//!    prints "flooding" once all are set up, holds for S seconds, closes
//!    everything, prints one JSON summary line
//! ```
//!
//! Only loopback: it refuses any other address. Not a load generator of
//! valid traffic (the fan-out benchmark is) and not a fuzzer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
struct Args {
    /// eds-server's xDS address (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// Connections to open at once.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Streams to open on the one stream-flooding connection.
    #[arg(long, default_value_t = 100_000)]
    streams: u32,
    /// How long to hold everything open before closing.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The header block of an ADS request, in HPACK without the dynamic table
/// or Huffman coding: static-table indices and literals.
fn ads_headers() -> Vec<u8> {
    fn literal(out: &mut Vec<u8>, s: &str) {
        // Every string here is under 127 bytes: a one-byte length.
        out.push(u8::try_from(s.len()).unwrap_or(127));
        out.extend_from_slice(s.as_bytes());
    }
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    b.push(0x04); // :path, literal value, not indexed
    literal(
        &mut b,
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    b.push(0x01); // :authority
    literal(&mut b, "localhost");
    b.extend_from_slice(&[0x0f, 0x10]); // content-type (static index 31)
    literal(&mut b, "application/grpc");
    b.push(0x00); // te: a new name
    literal(&mut b, "te");
    literal(&mut b, "trailers");
    b
}

/// Reads one frame: (type, flags, stream, payload). `None` at the end.
async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u8, u8, u32, Vec<u8>)>> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[3], head[4], stream, payload)))
}

/// Opens one connection: preface and SETTINGS, then waits for the
/// server's SETTINGS. `Ok(Some(stream))`: held; `Ok(None)`: refused.
async fn open(addr: SocketAddr) -> anyhow::Result<Option<TcpStream>> {
    let mut tcp = TcpStream::connect(addr).await.context("connecting")?;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    if tcp.write_all(&hello).await.is_err() {
        return Ok(None);
    }
    match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut tcp)).await {
        Ok(Ok(Some((SETTINGS, flags, _, _)))) if flags & ACK == 0 => {
            let _ = tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            Ok(Some(tcp))
        }
        Ok(Ok(Some((kind, ..)))) => bail!("frame type {kind} before the server's SETTINGS"),
        // Closed or reset without a word: refused.
        Ok(Ok(None) | Err(_)) => Ok(None),
        Err(_) => bail!("no SETTINGS and no close within 10 s"),
    }
}

/// What the stream-flooding connection saw.
#[derive(Debug, Default, serde::Serialize)]
struct StreamFlood {
    /// HEADERS frames written before the connection closed.
    sent: u32,
    /// RST_STREAM received, by reason code.
    resets: BTreeMap<u32, u64>,
    /// GOAWAY error code, if one came.
    goaway: Option<u32>,
}

async fn flood_streams(
    tcp: TcpStream,
    streams: u32,
    hold: Duration,
) -> anyhow::Result<StreamFlood> {
    let (mut rd, mut wr) = tcp.into_split();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = tokio::spawn(async move {
        let mut seen = StreamFlood::default();
        while let Ok(Some((kind, flags, _stream, payload))) = read_frame(&mut rd).await {
            match kind {
                RST_STREAM if payload.len() >= 4 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    *seen.resets.entry(code).or_default() += 1;
                }
                GOAWAY if payload.len() >= 8 => {
                    seen.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                PING if flags & ACK == 0 => {
                    let _ = ack_tx.send(frame(PING, ACK, 0, &payload));
                }
                SETTINGS if flags & ACK == 0 => {
                    let _ = ack_tx.send(frame(SETTINGS, ACK, 0, &[]));
                }
                _ => {}
            }
        }
        seen
    });
    let block = ads_headers();
    let mut sent = 0;
    let mut batch = Vec::with_capacity(64 * 1024);
    for i in 0..streams {
        while let Ok(ack) = ack_rx.try_recv() {
            batch.extend(ack);
        }
        batch.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
        if batch.len() >= 60 * 1024 || i + 1 == streams {
            if wr.write_all(&batch).await.is_err() {
                break;
            }
            sent = i + 1;
            batch.clear();
        }
    }
    // Hold: answer PINGs so the server's keepalive does not close us.
    let until = tokio::time::Instant::now() + hold;
    while let Ok(Some(ack)) = tokio::time::timeout_at(until, ack_rx.recv()).await {
        if wr.write_all(&ack).await.is_err() {
            break;
        }
    }
    drop(wr);
    let mut seen = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .context("the server did not close the stream-flooding connection")??;
    seen.sent = sent;
    Ok(seen)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.addr.ip().is_loopback(),
        "xds-flood only sends to loopback, not {}",
        args.addr
    );
    let hold = Duration::from_secs(args.hold_secs);
    // Opened first, so the connection cap does not refuse it.
    let Some(stream_flood) = open(args.addr).await? else {
        bail!("the stream-flooding connection was refused");
    };
    let (held, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let connecting = Arc::new(Semaphore::new(200));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (held, refused, connecting) = (held.clone(), refused.clone(), connecting.clone());
        let mut release = release_rx.clone();
        let addr = args.addr;
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await?;
            let opened = open(addr).await;
            drop(permit);
            match opened? {
                Some(tcp) => {
                    held.fetch_add(1, Ordering::Relaxed);
                    let _ = release.wait_for(|r| *r).await;
                    drop(tcp);
                }
                None => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    // Connections first: the stream flood then competes with all of them.
    let all_set_up = async {
        loop {
            let done = held.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed);
            if done as usize >= args.connections {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all_set_up)
        .await
        .context("connections still being set up after 120 s")?;
    println!("flooding");
    let streams = flood_streams(stream_flood, args.streams, hold).await?;
    let _ = release_tx.send(true);
    for t in tasks {
        t.await??;
    }
    println!(
        "{}",
        serde_json::json!({
            "connections": args.connections,
            "held": held.load(Ordering::Relaxed),
            "refused": refused.load(Ordering::Relaxed),
            "streams": streams,
        })
    );
    Ok(())
}
