//! The demo (`cargo xtask demo`) run headless for a bounded time, asserting
//! what it is meant to show: lb-client balances per request and routes
//! around a killed pod without a failed request, where per-connection
//! balancing pins load unevenly and fails on the dead pod's connections.
//!
//! Only robust inequalities and counts are asserted, never a latency or a
//! rate: the figures depend on the machine and are printed for people.

use std::time::Duration;

use anyhow::ensure;
use eds_demo::{DemoOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_headless_lb_client_routes_around_a_killed_pod() -> anyhow::Result<()> {
    let opts = DemoOptions {
        duration: Duration::from_secs(20),
        kill_after: Some(Duration::from_secs(10)),
        headless: true,
        ..DemoOptions::default()
    };
    let mut out = std::io::stdout();
    let s = run(opts, &mut out).await?;

    ensure!(
        s.lb_failed == 0,
        "lb-client had {} failed requests: {:?}",
        s.lb_failed,
        s.lb_errors
    );
    let kill = s.kill.as_ref().expect("the demo killed a pod");
    ensure!(
        kill.lb_replies_after_propagation == 0,
        "{} answered {} lb-client requests started after lb-client saw it go",
        kill.pod,
        kill.lb_replies_after_propagation
    );
    // Per-request balancing reaches every pod; per-connection reaches only
    // the pods its connections happen to be pinned to.
    for p in &s.pods {
        ensure!(p.lb.requests > 0, "lb-client never reached {}", p.pod);
        ensure!(
            (p.connections > 0) == (p.per_connection.requests > 0),
            "{}: {} pinned connections but {} per-connection replies",
            p.pod,
            p.connections,
            p.per_connection.requests
        );
    }
    let victim = s
        .pods
        .iter()
        .find(|p| p.pod == kill.pod)
        .expect("the victim is a demo pod");
    if victim.connections > 0 {
        ensure!(
            kill.per_connection_failed_after_stop > 0,
            "per-connection channels pinned to the dead {} did not fail: the baseline is not what it claims",
            kill.pod
        );
    }
    ensure!(
        s.lb_in_flight_spread < s.per_connection_in_flight_spread,
        "lb-client's per-pod in-flight spread (max/mean {:.2}) is not below per-connection's ({:.2})",
        s.lb_in_flight_spread,
        s.per_connection_in_flight_spread
    );
    Ok(())
}
