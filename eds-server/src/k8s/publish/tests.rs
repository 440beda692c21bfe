//! Publisher tests: an index built from fixtures, time as offsets from one
//! origin instant. Nothing here waits.

use super::*;
use crate::k8s::fixtures::*;
use crate::k8s::index::IndexConfig;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const WINDOW: Duration = Duration::from_millis(100);
const GRACE: Duration = Duration::from_secs(30);

/// Every time in a test is `origin + ms`; only differences matter.
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Self(Instant::now())
    }
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn publisher() -> Publisher {
    Publisher::new(PublisherConfig {
        coalesce_window: WINDOW,
        ..PublisherConfig::default()
    })
    .unwrap()
}

fn key(s: &str) -> ServiceKey {
    s.parse().unwrap()
}

/// Service `name` in `demo` with one port 8080 -> 9090.
fn service(name: &str) -> crate::k8s::fixtures::Svc {
    svc(name, "demo").port("grpc", 8080, target_name("grpc"))
}

/// One slice for `name` with endpoints `10.<net>.0.<i>` for each i in `ids`.
fn endpoints(
    name: &str,
    net: u8,
    ids: impl IntoIterator<Item = u8>,
    cond: fn() -> Ep,
) -> EndpointSlice {
    let mut s = slice(&format!("{name}-a"), "demo", name).port("grpc", 9090);
    for i in ids {
        s = s.ep(&format!("10.{net}.0.{i}"), [cond()]);
    }
    s.build()
}

fn index_with(sets: &[(&str, u8, std::ops::RangeInclusive<u8>)]) -> Index {
    let mut ix = Index::new(IndexConfig::default());
    for (name, net, ids) in sets {
        ix.apply_service(&service(name));
        ix.apply_slice(&endpoints(name, *net, ids.clone(), ready), t(1));
    }
    ix
}

/// Addresses' last octets and health for a key, compactly.
fn summary(t: &Topology, k: &str) -> Vec<String> {
    t.snapshot
        .get(&key(k))
        .map(|s| {
            s.endpoints()
                .iter()
                .map(|e| format!("{} {}", e.address.ip(), e.health))
                .collect()
        })
        .unwrap_or_default()
}

fn count(t: &Topology, k: &str) -> usize {
    t.snapshot.get(&key(k)).map_or(0, |s| s.len())
}

/// Publishes the index's state once, as the first topology, at the origin.
fn first_publish(p: &mut Publisher, ix: &Index, clock: &Clock) -> Arc<Topology> {
    p.on_change(clock.at(0));
    p.poll(clock.at(0), ix).expect("first publication")
}

#[test]
fn a_change_after_a_quiet_window_is_published_at_once() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=3)]);
    let mut p = publisher();
    assert_eq!(p.next_deadline(), None, "nothing to do before a change");
    assert!(p.poll(clock.at(0), &ix).is_none());

    // The first publication does not wait for a window.
    p.on_change(clock.at(0));
    assert_eq!(p.next_deadline(), Some(clock.at(0)));
    let topo = p.poll(clock.at(0), &ix).expect("published at once");
    assert_eq!(count(&topo, "echo.demo:8080"), 3);
    assert_eq!(p.next_deadline(), None);

    // Exactly one window later is quiet enough: at once again.
    ix.apply_slice(&endpoints("echo", 1, 1..=4, ready), t(2));
    p.on_change(clock.at(100));
    assert_eq!(p.next_deadline(), Some(clock.at(100)));
    let topo = p.poll(clock.at(100), &ix).expect("leading edge");
    assert_eq!(count(&topo, "echo.demo:8080"), 4);

    // Long after: at once, and a late poll publishes whenever it comes.
    ix.apply_slice(&endpoints("echo", 1, 1..=5, ready), t(3));
    p.on_change(clock.at(5_000));
    assert_eq!(p.next_deadline(), Some(clock.at(5_000)));
    let topo = p.poll(clock.at(5_040), &ix).expect("late poll");
    assert_eq!(count(&topo, "echo.demo:8080"), 5);
    assert_eq!(p.stats().published, 3);
}

#[test]
fn a_burst_becomes_a_leading_push_and_one_trailing_push() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=3)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    // A rollout starting after a quiet period: its first change goes out at
    // once, the rest of it gathers until one window after that build.
    ix.apply_slice(&endpoints("echo", 1, 1..=4, ready), t(2));
    p.on_change(clock.at(1_000));
    let topo = p.poll(clock.at(1_000), &ix).expect("leading edge");
    assert_eq!(count(&topo, "echo.demo:8080"), 4);
    for (ms, n) in [(1_010, 5), (1_040, 6), (1_090, 7)] {
        ix.apply_slice(&endpoints("echo", 1, 1..=n, ready), t(3));
        p.on_change(clock.at(ms));
        assert_eq!(
            p.next_deadline(),
            Some(clock.at(1_100)),
            "later changes do not move the window's end"
        );
        assert!(p.poll(clock.at(ms), &ix).is_none(), "inside the window");
    }
    assert!(p.poll(clock.at(1_099), &ix).is_none(), "window still open");
    let topo = p.poll(clock.at(1_100), &ix).expect("trailing edge");
    assert_eq!(count(&topo, "echo.demo:8080"), 7, "the burst's last state");
    assert_eq!(p.next_deadline(), None);
    assert!(p.poll(clock.at(1_500), &ix).is_none());
    assert_eq!(p.published(), Some(&topo));
    assert_eq!(p.stats().published, 3, "first, leading, trailing");

    // A change right after the trailing build waits for its window too.
    ix.apply_slice(&endpoints("echo", 1, 1..=8, ready), t(4));
    p.on_change(clock.at(1_150));
    assert_eq!(p.next_deadline(), Some(clock.at(1_200)));
    assert!(p.poll(clock.at(1_150), &ix).is_none());
    let topo = p.poll(clock.at(1_200), &ix).expect("second trailing edge");
    assert_eq!(count(&topo, "echo.demo:8080"), 8);
}

#[test]
fn a_steady_trickle_publishes_once_per_window() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=3)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    // A change every 10 ms for one second from t = 1,000, polled after each
    // change and at each deadline, as the async driver does.
    let mut builds_at = Vec::new();
    let mut n = 3u8;
    for ms in (1_000..2_000).step_by(10) {
        if let Some(d) = p.next_deadline().filter(|d| *d <= clock.at(ms))
            && p.poll(d, &ix).is_some()
        {
            builds_at.push(d - clock.at(0));
        }
        n = n.wrapping_add(1).max(1);
        ix.apply_slice(&endpoints("echo", 1, 1..=n, ready), t(u64::from(n)));
        p.on_change(clock.at(ms));
        if p.poll(clock.at(ms), &ix).is_some() {
            builds_at.push(Duration::from_millis(ms));
        }
    }
    let d = p.next_deadline().expect("the last changes are pending");
    assert!(p.poll(d, &ix).is_some());
    builds_at.push(d - clock.at(0));

    // Leading edge at 1,000, then one every window: 1,100 ... 2,000.
    let expected: Vec<Duration> = (0..=10)
        .map(|i| Duration::from_millis(1_000 + 100 * i))
        .collect();
    assert_eq!(builds_at, expected);
}

#[test]
fn an_unchanged_build_does_not_delay_the_next_change() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=3)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    // A change that changes nothing publishes nothing.
    p.on_change(clock.at(1_000));
    assert!(p.poll(clock.at(1_000), &ix).is_none());
    assert_eq!(p.stats().unchanged, 1);
    assert_eq!(p.next_deadline(), None);

    // So a real change 30 ms later is not held for a window: nothing was
    // sent within the last one.
    ix.apply_slice(&endpoints("echo", 1, 1..=4, ready), t(2));
    p.on_change(clock.at(1_030));
    assert_eq!(p.next_deadline(), Some(clock.at(1_030)));
    assert!(p.poll(clock.at(1_030), &ix).is_some());

    // But a publish does start one.
    ix.apply_slice(&endpoints("echo", 1, 1..=5, ready), t(3));
    p.on_change(clock.at(1_040));
    assert_eq!(p.next_deadline(), Some(clock.at(1_130)));
}

#[test]
fn a_zero_window_publishes_every_change_at_once() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=3)]);
    let mut p = Publisher::new(PublisherConfig {
        coalesce_window: Duration::ZERO,
        ..PublisherConfig::default()
    })
    .unwrap();
    for (ms, n) in [(0, 3), (1, 4), (2, 5)] {
        ix.apply_slice(&endpoints("echo", 1, 1..=n, ready), t(2));
        p.on_change(clock.at(ms));
        assert_eq!(p.next_deadline(), Some(clock.at(ms)));
        let topo = p.poll(clock.at(ms), &ix).expect("at once");
        assert_eq!(count(&topo, "echo.demo:8080"), usize::from(n));
    }
}

#[test]
fn a_mass_drop_is_held_and_other_services_still_publish() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=10), ("api", 2, 1..=5)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    // echo loses 7 of 10 (70% > 50%); api gains one.
    ix.apply_slice(&endpoints("echo", 1, 1..=3, ready), t(2));
    ix.apply_slice(&endpoints("api", 2, 1..=6, ready), t(2));
    p.on_change(clock.at(1_000));
    let topo = p.poll(clock.at(1_100), &ix).expect("api changed");
    assert_eq!(count(&topo, "echo.demo:8080"), 10, "echo held");
    assert_eq!(count(&topo, "api.demo:8080"), 6, "api published");
    assert_eq!(p.stats().held_back, 1);
    let held: Vec<_> = p.held().collect();
    assert_eq!(held, [(&key("echo.demo:8080"), clock.at(1_100))]);
    assert_eq!(p.next_deadline(), Some(clock.at(1_100) + GRACE));

    // Further changes during the hold neither end nor extend it.
    ix.apply_slice(&endpoints("echo", 1, 1..=2, ready), t(3));
    p.on_change(clock.at(10_000));
    assert!(
        p.poll(clock.at(10_100), &ix).is_none(),
        "still held, nothing new"
    );
    assert_eq!(p.stats().held_back, 1);
    assert_eq!(p.next_deadline(), Some(clock.at(1_100) + GRACE));

    // The drop persisted past the grace period: believe it.
    assert!(p.poll(clock.at(31_099), &ix).is_none());
    let topo = p.poll(clock.at(31_100), &ix).expect("hold expired");
    assert_eq!(
        summary(&topo, "echo.demo:8080"),
        ["10.1.0.1 HEALTHY", "10.1.0.2 HEALTHY"]
    );
    assert_eq!(p.stats().persisted, 1);
    assert_eq!(p.held().count(), 0);
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn a_hold_ends_when_the_endpoints_come_back() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=10)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    ix.apply_slice(&endpoints("echo", 1, 1..=1, ready), t(2));
    p.on_change(clock.at(1_000));
    // Only the held set, which is what was published: nothing to send.
    assert!(p.poll(clock.at(1_100), &ix).is_none());
    assert_eq!(p.stats().held_back, 1);

    // Back before the grace period ends (first-seen times are new, so the
    // endpoints differ from the held ones and are published).
    ix.apply_slice(&endpoints("echo", 1, 1..=10, ready), t(5));
    p.on_change(clock.at(5_000));
    let topo = p.poll(clock.at(5_100), &ix).expect("recovered");
    assert_eq!(count(&topo, "echo.demo:8080"), 10);
    let e = topo
        .snapshot
        .get(&key("echo.demo:8080"))
        .unwrap()
        .endpoints()[1]
        .clone();
    assert_eq!(
        e.ready_since,
        Some(t(5)),
        "the index's endpoints, not the held copies"
    );
    assert_eq!(p.stats().recovered, 1);
    assert_eq!(p.held().count(), 0);
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn replacements_are_sent_during_a_hold() {
    // A Recreate rollout: all old pods go, new ones come up in the window.
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=4)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    ix.apply_slice(&endpoints("echo", 1, 11..=14, ready), t(2));
    p.on_change(clock.at(1_000));
    let topo = p.poll(clock.at(1_100), &ix).expect("new pods");
    assert_eq!(count(&topo, "echo.demo:8080"), 8, "4 held + 4 new");
    let topo = p.poll(clock.at(31_100), &ix).expect("hold expired");
    assert_eq!(
        summary(&topo, "echo.demo:8080"),
        [
            "10.1.0.11 HEALTHY",
            "10.1.0.12 HEALTHY",
            "10.1.0.13 HEALTHY",
            "10.1.0.14 HEALTHY"
        ]
    );
}

#[test]
fn endpoints_turning_unhealthy_count_as_dropped() {
    let clock = Clock::new();
    // The index keeps not-serving endpoints as UNHEALTHY.
    let mut ix = Index::new(IndexConfig::default());
    ix.apply_service(&service("echo"));
    ix.apply_slice(&endpoints("echo", 1, 1..=4, ready), t(1));
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    ix.apply_slice(&endpoints("echo", 1, 1..=4, not_ready), t(2));
    p.on_change(clock.at(1_000));
    assert!(
        p.poll(clock.at(1_100), &ix).is_none(),
        "held: the healthy copies stay"
    );
    assert_eq!(p.stats().held_back, 1);
    let topo = p.poll(clock.at(31_100), &ix).expect("persisted");
    assert_eq!(summary(&topo, "echo.demo:8080")[0], "10.1.0.1 UNHEALTHY");
}

#[test]
fn deleting_a_service_is_not_a_mass_drop_but_losing_every_slice_is() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=10), ("api", 2, 1..=10)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    ix.delete_service(&service("echo"));
    ix.delete_slice(&endpoints("api", 2, [], ready), t(2));
    p.on_change(clock.at(1_000));
    let topo = p.poll(clock.at(1_100), &ix).expect("echo is gone");
    assert!(topo.snapshot.get(&key("echo.demo:8080")).is_none());
    assert_eq!(
        count(&topo, "api.demo:8080"),
        10,
        "api lost all slices: held"
    );
    assert_eq!(p.stats().held_back, 1);
    assert_eq!(
        p.held().map(|(k, _)| k.to_string()).collect::<Vec<_>>(),
        ["api.demo:8080"]
    );

    // The Service goes while held: the hold goes with it.
    ix.delete_service(&service("api"));
    p.on_change(clock.at(2_000));
    let topo = p.poll(clock.at(2_100), &ix).expect("api gone");
    assert!(topo.snapshot.services().next().is_none());
    assert_eq!(p.held().count(), 0);
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn planned_changes_are_not_drops() {
    let clock = Clock::new();
    let mut ix = index_with(&[("echo", 1, 1..=10)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);

    // Half at once (not more than half): published.
    ix.apply_slice(&endpoints("echo", 1, 1..=5, ready), t(2));
    p.on_change(clock.at(1_000));
    assert_eq!(
        count(&p.poll(clock.at(1_100), &ix).unwrap(), "echo.demo:8080"),
        5
    );

    // Healthy to draining, then draining ones leaving: a rollout.
    let mut s = slice("echo-a", "demo", "echo").port("grpc", 9090);
    for i in 1..=5u8 {
        s = s.ep(
            &format!("10.1.0.{i}"),
            [if i <= 4 { draining() } else { ready() }],
        );
    }
    ix.apply_slice(&s, t(3));
    p.on_change(clock.at(2_000));
    assert_eq!(
        summary(&p.poll(clock.at(2_100), &ix).unwrap(), "echo.demo:8080"),
        [
            "10.1.0.1 DRAINING",
            "10.1.0.2 DRAINING",
            "10.1.0.3 DRAINING",
            "10.1.0.4 DRAINING",
            "10.1.0.5 HEALTHY"
        ]
    );
    ix.apply_slice(&endpoints("echo", 1, 5..=5, ready), t(4));
    p.on_change(clock.at(3_000));
    assert_eq!(
        count(&p.poll(clock.at(3_100), &ix).unwrap(), "echo.demo:8080"),
        1
    );
    assert_eq!(p.stats().held_back, 0);
}

#[test]
fn small_services_and_a_disabled_guard_are_not_guarded() {
    let clock = Clock::new();
    // 3 endpoints: below the default minimum of 4.
    let mut ix = index_with(&[("echo", 1, 1..=3)]);
    let mut p = publisher();
    first_publish(&mut p, &ix, &clock);
    ix.apply_slice(&endpoints("echo", 1, [], ready), t(2));
    p.on_change(clock.at(1_000));
    assert_eq!(
        count(&p.poll(clock.at(1_100), &ix).unwrap(), "echo.demo:8080"),
        0
    );

    let mut ix = index_with(&[("echo", 1, 1..=10)]);
    let mut p = Publisher::new(PublisherConfig {
        coalesce_window: WINDOW,
        mass_drop_fraction: 1.0,
        ..PublisherConfig::default()
    })
    .unwrap();
    first_publish(&mut p, &ix, &clock);
    ix.apply_slice(&endpoints("echo", 1, [], ready), t(2));
    p.on_change(clock.at(1_000));
    assert_eq!(
        count(&p.poll(clock.at(1_100), &ix).unwrap(), "echo.demo:8080"),
        0
    );
    assert_eq!(p.stats().held_back, 0);
}

#[test]
fn the_first_publication_is_never_held() {
    let clock = Clock::new();
    let mut ix = Index::new(IndexConfig::default());
    ix.apply_service(&service("echo"));
    let mut p = publisher();
    let topo = first_publish(&mut p, &ix, &clock);
    assert_eq!(count(&topo, "echo.demo:8080"), 0);
    assert!(topo.snapshot.get(&key("echo.demo:8080")).is_some());
}

#[test]
fn bad_config_is_rejected() {
    for fraction in [-0.1, 1.5, f64::NAN] {
        let err = Publisher::new(PublisherConfig {
            mass_drop_fraction: fraction,
            ..PublisherConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, PublishConfigError::MassDropFraction(_)));
        assert!(err.to_string().contains("between 0.0 and 1.0"));
    }
    assert!(PublisherConfig::default().validate().is_ok());
}

#[test]
fn poll_with_takes_any_source() {
    let clock = Clock::new();
    let mut p = publisher();
    p.on_change(clock.at(0));
    let topo = p.poll_with(clock.at(0), Topology::default).expect("first");
    assert_eq!(*topo, Topology::default());
}
