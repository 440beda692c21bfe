//! The load generators of the `overhead` benchmark: closed loop (a fixed
//! number of callers, each sending its next request when the last one
//! answered: the maximum throughput) and open loop (requests sent on a fixed
//! schedule whatever happens to earlier ones: latency at a given rate).
//!
//! The open loop measures every request from the time it was *meant* to be
//! sent, not from when it was sent, so a client that stalls is charged for
//! the requests it delayed (no coordinated omission). Its schedule is kept by
//! a plain thread sleeping with the kernel's high-resolution timer, because
//! tokio's timer ticks in whole milliseconds, far coarser than the tens of
//! microseconds being measured.
//!
//! The open loop can also interleave several transports on one schedule
//! (request `k` through transport `k mod n`): every transport then sees the
//! same machine at the same moments, which is how the benchmark measures
//! the latency lb-client adds on a 2-core VM whose stalls move a p99 by
//! hundreds of microseconds from one second to the next.
//!
//! Both work on any tonic transport (a raw `Channel`, `LbChannel`, a
//! `balance_list` Channel) through the generated `EchoClient`. Neither
//! asserts anything; they count. Not the benchmark's plan (the binary has it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use eds_bench::report::quantile;
use proto::echo::EchoRequest;
use proto::echo::echo_client::EchoClient;
use tonic::client::GrpcService;

/// What one load run saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadResult {
    /// Requests answered OK.
    pub(crate) ok: u64,
    /// Requests that failed.
    pub(crate) errors: u64,
    /// Seconds from the first send to the last answer.
    pub(crate) elapsed: f64,
    /// Latency of every OK request in microseconds, sorted.
    pub(crate) latencies_us: Vec<f64>,
    /// Per backend (by the index it answers with): the summed seconds its
    /// requests were outstanding. Divided by `elapsed`, this is the
    /// time-averaged number in flight to it (Little's law), exactly, with no
    /// sampling.
    pub(crate) busy_seconds: Vec<f64>,
}

impl LoadResult {
    /// Answered requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.max(f64::MIN_POSITIVE)
    }

    /// The latency at quantile `q` in microseconds (NaN without data).
    pub(crate) fn latency(&self, q: f64) -> f64 {
        quantile(&self.latencies_us, q).unwrap_or(f64::NAN)
    }

    /// Time-averaged requests in flight per backend.
    pub(crate) fn mean_in_flight(&self) -> Vec<f64> {
        let t = self.elapsed.max(f64::MIN_POSITIVE);
        self.busy_seconds.iter().map(|s| s / t).collect()
    }

    fn merge(&mut self, part: Part) {
        self.ok += part.ok;
        self.errors += part.errors;
        self.latencies_us.extend(part.latencies_us);
        if self.busy_seconds.len() < part.busy.len() {
            self.busy_seconds.resize(part.busy.len(), 0.0);
        }
        for (total, b) in self.busy_seconds.iter_mut().zip(part.busy) {
            *total += b;
        }
    }

    fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed.as_secs_f64();
        self.latencies_us.sort_by(f64::total_cmp);
    }
}

/// One caller's (or one request's) share of a result.
#[derive(Debug, Default)]
struct Part {
    ok: u64,
    errors: u64,
    latencies_us: Vec<f64>,
    busy: Vec<f64>,
}

impl Part {
    fn record(&mut self, answer: Result<usize, ()>, took: Duration) {
        match answer {
            Ok(backend) => {
                self.ok += 1;
                self.latencies_us.push(took.as_secs_f64() * 1e6);
                if self.busy.len() <= backend {
                    self.busy.resize(backend + 1, 0.0);
                }
                self.busy[backend] += took.as_secs_f64();
            }
            Err(()) => self.errors += 1,
        }
    }
}

/// The bounds tonic puts on a transport; every contender meets them.
pub(crate) trait Transport:
    GrpcService<
        tonic::body::Body,
        Future: Send,
        ResponseBody: http_body::Body<
            Data = bytes::Bytes,
            Error: Into<tonic::codegen::StdError> + Send,
        > + Send
                          + 'static,
        Error: Into<tonic::codegen::StdError>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Transport for S where
    S: GrpcService<
            tonic::body::Body,
            Future: Send,
            ResponseBody: http_body::Body<
                Data = bytes::Bytes,
                Error: Into<tonic::codegen::StdError> + Send,
            > + Send
                              + 'static,
            Error: Into<tonic::codegen::StdError>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// One echo call: the index of the backend that answered.
async fn call<S: Transport>(client: &mut EchoClient<S>) -> Result<usize, ()> {
    let reply = client
        .echo(EchoRequest {
            message: "x".to_owned(),
            work_us: 0,
        })
        .await
        .map_err(|_| ())?;
    // Backends answer with their index; anything else is a broken backend.
    reply.into_inner().pod.parse::<usize>().map_err(|_| ())
}

/// `callers` loops, each sending its next request as soon as the previous
/// one answered, for `duration`.
pub(crate) async fn closed_loop<S: Transport>(
    client: EchoClient<S>,
    callers: usize,
    duration: Duration,
) -> LoadResult {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (mut client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut part = Part {
                    latencies_us: Vec::with_capacity(1 << 15),
                    ..Part::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let answer = call(&mut client).await;
                    part.record(answer, t.elapsed());
                }
                part
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut result = LoadResult::default();
    for t in tasks {
        // A panicked caller is a bug in this file; count its loss as errors.
        match t.await {
            Ok(part) => result.merge(part),
            Err(_) => result.errors += 1,
        }
    }
    result.finish(started.elapsed());
    result
}

/// How often the open-loop pacer wakes at most.
const PACER_TICK: Duration = Duration::from_micros(200);

/// One way of sending an echo call, so differently typed transports can
/// share one open-loop schedule.
pub(crate) type Caller = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<usize, ()>> + Send>> + Send + Sync,
>;

/// A [`Caller`] through `client`.
pub(crate) fn caller<S: Transport>(client: EchoClient<S>) -> Caller {
    Arc::new(move || {
        let mut client = client.clone();
        Box::pin(async move { call(&mut client).await })
    })
}

/// Sends `rate` requests per second on a fixed schedule for `duration`,
/// each as its own task, and measures each from its scheduled time.
pub(crate) async fn open_loop<S: Transport>(
    client: EchoClient<S>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let mut results = open_loop_interleaved(vec![caller(client)], rate, duration).await?;
    results.pop().context("no result")
}

/// [`open_loop`] over several callers at once: request `k` of the schedule
/// goes through `callers[k % n]`, so each sees `rate / n` and all see the
/// same moments of the machine (a stall, a busy neighbour). One result per
/// caller, in order.
pub(crate) async fn open_loop_interleaved(
    callers: Vec<Caller>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Vec<LoadResult>> {
    anyhow::ensure!(!callers.is_empty(), "no caller to send through");
    let count = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let started = Instant::now();
    let n = callers.len();
    std::thread::Builder::new()
        .name("open-loop-pacer".to_owned())
        .spawn(move || {
            let mut tasks = Vec::with_capacity(count as usize);
            let mut k = 0;
            while k < count {
                let next = started + interval.mul_f64(k as f64);
                // Wake at most every PACER_TICK and send everything due by
                // then. A wake-up per request cost the client's core (which
                // this thread shares) a context switch per request: at
                // 27,000 req/s that alone saturated it (p99 over 200 ms for
                // the raw Channel, against 3-6 ms batched). A send up to one
                // tick late is charged to its latency, on every path alike.
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next.max(now + PACER_TICK) - now);
                }
                let now = Instant::now();
                while k < count {
                    let due = started + interval.mul_f64(k as f64);
                    if due > now {
                        break;
                    }
                    let send = (callers[(k % n as u64) as usize])();
                    tasks.push(runtime.spawn(async move {
                        let answer = send.await;
                        (answer, Instant::now().saturating_duration_since(due))
                    }));
                    k += 1;
                }
            }
            let _ = done_tx.send(tasks);
        })?;
    let tasks = done_rx.await?;
    let mut parts: Vec<Part> = (0..n)
        .map(|_| Part {
            latencies_us: Vec::with_capacity(tasks.len() / n + 1),
            ..Part::default()
        })
        .collect();
    for (k, t) in tasks.into_iter().enumerate() {
        let part = &mut parts[k % n];
        match t.await {
            Ok((answer, took)) => part.record(answer, took),
            Err(_) => part.errors += 1,
        }
    }
    let elapsed = started.elapsed();
    Ok(parts
        .into_iter()
        .map(|part| {
            let mut result = LoadResult::default();
            result.merge(part);
            result.finish(elapsed);
            result
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_law_from_busy_seconds() {
        let mut part = Part::default();
        part.record(Ok(0), Duration::from_millis(500));
        part.record(Ok(0), Duration::from_millis(500));
        part.record(Ok(2), Duration::from_millis(250));
        part.record(Err(()), Duration::from_millis(900));
        let mut r = LoadResult::default();
        r.merge(part);
        r.finish(Duration::from_secs(1));
        assert_eq!(r.ok, 3);
        assert_eq!(r.errors, 1);
        assert_eq!(r.mean_in_flight(), vec![1.0, 0.0, 0.25]);
        assert_eq!(r.latencies_us, vec![250_000.0, 500_000.0, 500_000.0]);
        assert_eq!(r.latency(0.5), 500_000.0);
        assert!((r.throughput() - 3.0).abs() < 1e-9);
    }
}
