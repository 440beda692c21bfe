//! Running the parsed command: connect (flag or discovery), fetch, hand the
//! data to the pure modules, write the result. The only module that does
//! IO for every command; it holds no logic worth unit-testing on its own,
//! which is why everything it calls is pure or an adapter.
//!
//! ```text
//!  Cli ─> admin client (--server, or discovery + port-forward)
//!      ─> GET /debug/* ─> model ─> diff / simulate / watch::events ─> render ─> out
//!      └> Kubernetes (diff only: Service + EndpointSlices)
//! ```
//!
//! Output goes to `out`; warnings that are not the command's result (a
//! failed poll during `watch`) go to `err`. Returns the exit code for
//! outcomes that are not errors (`diff` disagreeing is 1).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::SystemTime;

use clap::CommandFactory;
use lb_core::{EndpointSet, KeyError, PortRef, ServiceKey};

use crate::cli::{Cli, Command, GlobalArgs, OutputFormat};
use crate::discovery::{KubeSettings, ServerLocation};
use crate::error::{EXIT_DISAGREE, EXIT_OK, Error};
use crate::http::{AdminClient, TlsSettings, Transport};
use crate::model::{ClientsView, EndpointsView, SnapshotView};
use crate::simulate::SimConfig;
use crate::{diff, discovery, k8s, render, simulate, suggest, watch};

/// Runs `cli`, writing results to `out` and warnings to `err`.
pub async fn run(
    cli: Cli,
    color: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Error> {
    let g = &cli.global;
    let fmt = g.output;
    let wide = fmt == OutputFormat::Wide;
    let text = match cli.command {
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "edsctl", &mut buf);
            out.write_all(&buf).map_err(Error::Output)?;
            return Ok(EXIT_OK);
        }
        Command::Services { ns } => {
            let mut admin = admin(g).await?;
            let mut view = snapshot(&mut admin).await?;
            if let Some(ns) = &ns.namespace {
                view.services
                    .retain(|s| s.namespace().as_deref() == Some(ns.as_str()));
            }
            match fmt {
                OutputFormat::Table | OutputFormat::Wide => render::services(&view, wide, color),
                _ => render::structured(&view, fmt)?,
            }
        }
        Command::Endpoints { key, zone, ns } => {
            let key = resolve_key(&key, ns.namespace.as_deref())?;
            let mut admin = admin(g).await?;
            let mut view = endpoints(&mut admin, &key).await?;
            if let Some(zone) = &zone {
                view.endpoints
                    .retain(|e| e.zone.as_deref() == Some(zone.as_str()));
            }
            match fmt {
                OutputFormat::Table | OutputFormat::Wide => render::endpoints(&view, wide, color),
                _ => render::structured(&view, fmt)?,
            }
        }
        Command::Clients { ns } => {
            let mut admin = admin(g).await?;
            let mut view = clients(&mut admin).await?;
            if let Some(ns) = &ns.namespace {
                view.clients.retain(|c| {
                    c.stats.types.iter().any(|t| {
                        t.subscribed.iter().any(|name| {
                            name.parse::<ServiceKey>()
                                .is_ok_and(|k| k.namespace() == ns.as_str())
                        })
                    })
                });
            }
            match fmt {
                OutputFormat::Table | OutputFormat::Wide => render::clients(&view, wide, color),
                _ => render::structured(&view, fmt)?,
            }
        }
        Command::Watch {
            key,
            interval,
            max_events,
            timeout,
            ns,
        } => {
            let key = resolve_key(&key, ns.namespace.as_deref())?;
            let mut admin = admin(g).await?;
            run_watch(
                &mut admin,
                &key,
                WatchBounds {
                    interval,
                    max_events,
                    timeout,
                },
                fmt,
                color,
                out,
                err,
            )
            .await?;
            return Ok(EXIT_OK);
        }
        Command::Diff { key, ns } => {
            let key = resolve_key(&key, ns.namespace.as_deref())?;
            let mut admin = admin(g).await?;
            let report = run_diff(g, &mut admin, &key).await?;
            let text = match fmt {
                OutputFormat::Table | OutputFormat::Wide => render::diff(&report, wide, color),
                _ => render::structured(&report, fmt)?,
            };
            out.write_all(text.as_bytes()).map_err(Error::Output)?;
            return Ok(if report.agree { EXIT_OK } else { EXIT_DISAGREE });
        }
        Command::Simulate {
            key,
            policy,
            from_zone,
            hash_key,
            requests,
            concurrency,
            seed,
            namespace,
        } => {
            let key = resolve_key(&key, namespace.as_deref())?;
            let mut policies: Vec<lb_core::Policy> = Vec::new();
            for p in policy.into_iter().flatten() {
                if !policies.contains(&p) {
                    policies.push(p);
                }
            }
            let mut admin = admin(g).await?;
            let view = endpoints(&mut admin, &key).await?;
            let set = view.to_set()?;
            let report = simulate::simulate(
                &view.canonical,
                &set,
                &SimConfig {
                    policies,
                    from_zone,
                    key: hash_key,
                    requests,
                    concurrency,
                    seed,
                    now: SystemTime::now(),
                },
            )?;
            match fmt {
                OutputFormat::Table | OutputFormat::Wide => render::simulate(&report, wide, color),
                _ => render::structured(&report, fmt)?,
            }
        }
    };
    out.write_all(text.as_bytes()).map_err(Error::Output)?;
    Ok(EXIT_OK)
}

/// A service key from the command line; `<service>:<port>` takes its
/// namespace from `-n`.
pub fn resolve_key(input: &str, namespace: Option<&str>) -> Result<ServiceKey, Error> {
    match input.parse::<ServiceKey>() {
        Ok(k) => Ok(k),
        Err(KeyError::MissingNamespace(_)) if namespace.is_some() => {
            let (name, port) = input.rsplit_once(':').unwrap_or((input, ""));
            let ns = namespace.unwrap_or_default();
            format!("{name}.{ns}:{port}")
                .parse()
                .map_err(|source| Error::BadKey {
                    input: input.to_owned(),
                    source,
                })
        }
        Err(source) => Err(Error::BadKey {
            input: input.to_owned(),
            source,
        }),
    }
}

fn kube_settings(g: &GlobalArgs) -> KubeSettings {
    KubeSettings {
        kubeconfig: g.kubeconfig.clone(),
        context: g.context.clone(),
    }
}

/// The admin client: `--server`, or discovery through the kubeconfig. The
/// connection is opened here so unreachability is reported first.
async fn admin(g: &GlobalArgs) -> Result<AdminClient, Error> {
    let transport = match &g.server {
        Some(server) => Transport::from_server_flag(
            server,
            g.tls,
            &TlsSettings {
                ca_file: g.ca_file.clone(),
                cert_file: g.cert_file.clone(),
                key_file: g.key_file.clone(),
                server_name: g.tls_server_name.clone(),
            },
        )?,
        None => {
            let client = kube_settings(g).client().await?;
            discovery::locate(
                &client,
                &ServerLocation {
                    namespace: g.server_namespace.clone(),
                    service: g.server_service.clone(),
                    port: g.server_port.clone(),
                    pod: g.server_pod.clone(),
                },
            )
            .await?
        }
    };
    let mut admin = AdminClient::new(transport, g.request_timeout);
    admin.connect().await?;
    Ok(admin)
}

async fn snapshot(admin: &mut AdminClient) -> Result<SnapshotView, Error> {
    let path = "/debug/snapshot";
    let view: SnapshotView = admin.get_json(path).await?.ok_or_else(|| Error::Server {
        path: path.into(),
        status: 404,
        body: "not found".into(),
    })?;
    if !view.ready {
        return Err(Error::NotReady { path: path.into() });
    }
    Ok(view)
}

async fn clients(admin: &mut AdminClient) -> Result<ClientsView, Error> {
    let path = "/debug/clients";
    admin.get_json(path).await?.ok_or_else(|| Error::Server {
        path: path.into(),
        status: 404,
        body: "not found".into(),
    })
}

/// `/debug/endpoints/{key}`; a key the server does not know becomes
/// `NotFound` with close matches from its snapshot.
async fn endpoints(admin: &mut AdminClient, key: &ServiceKey) -> Result<EndpointsView, Error> {
    if let Some(view) = admin
        .get_json::<EndpointsView>(&format!("/debug/endpoints/{key}"))
        .await?
    {
        return Ok(view);
    }
    let known = snapshot(admin)
        .await
        .map(|s| s.services)
        .unwrap_or_default();
    Err(Error::NotFound {
        key: key.to_string(),
        place: "on eds-server",
        suggestions: suggest::close_matches(&key.to_string(), known.iter().map(|s| s.key.as_str())),
    })
}

/// Bounds of a watch.
#[derive(Debug, Clone, Copy)]
struct WatchBounds {
    interval: std::time::Duration,
    max_events: Option<u64>,
    timeout: Option<std::time::Duration>,
}

fn write_line(out: &mut dyn Write, line: &str) -> Result<(), Error> {
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    admin: &mut AdminClient,
    key: &ServiceKey,
    bounds: WatchBounds,
    fmt: OutputFormat,
    color: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), Error> {
    let first = endpoints(admin, key).await?;
    let canonical = first.canonical.clone();
    let mut set = first.to_set()?;
    let mut version = first.version.clone();
    let header = format!(
        "# watching {canonical} at version {version}: {} endpoint(s); Ctrl-C to stop",
        set.len()
    );
    match fmt {
        OutputFormat::Table | OutputFormat::Wide => {
            write_line(out, &render::paint(&header, render::Tone::Header, color))?;
        }
        // Structured output stays parseable: the header goes to stderr.
        _ => write_line(err, &header)?,
    }
    let path = format!("/debug/endpoints/{key}");
    let deadline = bounds.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0u64;
    let mut failing = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if bounds.max_events.is_some_and(|m| seen >= m) {
            break;
        }
        let sleep = tokio::time::sleep(bounds.interval);
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut ctrl_c => break,
            () = until => break,
            () = sleep => {}
        }
        let (new_version, new_set) = match admin.get_json::<EndpointsView>(&path).await {
            Ok(Some(view)) => {
                if view.version == version {
                    failing = false;
                    continue;
                }
                (view.version.clone(), view.to_set()?)
            }
            // The key went away (Service or port deleted): everything is removed.
            Ok(None) => (String::new(), EndpointSet::default()),
            Err(
                e
                @ (Error::Unreachable { .. } | Error::PortForward { .. } | Error::NotReady { .. }),
            ) => {
                if !failing {
                    let _ = write_line(
                        err,
                        &format!("warning: {e}; retrying every {:?}", bounds.interval),
                    );
                }
                failing = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        if failing {
            let _ = write_line(err, "warning: eds-server answers again");
            failing = false;
        }
        if new_version == version {
            continue;
        }
        let left = bounds.max_events.map_or(usize::MAX, |m| {
            usize::try_from(m.saturating_sub(seen)).unwrap_or(usize::MAX)
        });
        for event in watch::events(&canonical, &set, &new_set, SystemTime::now())
            .into_iter()
            .take(left)
        {
            let text = match fmt {
                OutputFormat::Table | OutputFormat::Wide => {
                    let tone = match event.op {
                        watch::Op::Added => render::Tone::Good,
                        watch::Op::Removed => render::Tone::Bad,
                        watch::Op::Changed => render::Tone::Warn,
                    };
                    let line = watch::line(&event);
                    match line.split_once("  ") {
                        Some((at, rest)) => format!("{at}  {}", render::paint(rest, tone, color)),
                        None => line,
                    }
                }
                OutputFormat::Json => serde_json::to_string(&event).map_err(|e| Error::Format {
                    format: "json",
                    message: e.to_string(),
                })?,
                OutputFormat::Yaml => {
                    format!("---\n{}", render::structured(&event, fmt)?.trim_end())
                }
            };
            write_line(out, &text)?;
            seen += 1;
        }
        if new_version.is_empty() {
            write_line(
                out,
                &format!("# {canonical} is no longer on eds-server; still watching"),
            )?;
        }
        set = new_set;
        version = new_version;
    }
    Ok(())
}

/// Whether each resource name the clients use denotes `canonical`. Named
/// ports are resolved through the server (it knows the Service's ports).
async fn names_of_key(
    admin: &mut AdminClient,
    key: &ServiceKey,
    canonical: &str,
    clients: &ClientsView,
) -> HashSet<String> {
    let mut names: HashSet<&String> = HashSet::new();
    for c in &clients.clients {
        for t in &c.stats.types {
            names.extend(t.subscribed.iter());
            names.extend(t.sent_resources.keys());
            names.extend(t.acked_resources.keys());
            names.extend(t.nacked_resources.keys());
        }
    }
    let mut resolved: BTreeMap<String, bool> = BTreeMap::new();
    for name in names {
        let Ok(k) = name.parse::<ServiceKey>() else {
            continue;
        };
        if k.name() != key.name() || k.namespace() != key.namespace() {
            continue;
        }
        let matches = match k.port() {
            PortRef::Number(_) => k.canonical().to_string() == canonical,
            PortRef::Name(_) => admin
                .get_json::<EndpointsView>(&format!("/debug/endpoints/{k}"))
                .await
                .ok()
                .flatten()
                .is_some_and(|v| v.canonical == canonical),
        };
        resolved.insert(name.clone(), matches);
    }
    resolved
        .into_iter()
        .filter_map(|(n, m)| m.then_some(n))
        .collect()
}

async fn run_diff(
    g: &GlobalArgs,
    admin: &mut AdminClient,
    key: &ServiceKey,
) -> Result<diff::DiffReport, Error> {
    let server = endpoints(admin, key).await?;
    let canonical: ServiceKey = server
        .canonical
        .parse()
        .map_err(|_| Error::BadValue(format!("canonical key {:?}", server.canonical)))?;
    let client = kube_settings(g).client().await?;
    let kube = match k8s::read(&client, &canonical).await {
        Ok(k) => k,
        // The server serves a key Kubernetes does not have: every served
        // endpoint then shows as "only on server".
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let clients = clients(admin).await?;
    let names = names_of_key(admin, key, &server.canonical, &clients).await;
    Ok(diff::compare(&kube, &server, &clients, &|n| {
        names.contains(n)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_without_namespace_take_it_from_the_flag() {
        assert_eq!(
            resolve_key("echo:8080", Some("demo")).unwrap().to_string(),
            "echo.demo:8080"
        );
        assert_eq!(
            resolve_key("echo.prod:grpc", Some("demo"))
                .unwrap()
                .to_string(),
            "echo.prod:grpc"
        );
        for bad in ["echo:8080", "echo", "Echo.demo:80", "echo.demo:0", ""] {
            let err = resolve_key(bad, None).unwrap_err();
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{bad}");
        }
        assert!(resolve_key("echo:99999", Some("demo")).is_err());
    }
}
