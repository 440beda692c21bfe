//! edsctl, the real binary, against a real eds-server (in-process, from
//! `eds_devkit::server`) watching the local control plane: every view with
//! golden files (normalised: pod IPs, namespace, versions, times and ages
//! vary per run), `watch` across a pod change, and `diff` catching a NACKing
//! client and a server held behind Kubernetes.
//!
//! Run against the shared cluster with
//! `EDS_CLUSTER_DIR=/work/main/.eds/cluster cargo test -p edsctl --test live`;
//! `UPDATE_GOLDEN=1` rewrites `tests/golden/live/`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use eds_devkit::harness::{TestCluster, TestNamespace, TestPod, eventually};
use eds_devkit::server::{Server, echo_addresses, echo_service, serves_exactly, start_server};
use eds_devkit::xds::{EDS, SotwClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(60);

/// What one run of the binary produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs edsctl with `args`, colour off, bounded in time.
async fn edsctl(args: &[&str]) -> anyhow::Result<Run> {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edsctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("KUBECONFIG")
        .env_remove("EDSCTL_SERVER")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, child)
        .await
        .with_context(|| format!("edsctl {args:?} did not finish within {WAIT:?}"))??;
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
        "edsctl {args:?} panicked: {}",
        run.stderr
    );
    Ok(run)
}

/// The pod IPs, namespace and volatile values of a live run, made stable.
fn normalise(text: &str, ns: &TestNamespace, pods: &[TestPod]) -> String {
    let mut pairs: Vec<(String, String)> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.ip().to_string(), format!("<ip-{i}>")))
        .collect();
    pairs.push((ns.name().to_owned(), "<ns>".to_owned()));
    common::mask_volatile(&common::replace_all(text, &pairs))
}

fn table(text: &str, ns: &TestNamespace, pods: &[TestPod]) -> String {
    common::realign(&normalise(text, ns, pods))
}

/// Ends a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs edsctl until `done` holds for its output (a client's ACK may be
/// in flight when it looks), then returns that run.
async fn edsctl_until(
    args: &[&str],
    what: &str,
    done: impl Fn(&Run) -> bool,
) -> anyhow::Result<Run> {
    eventually(what, WAIT, || async {
        let r = edsctl(args).await?;
        Ok(if done(&r) {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        })
    })
    .await
}

fn row_says(r: &Run, who: &str, what: &str) -> bool {
    r.stdout
        .lines()
        .any(|l| l.contains(who) && l.contains(what))
}

struct Fixture {
    ns: TestNamespace,
    pods: Vec<TestPod>,
    server: Server,
    key: String,
}

impl Fixture {
    async fn start(prefix: &str, pods: usize, flags: &[&str]) -> anyhow::Result<Self> {
        let cluster = TestCluster::shared()?;
        let ns = cluster.namespace(prefix).await?;
        let pods = echo_service(&ns, pods).await?;
        let mut all = vec!["--pod-labels=shard"];
        all.extend_from_slice(flags);
        let server = start_server(cluster, ns.name(), &all).await?;
        server.wait_ready().await?;
        let key = format!("echo.{}:8080", ns.name());
        let f = Self {
            ns,
            pods,
            server,
            key,
        };
        let want = f.pods.len();
        f.wait_endpoints(want).await?;
        Ok(f)
    }

    fn admin(&self) -> String {
        self.server.admin.to_string()
    }

    /// Waits until the server has `n` HEALTHY endpoints for the key, each
    /// with its pod's labels (the pod watch fills them in a little later).
    async fn wait_endpoints(&self, n: usize) -> anyhow::Result<()> {
        let path = format!("/debug/endpoints/{}", self.key);
        eventually(
            &format!("{n} healthy endpoints on the server"),
            WAIT,
            || async {
                Ok(match self.server.get(&path).await {
                    Ok((200, body)) => {
                        let healthy = body.matches("\"HEALTHY\"").count();
                        let labelled = body.matches("\"shard\"").count();
                        if healthy == n && labelled == n {
                            Ok(())
                        } else {
                            Err(body)
                        }
                    }
                    Ok((code, body)) => Err(format!("{code} {body}")),
                    Err(e) => Err(e.to_string()),
                })
            },
        )
        .await
    }

    /// A client that subscribes to the key and ACKs until it has every pod.
    async fn good_client(&self, id: &str, zone: &str) -> anyhow::Result<SotwClient> {
        let mut client = SotwClient::connect(self.server.xds, id, Some(zone)).await?;
        let names = [self.key.as_str()];
        client.send(EDS, &names, "", "", None).await?;
        let want = echo_addresses(&self.pods);
        client
            .recv_until(&names, WAIT, |r| serves_exactly(r, &self.key, &want))
            .await?;
        Ok(client)
    }

    /// A [`Self::good_client`] that goes on ACKing every later push (the
    /// pod watch republishes metadata) until the returned guard drops.
    async fn acking_client(&self, id: &str, zone: &str) -> anyhow::Result<AbortOnDrop> {
        let mut client = self.good_client(id, zone).await?;
        let key = self.key.clone();
        Ok(AbortOnDrop(tokio::spawn(async move {
            while let Ok(resp) = client.recv(Duration::from_secs(3600)).await {
                if client.ack(&resp, &[key.as_str()]).await.is_err() {
                    break;
                }
            }
        })))
    }

    /// Waits until the server has seen `acks` ACKs and `nacks` NACKs in total.
    async fn wait_acks(&self, acks: usize, nacks: usize) -> anyhow::Result<()> {
        eventually("the server to record ACKs and NACKs", WAIT, || async {
            let v = self.server.get_json("/debug/clients").await?;
            let count = |what: &str| -> usize {
                v["clients"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| c["stats"]["counters"][what].as_u64().unwrap_or(0) as usize)
                    .sum()
            };
            let (a, n) = (count("acks"), count("nacks"));
            // Every ACK has landed when none is pending.
            let pending = v.to_string().contains("\"pending_nonce\":\"");
            Ok(if a >= acks && n >= nacks && !pending {
                Ok(())
            } else {
                Err(format!("acks {a}, nacks {n}, pending {pending}"))
            })
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_of_a_live_service_matches_its_golden_file() -> anyhow::Result<()> {
    let f = Fixture::start("ctl-views", 3, &[]).await?;
    let _client = f.acking_client("golden-client", "zone-a").await?;
    f.wait_acks(1, 0).await?;
    let admin = f.admin();
    let (ns, pods) = (&f.ns, &f.pods);
    let base = ["--server", admin.as_str()];
    let run = |extra: Vec<&str>| {
        let args: Vec<String> = base
            .iter()
            .chain(extra.iter())
            .map(|s| (*s).to_owned())
            .collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            edsctl(&args).await
        }
    };

    let r = run(vec!["services", "-n", ns.name()]).await?;
    assert_eq!(r.code, 0, "{r:?}");
    common::check("live/services.table.txt", &table(&r.stdout, ns, pods));
    let r = run(vec!["-o", "json", "services", "-n", ns.name()]).await?;
    assert_eq!(r.code, 0, "{r:?}");
    common::check("live/services.json", &normalise(&r.stdout, ns, pods));

    let r = run(vec!["endpoints", &f.key]).await?;
    assert_eq!(r.code, 0, "{r:?}");
    common::check("live/endpoints.table.txt", &table(&r.stdout, ns, pods));
    let r = run(vec![
        "endpoints",
        "echo:grpc",
        "-n",
        ns.name(),
        "-o",
        "wide",
        "--zone",
        "zone-b",
    ])
    .await?;
    assert_eq!(r.code, 0, "{r:?}");
    common::check(
        "live/endpoints.zone-b.wide.txt",
        &table(&r.stdout, ns, pods),
    );
    let r = run(vec!["-o", "json", "endpoints", &f.key]).await?;
    assert_eq!(r.code, 0, "{r:?}");
    common::check("live/endpoints.json", &normalise(&r.stdout, ns, pods));

    let args = ["--server", admin.as_str(), "clients", "-n", ns.name()];
    let r = edsctl_until(&args, "the client to be up to date", |r| {
        row_says(r, "golden-client", " acked ")
    })
    .await?;
    assert_eq!(r.code, 0, "{r:?}");
    common::check("live/clients.table.txt", &table(&r.stdout, ns, pods));

    let r = run(vec![
        "simulate",
        &f.key,
        "--policy",
        "round-robin,ring-hash",
        "--from-zone",
        "zone-a",
        "--key",
        "user-1",
        "-n",
        "300",
        "-o",
        "json",
    ])
    .await?;
    assert_eq!(r.code, 0, "{r:?}");
    let sim: serde_json::Value = serde_json::from_str(&r.stdout)?;
    let picks = |i: usize| -> Vec<u64> {
        sim["results"][i]["picks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_u64)
            .collect()
    };
    // Round robin from zone-a stays in zone-a's two pods; one hash key, one pod.
    assert_eq!(picks(0).iter().sum::<u64>(), 300);
    assert_eq!(picks(0).iter().filter(|&&n| n == 150).count(), 2, "{sim}");
    assert_eq!(picks(1).iter().filter(|&&n| n == 300).count(), 1, "{sim}");

    // A key the server does not have: not found, with the close match.
    let wrong = format!("echo.{}:8081", ns.name());
    let r = run(vec!["endpoints", &wrong]).await?;
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains(&format!("did you mean {}", f.key)),
        "{}",
        r.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_a_pod_change_with_a_timestamp() -> anyhow::Result<()> {
    let f = Fixture::start("ctl-watch", 2, &[]).await?;
    let admin = f.admin();
    let spawn = |format: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_edsctl"))
            .args(["--server", &admin, "-o", format, "watch", &f.key])
            .args([
                "--interval",
                "100ms",
                "--max-events",
                "1",
                "--timeout",
                "60s",
            ])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    };
    let mut text = spawn("table")?;
    let mut json = spawn("json")?;
    // Both must have taken their first look before the change.
    let mut text_out = BufReader::new(text.stdout.take().context("stdout")?);
    let mut header = String::new();
    tokio::time::timeout(WAIT, text_out.read_line(&mut header)).await??;
    assert!(header.starts_with("# watching "), "{header:?}");
    let mut json_err = BufReader::new(json.stderr.take().context("stderr")?);
    let mut json_header = String::new();
    tokio::time::timeout(WAIT, json_err.read_line(&mut json_header)).await??;
    assert!(json_header.starts_with("# watching "), "{json_header:?}");

    f.pods[1].set_ready(false).await?;

    let status = tokio::time::timeout(WAIT, text.wait()).await??;
    let mut rest = String::new();
    text_out.read_to_string(&mut rest).await?;
    assert!(status.success(), "{status:?} {rest}");
    let addr = format!("{}:9090", f.pods[1].ip());
    let line = rest
        .lines()
        .find(|l| l.contains(&addr))
        .with_context(|| format!("no event for {addr} in {rest:?}"))?;
    let (at, change) = line.split_once("  ").context("timestamp")?;
    edsctl::model::parse_time(at).with_context(|| format!("timestamp of {line:?}"))?;
    // The server keeps a not-ready pod as UNHEALTHY (zone capacity), so the
    // watch shows a health change, not a removal.
    assert!(change.starts_with(&format!("~ {addr}")), "{line:?}");
    assert!(change.contains("health HEALTHY -> UNHEALTHY"), "{line:?}");

    let out = tokio::time::timeout(WAIT, json.wait_with_output()).await??;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        1,
        "--max-events 1 prints one event: {text}"
    );
    let event: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(event["op"], "~");
    assert_eq!(event["address"], addr.as_str());
    assert_eq!(event["endpoint"]["pod"], "echo-1");
    assert_eq!(event["endpoint"]["health"], "UNHEALTHY");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_agrees_then_flags_a_client_that_nacked() -> anyhow::Result<()> {
    let f = Fixture::start("ctl-diff", 2, &[]).await?;
    let cluster = TestCluster::shared()?;
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let _good = f.acking_client("good-client", "zone-a").await?;
    f.wait_acks(1, 0).await?;
    let admin = f.admin();
    let args = [
        "--kubeconfig",
        &kubeconfig,
        "--server",
        &admin,
        "diff",
        &f.key,
    ];
    let r = edsctl_until(&args, "diff to agree", |r| r.code == 0).await?;
    assert!(r.stdout.contains("AGREE"), "{}", r.stdout);

    // A client that rejects what it is sent.
    let mut nacker = SotwClient::connect(f.server.xds, "nacking-client", Some("zone-b")).await?;
    let names = [f.key.as_str()];
    nacker.send(EDS, &names, "", "", None).await?;
    let resp = nacker.recv(WAIT).await?;
    nacker
        .send(
            EDS,
            &names,
            "",
            &resp.nonce,
            Some("refusing this ClusterLoadAssignment for the test"),
        )
        .await?;
    f.wait_acks(1, 1).await?;

    let r = edsctl_until(&args, "the good client to be up to date", |r| {
        row_says(r, "good-client", " acked ")
    })
    .await?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("DISAGREE"), "{}", r.stdout);
    let normalised = table(&r.stdout, &f.ns, &f.pods);
    common::check("live/diff.nack.table.txt", &normalised);

    let mut json_args = args.to_vec();
    json_args.extend(["-o", "json"]);
    let r = edsctl_until(&json_args, "the good client to be up to date", |r| {
        r.stdout.contains("\"verdict\": \"acked\"")
    })
    .await?;
    assert_eq!(r.code, 1, "{r:?}");
    common::check("live/diff.nack.json", &normalise(&r.stdout, &f.ns, &f.pods));
    let report: serde_json::Value = serde_json::from_str(&r.stdout)?;
    assert_eq!(report["agree"], false);
    let rows = report["clients"].as_array().context("clients")?;
    let nacked = rows
        .iter()
        .find(|c| c["node_id"] == "nacking-client")
        .context("the nacking client is listed")?;
    assert_eq!(nacked["verdict"], "nacked");
    assert_eq!(
        nacked["reason"],
        "refusing this ClusterLoadAssignment for the test"
    );
    let good = rows
        .iter()
        .find(|c| c["node_id"] == "good-client")
        .context("the good client is listed")?;
    assert_eq!(good["verdict"], "acked");
    drop(nacker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_sees_kubernetes_ahead_of_a_server_holding_back_a_drop() -> anyhow::Result<()> {
    // The mass-drop guard holds back losing 1 of 4 endpoints (> 20%) for
    // ten minutes: Kubernetes and the server disagree for that long.
    let f = Fixture::start(
        "ctl-held",
        4,
        &["--mass-drop-fraction=0.2", "--mass-drop-grace=10m"],
    )
    .await?;
    let kubeconfig = TestCluster::shared()?.kubeconfig().display().to_string();
    let admin = f.admin();
    f.pods[0].set_ready(false).await?;
    let args = [
        "--kubeconfig",
        &kubeconfig,
        "--server",
        &admin,
        "-o",
        "json",
        "diff",
        &f.key,
    ];
    let addr = format!("{}:9090", f.pods[0].ip());
    let report = eventually("diff to see the held-back endpoint", WAIT, || async {
        let r = edsctl(&args).await?;
        if r.code == 0 {
            return Ok(Err("still agreeing".to_owned()));
        }
        if r.code != 1 {
            bail!("unexpected exit {}: {}", r.code, r.stderr);
        }
        Ok(Ok(serde_json::from_str::<serde_json::Value>(&r.stdout)?))
    })
    .await?;
    let row = report["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["address"] == addr.as_str())
        .context("the dropped endpoint is in the diff")?;
    assert_eq!(row["kubernetes"], "not-serving", "{report}");
    assert_eq!(row["server"], "HEALTHY", "{report}");
    assert_eq!(row["verdict"], "health-differs", "{report}");
    Ok(())
}
