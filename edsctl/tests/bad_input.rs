//! Bad input and failures outside edsctl's control: each one gets a clear
//! message saying what was tried, a hint, and its documented exit code;
//! never a panic or a stack trace. The discovery cases run against the
//! local control plane (no kubelet there, so a port-forward cannot work:
//! the test checks that edsctl says what it found and what failed).

use std::time::Duration;

use anyhow::Context;
use eds_devkit::harness::{PodSpec, ServicePortSpec, Target, TestCluster, eventually};
use eds_devkit::server::refused_kubeconfig;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

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
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "edsctl {args:?} panicked: {}",
        run.stderr
    );
    Ok(run)
}

#[track_caller]
fn expect(run: &Run, code: i32, needles: &[&str]) {
    // Shown with --nocapture, to read the messages as a user would.
    eprintln!("exit {}:\n{}", run.code, run.stderr);
    assert_eq!(run.code, code, "{run:#?}");
    for n in needles {
        assert!(run.stderr.contains(n), "stderr lacks {n:?}: {}", run.stderr);
    }
    assert!(
        run.stdout.is_empty(),
        "nothing on stdout on failure: {run:#?}"
    );
}

fn closed_port() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

#[tokio::test]
async fn malformed_service_keys_are_usage_errors() -> anyhow::Result<()> {
    let server = closed_port()?;
    for key in [
        "echo",
        "echo.demo",
        "Echo.demo:8080",
        "echo.demo:0",
        "echo.demo:99999",
        "echo.demo.cluster:80",
        "echo.demo:port_with_underscore",
    ] {
        for cmd in ["endpoints", "watch", "diff", "simulate"] {
            let r = edsctl(&["--server", &server, cmd, key]).await?;
            expect(&r, 2, &["is not a service key", "hint:"]);
        }
    }
    // Without a namespace, the hint says how to give one.
    let r = edsctl(&["--server", &server, "endpoints", "echo:8080"]).await?;
    expect(&r, 2, &["no namespace", "-n <namespace>"]);
    Ok(())
}

#[tokio::test]
async fn unknown_formats_flags_and_policies_are_usage_errors() -> anyhow::Result<()> {
    let r = edsctl(&["-o", "xml", "services"]).await?;
    expect(&r, 2, &["xml", "table", "json", "yaml"]);
    let r = edsctl(&["services", "--bogus"]).await?;
    expect(&r, 2, &["--bogus"]);
    let r = edsctl(&["simulate", "echo.demo:8080", "--policy", "fastest"]).await?;
    expect(&r, 2, &["unknown balancing policy", "round-robin"]);
    let r = edsctl(&["--server", "127.0.0.1", "services"]).await?;
    expect(&r, 2, &["--server", "no port"]);
    let r = edsctl(&["--server", "ftp://x:1", "services"]).await?;
    expect(&r, 2, &["only http:// and https://"]);
    let r = edsctl(&[
        "--server",
        "https://127.0.0.1:1",
        "--ca-file",
        "/nonexistent/ca.pem",
        "services",
    ])
    .await?;
    expect(&r, 2, &["--ca-file", "/nonexistent/ca.pem"]);
    let r = edsctl(&["watch", "echo.demo:8080", "--interval", "soon"]).await?;
    expect(&r, 2, &["soon"]);
    // --help documents the exit codes; completions work.
    let r = edsctl(&["--help"]).await?;
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("Exit codes:") && r.stdout.contains("3  eds-server unreachable"),
        "{}",
        r.stdout
    );
    for shell in ["bash", "zsh", "fish"] {
        let r = edsctl(&["completions", shell]).await?;
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains("edsctl") && r.stdout.contains("simulate"),
            "{shell}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_names_the_address() -> anyhow::Result<()> {
    let server = closed_port()?;
    for cmd in [
        vec!["services"],
        vec!["clients"],
        vec!["endpoints", "echo.demo:8080"],
    ] {
        let mut args = vec!["--server", server.as_str(), "--request-timeout", "5s"];
        args.extend(cmd);
        let r = edsctl(&args).await?;
        expect(&r, 3, &["cannot reach eds-server at", &server, "hint:"]);
    }
    Ok(())
}

#[tokio::test]
async fn a_kubeconfig_without_the_eds_server_service_says_where_it_looked() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("ctl-nosvc").await?;
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let r = edsctl(&[
        "--kubeconfig",
        &kubeconfig,
        "--server-namespace",
        ns.name(),
        "services",
    ])
    .await?;
    expect(
        &r,
        3,
        &[
            &format!("Service {}/eds-server", ns.name()),
            "no such Service",
            "--server",
        ],
    );
    // The environment fallback names the Service too.
    let r = edsctl(&[
        "--kubeconfig",
        &kubeconfig,
        "--server-namespace",
        ns.name(),
        "--server-service",
        "my-eds",
        "clients",
    ])
    .await?;
    expect(&r, 3, &[&format!("Service {}/my-eds", ns.name())]);
    // No kubeconfig at all.
    let r = edsctl(&["--kubeconfig", "/nonexistent/kubeconfig", "services"]).await?;
    expect(
        &r,
        5,
        &[
            "cannot load the kubeconfig",
            "/nonexistent/kubeconfig",
            "--server",
        ],
    );
    ns.delete().await
}

#[tokio::test]
async fn discovery_reports_the_pod_it_found_when_port_forward_fails() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("ctl-pf").await?;
    ns.node("node-zone-a", "zone-a").await?;
    ns.service(
        "eds-server",
        "eds-server",
        &[ServicePortSpec {
            name: "admin".into(),
            port: 18001,
            target: Target::Name("admin".into()),
        }],
        &[],
    )
    .await?;
    let pod = ns
        .pod(PodSpec::new("eds-server-0", "eds-server", "node-zone-a").port("admin", 18001))
        .await?;
    pod.set_ready(true).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(ns.client().clone(), ns.name());
    eventually(
        "a ready endpoint for the eds-server Service",
        WAIT,
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=eds-server"))
                .await?;
            let ready = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true));
            Ok(if ready {
                Ok(())
            } else {
                Err(format!("{} slices", list.items.len()))
            })
        },
    )
    .await?;
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let r = edsctl(&[
        "--kubeconfig",
        &kubeconfig,
        "--server-namespace",
        ns.name(),
        "--request-timeout",
        "10s",
        "services",
    ])
    .await?;
    expect(
        &r,
        3,
        &[
            &format!(
                "port-forward to pod {}/eds-server-0 port 18001 failed",
                ns.name()
            ),
            "caused by:",
            "--server",
        ],
    );
    pod.delete_now().await?;
    ns.delete().await
}

#[tokio::test]
async fn refused_credentials_and_missing_permissions_are_kubernetes_errors() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let refused = refused_kubeconfig(cluster, "edsctl")?;
    let refused = refused.display().to_string();
    let r = edsctl(&["--kubeconfig", &refused, "services"]).await?;
    expect(
        &r,
        5,
        &[
            "Kubernetes API: get Service eds-system/eds-server",
            "refused the credentials",
        ],
    );
    let r = edsctl(&[
        "--kubeconfig",
        &refused,
        "--server",
        &closed_port()?,
        "diff",
        "echo.demo:8080",
    ])
    .await?;
    // diff reaches the server first; it is down, so that is what it says.
    expect(&r, 3, &["cannot reach eds-server"]);

    // A service account with no role: authenticated, but not allowed.
    let ns = cluster.namespace("ctl-rbac").await?;
    let sas: Api<ServiceAccount> = Api::namespaced(ns.client().clone(), ns.name());
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "nobody"}}))?;
    sas.create(&PostParams::default(), &sa).await?;
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [], "expirationSeconds": 600}
    }))?;
    let token = eventually("a token for the service account", WAIT, || async {
        Ok(
            match sas
                .create_token_request("nobody", &PostParams::default(), &request)
                .await
            {
                Ok(t) => t
                    .status
                    .map(|s| s.token)
                    .ok_or_else(|| "no status".to_owned()),
                Err(e) => Err(e.to_string()),
            },
        )
    })
    .await?;
    let path = cluster
        .state()
        .dir
        .join(format!("kubeconfig-nobody-{}", ns.name()));
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.state().api_url, "certificate-authority": cluster.state().dir.join("pki/ca.crt")}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    let path_text = path.display().to_string();
    let r = edsctl(&["--kubeconfig", &path_text, "services"]).await?;
    expect(
        &r,
        5,
        &[
            "get Service eds-system/eds-server",
            "permission denied",
            "--server",
        ],
    );
    let _ = std::fs::remove_file(&path);
    ns.delete().await
}
