//! deploy/ against the real things: the manifests as kubectl kustomize and
//! Helm render them, a real kube-apiserver, and eds-server running on
//! nothing but the ServiceAccount token deploy/'s RBAC grants.
//!
//! ```text
//!  render     kubectl kustomize (base, overlays/*)    helm template (the chart, value sets)
//!  shape      RBAC is list/watch on services, endpointslices, pods and nothing else;
//!             the Deployment has what the brief asks (replicas, zones, probes, securityContext)
//!             and flags eds-server's own parser accepts
//!  lint       helm lint --strict, for every value set
//!  parity     the chart renders what kustomize renders for the same settings, Helm's labels aside
//!  dry-run    kubectl apply --dry-run=server --validate=strict, moved into test namespaces
//!  enough     RBAC applied for real, a TokenRequest token, eds-server on it: ready, serves echo
//!  needed     each (resource, verb) dropped in turn: the API server refuses eds-server
//!             (Forbidden naming it, in eds-server's log; /readyz stays 503 without a list)
//!  envoy      deploy/envoy/envoy.yaml's clusters against eds-server's service keys
//! ```
//!
//! Rendered objects keep the names they ship with (`eds-system`, `team-a`,
//! `team-b`) and are moved into fresh test namespaces before anything
//! reaches the API server ([`Placement`]); cluster-scoped objects get a
//! per-run suffix and are deleted when the test ends, pass or fail.
//! Not covered here: the Dockerfile (no Docker on these machines) and
//! running Envoy (no binary available); see deploy/README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use eds_devkit::harness::{TestCluster, eventually};
use eds_devkit::server::{Server, echo_addresses, echo_service, metric_sum, serves_exactly};
use eds_devkit::xds::{EDS, SotwClient};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use lb_core::ServiceKey;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The namespace the manifests install into, as shipped.
const INSTALL_NS: &str = "eds-system";
/// The namespaces the namespaced overlay watches, as shipped.
const WATCHED_NS: [&str; 2] = ["team-a", "team-b"];
/// The Helm release name that gives the chart kustomize's object names.
const RELEASE: &str = "eds-server";
/// Labels only Helm adds; everything else must match kustomize.
const HELM_ONLY_LABELS: [&str; 3] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
];
/// The (API group, resource) pairs eds-server reads: `eds-server/src/watch.rs`.
const READS: [(&str, &str); 3] = [
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "pods"),
];
/// The verbs a kube-runtime watcher uses: a list, then a watch from its
/// resourceVersion. Nothing is fetched by name.
const VERBS: [&str; 2] = ["list", "watch"];

// ---------------------------------------------------------------------------
// Rendering

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn kubectl() -> anyhow::Result<PathBuf> {
    Ok(eds_devkit::cluster::ensure_built(true)?.kubectl)
}

/// Runs `cmd`; its stdout, or an error carrying its stderr.
fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Every non-empty document of a multi-document YAML stream, as JSON.
fn parse_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("parsing rendered YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// `kubectl kustomize deploy/kustomize/<dir>`.
fn kustomize(dir: &str) -> anyhow::Result<Vec<Value>> {
    let path = deploy_dir().join("kustomize").join(dir);
    let text = output(
        Command::new(kubectl()?).arg("kustomize").arg(&path),
        &format!("kubectl kustomize {}", path.display()),
    )?;
    parse_docs(&text)
}

/// `helm template eds-server deploy/helm/eds-server -n eds-system --set ...`.
/// Fails (never skips) when Helm cannot be built.
fn helm(sets: &[&str]) -> anyhow::Result<Vec<Value>> {
    let helm = eds_devkit::tools::ensure_helm(true).context(
        "Helm is needed to render deploy/helm/eds-server and is built from helm.sh/helm/v3 \
         through the Go module proxy; that build failed, so the chart cannot be checked",
    )?;
    let mut cmd = Command::new(helm);
    cmd.args(["template", RELEASE])
        .arg(deploy_dir().join("helm/eds-server"))
        .args(["--namespace", INSTALL_NS]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    parse_docs(&output(&mut cmd, &format!("helm template --set {sets:?}"))?)
}

/// A named rendering of deploy/.
struct Rendering {
    name: String,
    objects: Vec<Value>,
}

/// Every way deploy/ is meant to be rendered.
fn renderings() -> anyhow::Result<Vec<Rendering>> {
    let mut out = Vec::new();
    for dir in ["base", "overlays/namespaced", "overlays/tls"] {
        out.push(Rendering {
            name: format!("kustomize {dir}"),
            objects: kustomize(dir)?,
        });
    }
    for sets in helm_value_sets() {
        out.push(Rendering {
            name: format!("helm {sets:?}"),
            objects: helm(&sets)?,
        });
    }
    Ok(out)
}

/// The chart's value sets under test: defaults, each overlay's twin, and
/// every option at once.
fn helm_value_sets() -> Vec<Vec<&'static str>> {
    vec![
        vec![],
        vec!["watchNamespaces={team-a,team-b}"],
        vec!["tls.enabled=true"],
        vec!["watchPods=false"],
        vec![
            "watchNamespaces={team-a}",
            "tls.enabled=true",
            "tls.clientCA=true",
            "watchPods=false",
            "endpointPodLabels={shard,track}",
            "serviceSelector=eds.rs/expose=true",
            "includeUnhealthy=true",
            "coalesceWindow=250ms",
            "zoneAware=false",
            "extraArgs={--mass-drop-fraction=0.3}",
            "replicaCount=3",
            "podLabels.team=platform",
        ],
    ]
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(obj: &Value) -> Option<&str> {
    obj["metadata"]["namespace"].as_str()
}

fn of_kind<'a>(objects: &'a [Value], k: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == k).collect()
}

fn deployment(objects: &[Value]) -> anyhow::Result<&Value> {
    match of_kind(objects, "Deployment").as_slice() {
        [one] => Ok(one),
        other => bail!("expected one Deployment, found {}", other.len()),
    }
}

fn container(objects: &[Value]) -> anyhow::Result<&Value> {
    let d = deployment(objects)?;
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("no containers")?;
    ensure!(containers.len() == 1, "expected one container");
    Ok(&containers[0])
}

fn args(objects: &[Value]) -> anyhow::Result<Vec<String>> {
    container(objects)?["args"]
        .as_array()
        .context("no args")?
        .iter()
        .map(|a| a.as_str().map(str::to_owned).context("non-string arg"))
        .collect()
}

/// (API group, resource, verb) triples every Role and ClusterRole grants.
fn grants(objects: &[Value]) -> anyhow::Result<Vec<(String, String, String, String)>> {
    let mut out = Vec::new();
    for role in objects
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
    {
        let at = format!("{} {}", kind(role), name(role));
        for rule in role["rules"].as_array().context("a role without rules")? {
            let strings = |field: &str| -> anyhow::Result<Vec<String>> {
                rule[field]
                    .as_array()
                    .with_context(|| format!("{at}: a rule without {field}"))?
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).context("not a string"))
                    .collect()
            };
            for group in strings("apiGroups")? {
                for resource in strings("resources")? {
                    for verb in strings("verbs")? {
                        out.push((at.clone(), group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Shape: RBAC and the Deployment, from the rendered objects alone

#[test]
fn rbac_grants_only_list_and_watch_on_what_eds_server_reads() -> anyhow::Result<()> {
    for r in renderings()? {
        let roles: Vec<&Value> = r
            .objects
            .iter()
            .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
            .collect();
        ensure!(!roles.is_empty(), "{}: no Role or ClusterRole", r.name);
        for role in &roles {
            for rule in role["rules"].as_array().context("rules")? {
                for forbidden in ["resourceNames", "nonResourceURLs"] {
                    ensure!(
                        rule.get(forbidden).is_none(),
                        "{}: {} {} uses {forbidden}: {rule}",
                        r.name,
                        kind(role),
                        name(role)
                    );
                }
            }
        }
        let granted = grants(&r.objects)?;
        for (at, group, resource, verb) in &granted {
            ensure!(
                READS.contains(&(group.as_str(), resource.as_str())),
                "{}: {at} grants {verb} on {resource:?} in group {group:?}, which eds-server never reads",
                r.name
            );
            ensure!(
                VERBS.contains(&verb.as_str()),
                "{}: {at} grants {verb:?} on {resource}; eds-server only lists and watches",
                r.name
            );
        }
        // Every role grants the same (not one broader than another), and
        // what the server must have: Services and EndpointSlices always,
        // Pods when it watches them.
        let flags = args(&r.objects)?;
        let pods_wanted = !flags.iter().any(|a| a == "--watch-pods=false")
            || flags.iter().any(|a| a.starts_with("--pod-labels="));
        for role in &roles {
            let at = format!("{} {}", kind(role), name(role));
            let mine: BTreeSet<(&str, &str, &str)> = granted
                .iter()
                .filter(|g| g.0 == at)
                .map(|(_, g, res, v)| (g.as_str(), res.as_str(), v.as_str()))
                .collect();
            let mut want = BTreeSet::new();
            for (group, resource) in READS {
                if resource == "pods" && !pods_wanted {
                    continue;
                }
                for verb in VERBS {
                    want.insert((group, resource, verb));
                }
            }
            ensure!(
                mine == want,
                "{}: {at} grants {mine:?}, eds-server with {flags:?} needs exactly {want:?}",
                r.name
            );
        }
        // Cluster-wide grants only when every namespace is watched.
        let namespaced = flags.iter().any(|a| a.starts_with("--namespace="));
        for k in ["ClusterRole", "ClusterRoleBinding"] {
            ensure!(
                of_kind(&r.objects, k).is_empty() == namespaced,
                "{}: {k} present={} with --namespace={namespaced}",
                r.name,
                !of_kind(&r.objects, k).is_empty()
            );
        }
        // Each binding names this ServiceAccount, and its role exists here.
        let sa = of_kind(&r.objects, "ServiceAccount");
        ensure!(sa.len() == 1, "{}: one ServiceAccount", r.name);
        for binding in r
            .objects
            .iter()
            .filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding"))
        {
            let subjects = binding["subjects"].as_array().context("subjects")?;
            ensure!(
                subjects.len() == 1
                    && subjects[0]["kind"] == "ServiceAccount"
                    && subjects[0]["name"] == name(sa[0])
                    && subjects[0]["namespace"].as_str() == namespace(sa[0]),
                "{}: {} {} binds {subjects:?}",
                r.name,
                kind(binding),
                name(binding)
            );
            let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
            let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            ensure!(
                r.objects.iter().any(|o| kind(o) == role_kind
                    && name(o) == role_name
                    && namespace(o) == namespace(binding)),
                "{}: {} {} refers to a missing {role_kind} {role_name}",
                r.name,
                kind(binding),
                name(binding)
            );
        }
    }
    Ok(())
}

#[test]
fn deployment_is_replicated_probed_and_locked_down() -> anyhow::Result<()> {
    use clap::Parser;
    for r in renderings()? {
        let n = &r.name;
        let d = deployment(&r.objects)?;
        let pod = &d["spec"]["template"]["spec"];
        let c = container(&r.objects)?;
        ensure!(
            d["spec"]["replicas"].as_u64().unwrap_or(0) >= 2,
            "{n}: fewer than 2 replicas"
        );
        let spread: Vec<&str> = pod["topologySpreadConstraints"]
            .as_array()
            .context("no topologySpreadConstraints")?
            .iter()
            .filter_map(|t| t["topologyKey"].as_str())
            .collect();
        ensure!(
            spread.contains(&"topology.kubernetes.io/zone"),
            "{n}: replicas are not spread across zones: {spread:?}"
        );

        // The flags are eds-server's own: its parser accepts them.
        let flags = args(&r.objects)?;
        let parsed = eds_server::config::Args::try_parse_from(
            std::iter::once("eds-server".to_owned()).chain(flags.iter().cloned()),
        )
        .map_err(|e| anyhow::anyhow!("{n}: eds-server refuses its args {flags:?}: {e}"))?;
        let port_of = |port_name: &str| -> anyhow::Result<u64> {
            c["ports"]
                .as_array()
                .context("no ports")?
                .iter()
                .find(|p| p["name"] == port_name)
                .and_then(|p| p["containerPort"].as_u64())
                .with_context(|| format!("{n}: no container port {port_name}"))
        };
        ensure!(
            port_of("admin")? == u64::from(parsed.admin_addr.port())
                && port_of("xds")? == u64::from(parsed.xds_addr.port()),
            "{n}: container ports do not match --admin-addr/--xds-addr"
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            ensure!(
                c[probe]["httpGet"]["path"] == path && c[probe]["httpGet"]["port"] == "admin",
                "{n}: {probe} is not GET {path} on the admin port: {}",
                c[probe]
            );
        }
        for res in ["cpu", "memory"] {
            ensure!(
                c["resources"]["requests"][res].is_string(),
                "{n}: no {res} request"
            );
        }
        ensure!(
            pod["securityContext"]["runAsNonRoot"] == true,
            "{n}: not runAsNonRoot"
        );
        let sc = &c["securityContext"];
        ensure!(
            sc["readOnlyRootFilesystem"] == true
                && sc["allowPrivilegeEscalation"] == false
                && sc["privileged"] != true
                && sc["capabilities"]["drop"] == json!(["ALL"]),
            "{n}: container securityContext is not restrictive: {sc}"
        );
        ensure!(
            pod["serviceAccountName"] == name(of_kind(&r.objects, "ServiceAccount")[0]),
            "{n}: the pod does not run as the chart's ServiceAccount"
        );

        // TLS files come from a read-only Secret mount.
        if let Some(cert) = &parsed.tls_cert {
            let mounts = c["volumeMounts"].as_array().context("no volumeMounts")?;
            let mount = mounts
                .iter()
                .find(|m| m["mountPath"].as_str().is_some_and(|p| cert.starts_with(p)))
                .with_context(|| format!("{n}: --tls-cert {} is not mounted", cert.display()))?;
            ensure!(mount["readOnly"] == true, "{n}: TLS mount is writable");
            let volume = pod["volumes"]
                .as_array()
                .context("no volumes")?
                .iter()
                .find(|v| v["name"] == mount["name"])
                .context("the TLS mount's volume is missing")?;
            ensure!(
                volume["secret"]["secretName"].is_string(),
                "{n}: TLS volume is not a Secret"
            );
        }

        // The Service and the PodDisruptionBudget select these pods, on ports they have.
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let selects = |selector: &Value| {
            selector
                .as_object()
                .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
        };
        let svc = of_kind(&r.objects, "Service");
        ensure!(svc.len() == 1, "{n}: one Service");
        ensure!(
            selects(&svc[0]["spec"]["selector"]),
            "{n}: the Service does not select the pods"
        );
        for port in ["xds", "admin"] {
            ensure!(
                svc[0]["spec"]["ports"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["targetPort"] == port)),
                "{n}: the Service has no {port} port"
            );
        }
        let pdb = of_kind(&r.objects, "PodDisruptionBudget");
        ensure!(pdb.len() == 1, "{n}: one PodDisruptionBudget");
        ensure!(
            selects(&pdb[0]["spec"]["selector"]["matchLabels"]),
            "{n}: the PodDisruptionBudget does not select the pods"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Parity: the chart and kustomize render the same objects

/// Helm's own labels removed, every object keyed by (kind, namespace, name).
fn normalised(objects: &[Value]) -> BTreeMap<(String, String, String), Value> {
    objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            for at in ["/metadata/labels", "/spec/template/metadata/labels"] {
                if let Some(map) = o.pointer_mut(at).and_then(Value::as_object_mut) {
                    for l in HELM_ONLY_LABELS {
                        map.remove(l);
                    }
                }
            }
            let key = (
                kind(&o).to_owned(),
                namespace(&o).unwrap_or_default().to_owned(),
                name(&o).to_owned(),
            );
            (key, o)
        })
        .collect()
}

/// JSON pointers where `a` and `b` differ (for a readable failure).
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{at}/{k}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: kustomize {a} vs helm {b}")),
        _ => {}
    }
}

#[test]
fn chart_renders_what_kustomize_renders() -> anyhow::Result<()> {
    let pairs: [(&str, &[&str]); 3] = [
        ("base", &[]),
        ("overlays/namespaced", &["watchNamespaces={team-a,team-b}"]),
        ("overlays/tls", &["tls.enabled=true"]),
    ];
    for (dir, sets) in pairs {
        let k = normalised(&kustomize(dir)?);
        let h = normalised(&helm(sets)?);
        let (kk, hk): (BTreeSet<_>, BTreeSet<_>) = (k.keys().collect(), h.keys().collect());
        ensure!(
            kk == hk,
            "kustomize {dir} and helm {sets:?} render different objects:\n  only kustomize: {:?}\n  only helm: {:?}",
            kk.difference(&hk).collect::<Vec<_>>(),
            hk.difference(&kk).collect::<Vec<_>>()
        );
        let mut diffs = Vec::new();
        for (key, obj) in &k {
            differences(obj, &h[key], &format!("{key:?}"), &mut diffs);
        }
        ensure!(
            diffs.is_empty(),
            "kustomize {dir} and helm {sets:?} differ:\n  {}",
            diffs.join("\n  ")
        );
    }
    Ok(())
}

#[test]
fn chart_lints_clean() -> anyhow::Result<()> {
    let helm = eds_devkit::tools::ensure_helm(true)
        .context("Helm is needed to lint deploy/helm/eds-server; building it failed")?;
    for sets in helm_value_sets() {
        let mut cmd = Command::new(&helm);
        // --strict: a warning (deprecated API, bad values) fails too.
        cmd.args(["lint", "--strict", "--namespace", INSTALL_NS])
            .arg(deploy_dir().join("helm/eds-server"));
        for set in &sets {
            cmd.args(["--set", set]);
        }
        output(&mut cmd, &format!("helm lint --strict --set {sets:?}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Placement in the shared test cluster

/// Where shipped namespaces go in the test cluster, and the suffix that
/// makes cluster-scoped names unique to this run.
struct Placement {
    namespaces: BTreeMap<String, String>,
    suffix: String,
}

impl Placement {
    fn ns(&self, shipped: &str) -> anyhow::Result<String> {
        self.namespaces
            .get(shipped)
            .cloned()
            .with_context(|| format!("namespace {shipped} has no place in the test cluster"))
    }

    /// `objects` moved into the test namespaces, cluster-scoped names
    /// suffixed, and every reference (binding subjects and role refs,
    /// `--namespace`) following along.
    fn apply(&self, objects: &[Value]) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        for obj in objects {
            let mut o = obj.clone();
            if let Some(ns) = namespace(obj) {
                o["metadata"]["namespace"] = json!(self.ns(ns)?);
            }
            if matches!(kind(obj), "ClusterRole" | "ClusterRoleBinding") {
                o["metadata"]["name"] = json!(format!("{}{}", name(obj), self.suffix));
            }
            if o["roleRef"]["kind"] == "ClusterRole" {
                let role = o["roleRef"]["name"].as_str().unwrap_or_default();
                o["roleRef"]["name"] = json!(format!("{role}{}", self.suffix));
            }
            // `get_mut`, not indexing: indexing a Value mutably adds the key.
            if let Some(subjects) = o.get_mut("subjects").and_then(Value::as_array_mut) {
                for s in subjects {
                    if let Some(ns) = s["namespace"].as_str() {
                        s["namespace"] = json!(self.ns(ns)?);
                    }
                }
            }
            if kind(obj) == "Deployment"
                && let Some(args) = o
                    .pointer_mut("/spec/template/spec/containers/0/args")
                    .and_then(Value::as_array_mut)
            {
                for arg in args {
                    if let Some(list) = arg.as_str().and_then(|a| a.strip_prefix("--namespace=")) {
                        let moved: Vec<String> = list
                            .split(',')
                            .map(|n| self.ns(n))
                            .collect::<anyhow::Result<_>>()?;
                        *arg = json!(format!("--namespace={}", moved.join(",")));
                    }
                }
            }
            out.push(o);
        }
        Ok(out)
    }
}

/// A scratch file for this test binary.
fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

fn write_list(path: &Path, objects: &[Value]) -> anyhow::Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(path, serde_json::to_vec_pretty(&list)?)?;
    Ok(())
}

fn kubectl_admin(cluster: &TestCluster) -> anyhow::Result<Command> {
    let mut cmd = Command::new(kubectl()?);
    cmd.arg(format!("--kubeconfig={}", cluster.kubeconfig().display()));
    Ok(cmd)
}

/// Objects applied for real; deleted (cluster-scoped ones included) when
/// dropped, so a failing test leaves nothing behind.
struct Applied {
    kubectl: Command,
    file: PathBuf,
}

impl Drop for Applied {
    fn drop(&mut self) {
        let result = self
            .kubectl
            .args(["delete", "--ignore-not-found", "--wait=false", "-f"])
            .arg(&self.file)
            .output();
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleaning up {}: {}",
                self.file.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cleaning up {}: {e}", self.file.display()),
        }
    }
}

fn apply_for_real(cluster: &TestCluster, objects: &[Value], file: &str) -> anyhow::Result<Applied> {
    let path = scratch(file)?;
    write_list(&path, objects)?;
    let applied = Applied {
        kubectl: kubectl_admin(cluster)?,
        file: path.clone(),
    };
    output(
        kubectl_admin(cluster)?
            .args(["apply", "--server-side", "--field-manager=eds-tests", "-f"])
            .arg(&path),
        &format!("kubectl apply -f {}", path.display()),
    )?;
    Ok(applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_pass_server_side_dry_run() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let install = cluster.namespace("deploy-dry").await?;
    let team_a = cluster.namespace("deploy-dry-a").await?;
    let team_b = cluster.namespace("deploy-dry-b").await?;
    let placement = Placement {
        namespaces: BTreeMap::from([
            (INSTALL_NS.to_owned(), install.name().to_owned()),
            (WATCHED_NS[0].to_owned(), team_a.name().to_owned()),
            (WATCHED_NS[1].to_owned(), team_b.name().to_owned()),
        ]),
        suffix: format!("-{}", install.name()),
    };
    let renderings = tokio::task::spawn_blocking(renderings).await??;
    for (i, r) in renderings.iter().enumerate() {
        let objects = placement.apply(&r.objects)?;
        let path = scratch(&format!("dry-run-{i}.json"))?;
        write_list(&path, &objects)?;
        // --validate=strict: an unknown or misspelt field is an error, not a warning.
        let out = output(
            kubectl_admin(cluster)?
                .args([
                    "apply",
                    "--dry-run=server",
                    "--validate=strict",
                    "-o",
                    "name",
                    "-f",
                ])
                .arg(&path),
            &format!("server-side dry run of {}", r.name),
        )?;
        // One line per object; names repeat across namespaces.
        let accepted: Vec<&str> = out.lines().collect();
        ensure!(
            accepted.len() == objects.len(),
            "{}: the API server accepted {} of {} objects: {out}",
            r.name,
            accepted.len(),
            objects.len()
        );
    }
    for ns in [install, team_a, team_b] {
        ns.delete().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// RBAC against a running eds-server

/// eds-server's warnings, captured so a test can find the API server's
/// refusal in them. eds-server runs in this process, so its tracing events
/// come here; they are also copied to stderr for the test log.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_ansi(false)
            .with_writer(move || LogSink(Arc::clone(&sink)))
            .try_init();
        buf
    })
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        std::io::stderr().write_all(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines that contain every one of `needles`.
fn logged(needles: &[&str]) -> Vec<String> {
    let buf = logs().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

fn sa_user(ns: &str, sa: &str) -> String {
    format!("system:serviceaccount:{ns}:{sa}")
}

/// The RBAC objects of a rendering (what `apply_for_real` creates).
fn rbac_only(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .filter(|o| {
            matches!(
                kind(o),
                "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
            )
        })
        .cloned()
        .collect()
}

/// A token for ServiceAccount `ns/sa` from the TokenRequest API, and a
/// kubeconfig that uses only it.
async fn sa_kubeconfig(cluster: &TestCluster, ns: &str, sa: &str) -> anyhow::Result<PathBuf> {
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client().await?, ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for {ns}/{sa}"))?
        .status
        .context("a TokenRequest without status")?
        .token;
    let state = cluster.state();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": state.api_url, "certificate-authority": state.dir.join("pki/ca.crt")}}],
        "users": [{"name": sa_user(ns, sa), "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa_user(ns, sa)}}],
        "current-context": "sa",
    });
    let path = scratch(&format!("kubeconfig-{ns}-{sa}"))?;
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(path)
}

/// Waits until the API server's authorizer answers `allowed` for each
/// (namespace or all, group, resource, verb): RBAC objects take effect
/// through an informer, so right after `apply` they may not yet.
async fn wait_authorized(
    cluster: &TestCluster,
    user: &str,
    checks: &[(Option<&str>, &str, &str, &str)],
) -> anyhow::Result<()> {
    let api: Api<SubjectAccessReview> = Api::all(cluster.client().await?);
    let sa_ns = user.split(':').nth(2).unwrap_or_default().to_owned();
    for (ns, group, resource, verb) in checks {
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_ns}"), "system:authenticated"],
                "resourceAttributes": {"namespace": ns, "group": group, "resource": resource, "verb": verb},
            }
        }))?;
        eventually(
            &format!("{user} may {verb} {resource} in {ns:?}"),
            WAIT,
            || async {
                let answer = api.create(&PostParams::default(), &review).await?;
                Ok(match answer.status {
                    Some(s) if s.allowed => Ok(()),
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
    }
    Ok(())
}

/// eds-server's flags from a rendered Deployment, less the listen
/// addresses (the harness picks free loopback ports), plus `extra`.
fn server_flags(objects: &[Value], extra: &[String]) -> anyhow::Result<Vec<String>> {
    let mut flags: Vec<String> = args(objects)?
        .into_iter()
        .filter(|a| !a.starts_with("--xds-addr=") && !a.starts_with("--admin-addr="))
        .collect();
    flags.extend(extra.iter().cloned());
    Ok(flags)
}

/// The service key deploy/envoy/envoy.yaml's EDS cluster asks for.
fn envoy_key() -> anyhow::Result<ServiceKey> {
    let envoy = envoy_bootstrap()?;
    let eds = eds_cluster(&envoy)?;
    eds["eds_cluster_config"]["service_name"]
        .as_str()
        .context("no service_name")?
        .parse()
        .map_err(|e| anyhow::anyhow!("envoy.yaml's service_name is not a service key: {e}"))
}

/// Applies `objects`' RBAC (placed), starts eds-server on the
/// ServiceAccount's token with the Deployment's flags, and checks it
/// becomes ready, serves the echo Service in `echo_ns` under the name
/// Envoy's example asks for, lists Pods in each of `pod_watches` watches,
/// and is never refused.
async fn serves_on_its_own_rbac(
    cluster: &'static TestCluster,
    rendered: &[Value],
    placement: &Placement,
    echo: &eds_devkit::harness::TestNamespace,
    pod_watches: usize,
) -> anyhow::Result<()> {
    logs();
    let objects = placement.apply(rendered)?;
    let rbac = rbac_only(&objects);
    let sa = of_kind(&rbac, "ServiceAccount")[0];
    let (sa_ns, sa_name) = (namespace(sa).context("SA namespace")?, name(sa));
    let _applied = apply_for_real(cluster, &rbac, &format!("rbac-{sa_ns}.json"))?;
    let user = sa_user(sa_ns, sa_name);
    let flags = server_flags(&objects, &[])?;
    let scoped: Vec<&str> = flags
        .iter()
        .find_map(|f| f.strip_prefix("--namespace="))
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    let mut checks = Vec::new();
    let scopes: Vec<Option<&str>> = if scoped.is_empty() {
        vec![None]
    } else {
        scoped.iter().map(|n| Some(*n)).collect()
    };
    for ns in &scopes {
        for (group, resource) in READS {
            for verb in VERBS {
                checks.push((*ns, group, resource, verb));
            }
        }
    }
    wait_authorized(cluster, &user, &checks).await?;

    let kubeconfig = sa_kubeconfig(cluster, sa_ns, sa_name).await?;
    let server = Server::start(&server_flags(
        &objects,
        &[
            format!("--kubeconfig={}", kubeconfig.display()),
            "--coalesce-window=50ms".to_owned(),
        ],
    )?)?;
    let pods = echo_service(echo, 2).await?;
    server.wait_ready().await?;

    // What Envoy's example asks for, in this test's namespace.
    let example = envoy_key()?;
    let key = ServiceKey::new(example.name(), echo.name(), example.port().clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    let mut client = SotwClient::connect(server.xds, "deploy-rbac", Some("zone-a")).await?;
    client.send(EDS, &[&key], "", "", None).await?;
    let want = echo_addresses(&pods);
    client
        .recv_until(&[&key], WAIT, |r| serves_exactly(r, &key, &want))
        .await
        .with_context(|| format!("eds-server on {user}'s token never served {key}"))?;

    // The Pod watch is optional for readiness, so prove it listed too.
    eventually("every Pod watch to list", WAIT, || async {
        let (code, text) = server.get("/metrics").await?;
        ensure!(code == 200, "GET /metrics: {code}");
        let listed = metric_sum(
            &text,
            "eds_kube_watch_events_total",
            &[("resource", "Pod"), ("event", "init_done")],
        );
        Ok(if listed >= pod_watches as f64 {
            Ok(())
        } else {
            Err(format!("{listed} of {pod_watches} Pod watches listed"))
        })
    })
    .await?;
    let refused = logged(&[&format!("\"{user}\""), "forbidden"]);
    ensure!(
        refused.is_empty(),
        "eds-server on {user}'s token was refused:\n{}",
        refused.join("\n")
    );
    drop(server);
    for pod in &pods {
        pod.delete_now().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_rbac_is_enough_for_eds_server() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("deploy-rbac").await?;
    let rendered = tokio::task::spawn_blocking(|| kustomize("base")).await??;
    let placement = Placement {
        namespaces: BTreeMap::from([(INSTALL_NS.to_owned(), ns.name().to_owned())]),
        suffix: format!("-{}", ns.name()),
    };
    // Watching every namespace: one Pod watch.
    serves_on_its_own_rbac(cluster, &rendered, &placement, &ns, 1).await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_rbac_is_enough_for_eds_server() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let install = cluster.namespace("deploy-ns").await?;
    let team_a = cluster.namespace("deploy-ns-a").await?;
    let team_b = cluster.namespace("deploy-ns-b").await?;
    let rendered = tokio::task::spawn_blocking(|| kustomize("overlays/namespaced")).await??;
    let placement = Placement {
        namespaces: BTreeMap::from([
            (INSTALL_NS.to_owned(), install.name().to_owned()),
            (WATCHED_NS[0].to_owned(), team_a.name().to_owned()),
            (WATCHED_NS[1].to_owned(), team_b.name().to_owned()),
        ]),
        suffix: format!("-{}", install.name()),
    };
    // One Pod watch per watched namespace.
    serves_on_its_own_rbac(cluster, &rendered, &placement, &team_a, 2).await?;
    for ns in [install, team_a, team_b] {
        ns.delete().await?;
    }
    Ok(())
}

/// One (group, resource, verb) the role grants, dropped.
#[derive(Debug, Clone)]
struct Dropped {
    group: String,
    resource: String,
    verb: String,
}

/// `role` with one grant removed: one rule per remaining grant (the same
/// permissions, spelt out).
fn narrowed(role: &Value, dropped: &Dropped) -> anyhow::Result<Value> {
    let grants = grants(std::slice::from_ref(role))?;
    let rules: Vec<Value> = grants
        .iter()
        .filter(|(_, g, r, v)| {
            !(g == &dropped.group && r == &dropped.resource && v == &dropped.verb)
        })
        .map(|(_, g, r, v)| json!({"apiGroups": [g], "resources": [r], "verbs": [v]}))
        .collect();
    ensure!(
        rules.len() + 1 == grants.len(),
        "dropping {dropped:?} removed {} grants",
        grants.len() - rules.len()
    );
    let mut out = role.clone();
    out["rules"] = json!(rules);
    Ok(out)
}

/// Runs eds-server in a fresh namespace whose Role lacks `dropped`, and
/// waits for the API server to refuse it exactly that; without a list of
/// Services or EndpointSlices it must also stay unready.
async fn refused_without(
    cluster: &'static TestCluster,
    rendered: &[Value],
    dropped: Dropped,
) -> anyhow::Result<()> {
    let ns = cluster.namespace("deploy-narrow").await?;
    // The namespaced overlay's first Role, alone in this namespace.
    let placement = Placement {
        namespaces: BTreeMap::from([
            (INSTALL_NS.to_owned(), ns.name().to_owned()),
            (WATCHED_NS[0].to_owned(), ns.name().to_owned()),
        ]),
        suffix: String::new(),
    };
    let first: Vec<Value> = rendered
        .iter()
        .filter(|o| {
            namespace(o) != Some(WATCHED_NS[1])
                && matches!(kind(o), "ServiceAccount" | "Role" | "RoleBinding")
        })
        .cloned()
        .collect();
    let mut objects = placement.apply(&first)?;
    for o in &mut objects {
        if kind(o) == "Role" {
            *o = narrowed(o, &dropped)?;
        }
    }
    let sa = of_kind(&objects, "ServiceAccount")[0];
    let user = sa_user(ns.name(), name(sa));
    let _applied = apply_for_real(cluster, &objects, &format!("narrow-{}.json", ns.name()))?;
    // Wait until what is still granted is in effect, so a refusal below is
    // about the dropped grant and not about RBAC not having caught up.
    let mut still = Vec::new();
    for (group, resource) in READS {
        for verb in VERBS {
            if (group, resource, verb)
                != (
                    dropped.group.as_str(),
                    dropped.resource.as_str(),
                    dropped.verb.as_str(),
                )
            {
                still.push((Some(ns.name()), group, resource, verb));
            }
        }
    }
    wait_authorized(cluster, &user, &still).await?;
    let kubeconfig = sa_kubeconfig(cluster, ns.name(), name(sa)).await?;
    let server = Server::start(&[
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={}", ns.name()),
        "--coalesce-window=50ms".to_owned(),
    ])?;
    let needle = format!("cannot {} resource \"{}\"", dropped.verb, dropped.resource);
    let quoted_user = format!("\"{user}\"");
    eventually(
        &format!("the API server to refuse {user}: {needle}"),
        WAIT,
        || async {
            Ok(if logged(&[&quoted_user, &needle]).is_empty() {
                Err(format!(
                    "no refusal logged yet; dropping {dropped:?} should have caused one \
                     (if it never does, the role grants more than eds-server needs)"
                ))
            } else {
                Ok(())
            })
        },
    )
    .await?;
    if dropped.verb == "list" && dropped.resource != "pods" {
        // Never listed, so never ready: nothing was published.
        let (code, body) = server.get("/readyz").await?;
        ensure!(
            code == 503 && body.contains(&dropped.resource),
            "without list on {} eds-server answered /readyz {code}: {body}",
            dropped.resource
        );
    }
    drop(server);
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_granted_verb_is_needed() -> anyhow::Result<()> {
    logs();
    let cluster = TestCluster::shared()?;
    let rendered = tokio::task::spawn_blocking(|| kustomize("overlays/namespaced")).await??;
    let role = of_kind(&rendered, "Role")
        .into_iter()
        .find(|r| namespace(r) == Some(WATCHED_NS[0]))
        .context("the namespaced overlay has no Role in team-a")?;
    // Every grant of the shipped Role, so a grant added later must prove
    // itself needed here too.
    let variants: Vec<Dropped> = grants(std::slice::from_ref(role))?
        .into_iter()
        .map(|(_, group, resource, verb)| Dropped {
            group,
            resource,
            verb,
        })
        .collect();
    ensure!(!variants.is_empty(), "the Role grants nothing");
    let results = futures::future::join_all(
        variants
            .iter()
            .cloned()
            .map(|d| refused_without(cluster, &rendered, d)),
    )
    .await;
    let failures: Vec<String> = variants
        .iter()
        .zip(results)
        .filter_map(|(d, r)| r.err().map(|e| format!("{d:?}: {e:#}")))
        .collect();
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

// ---------------------------------------------------------------------------
// The Envoy example

fn envoy_bootstrap() -> anyhow::Result<Value> {
    let path = deploy_dir().join("envoy/envoy.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn clusters(envoy: &Value) -> anyhow::Result<&Vec<Value>> {
    envoy["static_resources"]["clusters"]
        .as_array()
        .context("no static clusters")
}

fn cluster_named<'a>(envoy: &'a Value, wanted: &str) -> anyhow::Result<&'a Value> {
    clusters(envoy)?
        .iter()
        .find(|c| c["name"] == wanted)
        .with_context(|| format!("no cluster {wanted}"))
}

fn eds_cluster(envoy: &Value) -> anyhow::Result<&Value> {
    let eds: Vec<&Value> = clusters(envoy)?
        .iter()
        .filter(|c| c["type"] == "EDS")
        .collect();
    ensure!(eds.len() == 1, "expected one EDS cluster");
    Ok(eds[0])
}

/// The single (address, port) of a DNS cluster.
fn dns_target(cluster: &Value) -> anyhow::Result<(String, u64)> {
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    Ok((
        address["address"]
            .as_str()
            .context("no address")?
            .to_owned(),
        address["port_value"].as_u64().context("no port_value")?,
    ))
}

fn speaks_http2(cluster: &Value) -> bool {
    cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        ["explicit_http_config"]
        .get("http2_protocol_options")
        .is_some()
}

#[test]
fn envoy_example_asks_eds_server_with_dns_behind() -> anyhow::Result<()> {
    let envoy = envoy_bootstrap()?;

    // ADS goes to deploy/'s Service, over HTTP/2 (gRPC).
    let ads = &envoy["dynamic_resources"]["ads_config"];
    ensure!(ads["api_type"] == "GRPC" && ads["transport_api_version"] == "V3");
    let ads_cluster = ads["grpc_services"][0]["envoy_grpc"]["cluster_name"]
        .as_str()
        .context("ADS names no cluster")?;
    let ads_cluster = cluster_named(&envoy, ads_cluster)?;
    ensure!(
        speaks_http2(ads_cluster),
        "the ADS cluster must speak HTTP/2"
    );
    let base = kustomize("base")?;
    let svc = of_kind(&base, "Service")[0];
    let xds_port = svc["spec"]["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .find(|p| p["name"] == "xds")
        .and_then(|p| p["port"].as_u64())
        .context("no xds port")?;
    ensure!(
        dns_target(ads_cluster)?
            == (
                format!("{}.{INSTALL_NS}.svc.cluster.local", name(svc)),
                xds_port
            ),
        "the ADS cluster does not point at deploy/'s Service: {:?}",
        dns_target(ads_cluster)?
    );

    // The EDS cluster is named, and asks, exactly as eds-server names keys.
    let eds = eds_cluster(&envoy)?;
    let key = envoy_key()?;
    ensure!(
        eds["name"] == key.to_string().as_str() && key.canonical() == key,
        "the EDS cluster should be named by its canonical service key {key}"
    );
    ensure!(
        eds["eds_cluster_config"]["eds_config"].get("ads").is_some(),
        "the EDS cluster must take its endpoints over ADS"
    );
    ensure!(speaks_http2(eds), "gRPC upstreams need HTTP/2");
    // Envoy's panic mode counts DRAINING (and, with --include-unhealthy,
    // UNHEALTHY) hosts and then routes to them: during a rollout or a
    // scale-up that is where requests would go. Off, the aggregate falls
    // through to the DNS cluster instead.
    ensure!(
        eds["common_lb_config"]["healthy_panic_threshold"]["value"].as_f64() == Some(0.0),
        "the EDS cluster must turn Envoy's panic mode off (healthy_panic_threshold 0)"
    );

    // The aggregate tries EDS first and falls back to the Service's DNS name.
    let aggregates: Vec<&Value> = clusters(&envoy)?
        .iter()
        .filter(|c| c["cluster_type"]["name"] == "envoy.clusters.aggregate")
        .collect();
    ensure!(aggregates.len() == 1, "expected one aggregate cluster");
    let agg = aggregates[0];
    ensure!(agg["lb_policy"] == "CLUSTER_PROVIDED");
    let config = &agg["cluster_type"]["typed_config"];
    ensure!(
        config["@type"]
            == "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"
    );
    let order: Vec<&str> = config["clusters"]
        .as_array()
        .context("aggregate lists no clusters")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        order.len() == 2 && order[0] == key.to_string(),
        "the aggregate must try the EDS cluster first: {order:?}"
    );
    let dns = cluster_named(&envoy, order[1])?;
    ensure!(
        matches!(dns["type"].as_str(), Some("STRICT_DNS" | "LOGICAL_DNS")),
        "the fallback must resolve DNS"
    );
    let lb_core::PortRef::Number(port) = key.port() else {
        bail!("the example's key should carry a port number, as the DNS cluster needs one");
    };
    ensure!(
        dns_target(dns)? == (key.dns_name("cluster.local"), u64::from(*port)),
        "the DNS fallback is not {key}'s ClusterIP name and port: {:?}",
        dns_target(dns)?
    );
    ensure!(speaks_http2(dns), "gRPC upstreams need HTTP/2");

    // The route sends traffic to the aggregate, not around it.
    let routes = &envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"];
    ensure!(
        routes[0]["route"]["cluster"] == agg["name"],
        "the route does not use the aggregate cluster"
    );
    Ok(())
}
