//! A stock tonic-xds client (crates.io `tonic-xds`, the tonic project's own
//! xDS channel) for eds-server's interop tests.
//!
//! It speaks the contract every interop client shares (see
//! `eds_devkit::interop`): it dials `xds:///<target>` with nothing but the
//! bootstrap in `GRPC_XDS_BOOTSTRAP`, calls `eds.echo.v1.Echo/Echo` one call
//! at a time at a fixed rate, and prints one line of JSON per call
//! (`t_ms`, `lat_ms`, `code`, and `pod`/`zone` or `msg`). It stops after
//! `--count` calls (0: never) or on SIGTERM/SIGINT; `--hold` keeps it
//! connected after the last call until a signal.
//!
//! Everything about balancing is tonic-xds's own; this program only turns
//! calls into lines. It is not part of the product and not a load generator.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use proto::echo::EchoRequest;
use proto::echo::echo_client::EchoClient;
use tokio::signal::unix::{SignalKind, signal};
use tonic_xds::{XdsChannelBuilder, XdsChannelConfig, XdsUri};

#[derive(Debug, Parser)]
#[command(about = "tonic-xds interop client: one JSON line per Echo call")]
struct Args {
    /// xDS target, dialled as `xds:///<target>`.
    #[arg(long)]
    target: String,
    /// Calls to make; 0: until SIGTERM or SIGINT.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Calls per second, one at a time (0: back to back).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Request metadata `name=value` (the ring-hash key).
    #[arg(long)]
    header: Option<String>,
    /// If > 0, append `i % N` to the header value of call `i`.
    #[arg(long, default_value_t = 0)]
    key_cycle: u64,
    /// Seconds per call.
    #[arg(long, default_value_t = 5.0)]
    rpc_timeout: f64,
    /// Write the JSON lines here instead of stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Stay connected after the last call until a signal.
    #[arg(long)]
    hold: bool,
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // tonic-xds reports through `tracing` (a NACK's reason, a missing
    // resource); RUST_LOG decides how much reaches stderr, our log.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    anyhow::ensure!(
        args.rate >= 0.0 && args.rpc_timeout > 0.0,
        "--rate must be >= 0 and --rpc-timeout > 0"
    );
    let header = match &args.header {
        Some(h) => {
            let (name, value) = h
                .split_once('=')
                .filter(|(n, _)| !n.is_empty())
                .context("--header must be name=value")?;
            let name: tonic::metadata::MetadataKey<tonic::metadata::Ascii> =
                name.parse().context("--header name")?;
            Some((name, value.to_owned()))
        }
        None => None,
    };
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };

    let target = XdsUri::parse(&format!("xds:///{}", args.target))
        .with_context(|| format!("target {}", args.target))?;
    // The bootstrap comes from GRPC_XDS_BOOTSTRAP, as for any proxyless client.
    let channel = XdsChannelBuilder::new(XdsChannelConfig::new(target))
        .build_grpc_channel()
        .context("building the tonic-xds channel")?;
    let mut client = EchoClient::new(channel);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tokio::pin!(stop);
    let interval = if args.rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.rate)
    } else {
        Duration::ZERO
    };
    let timeout = Duration::from_secs_f64(args.rpc_timeout);
    let start = tokio::time::Instant::now();
    let mut i: u64 = 0;
    // The signal future may be awaited only until it completes once.
    let mut stopped = false;
    while args.count == 0 || i < args.count {
        // Paced against the start, so slow calls do not lower the rate.
        let due = start + interval.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
        tokio::select! {
            () = &mut stop => { stopped = true; break }
            () = tokio::time::sleep_until(due) => {}
        }
        let mut req = tonic::Request::new(EchoRequest {
            message: format!("tonic-xds {i}"),
            work_us: 0,
        });
        req.set_timeout(timeout);
        let mut rec = serde_json::Map::new();
        if let Some((name, value)) = &header {
            let key = if args.key_cycle > 0 {
                format!("{value}{}", i % args.key_cycle)
            } else {
                value.clone()
            };
            req.metadata_mut()
                .insert(name.clone(), key.parse().context("--header value")?);
            rec.insert("key".into(), key.into());
        }
        let began = Instant::now();
        let result = tokio::select! {
            () = &mut stop => { stopped = true; break }
            r = tokio::time::timeout(timeout, client.echo(req)) => r,
        };
        let lat_ms = began.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                rec.insert("code".into(), 0.into());
                rec.insert("pod".into(), reply.pod.into());
                rec.insert("zone".into(), reply.zone.into());
            }
            Ok(Err(status)) => {
                rec.insert("code".into(), (status.code() as i32).into());
                rec.insert("msg".into(), status.message().into());
            }
            Err(_) => {
                rec.insert("code".into(), (tonic::Code::DeadlineExceeded as i32).into());
                rec.insert("msg".into(), "client-side timeout".into());
            }
        }
        rec.insert("t_ms".into(), serde_json::json!(unix_ms() as u64));
        rec.insert("lat_ms".into(), serde_json::json!(lat_ms));
        // One write per line, flushed, so a reader tailing the file sees
        // whole records as they happen.
        let mut line = serde_json::to_vec(&rec)?;
        line.push(b'\n');
        out.write_all(&line)?;
        out.flush()?;
        i += 1;
    }
    if args.hold && !stopped {
        stop.await;
    }
    Ok(())
}
