//! edsctl's errors: each one says what was tried, and [`Error::hint`] says
//! what to do next; [`Error::exit_code`] maps it to the documented exit code.
//!
//! ```text
//!  0  success (diff: Kubernetes, server and clients agree)
//!  1  diff: they disagree; or output could not be written
//!  2  bad input: flags, service key, files
//!  3  eds-server unreachable, or discovery / port-forward failed
//!  4  not found: no such service key or Service port
//!  5  Kubernetes refused or failed: credentials, permissions, kubeconfig
//!  6  eds-server answered something unexpected (not ready, bad JSON, HTTP error)
//! ```
//!
//! Not here: printing. The binary prints the message, its source chain and
//! the hint; nothing in the library writes to stderr.

use std::path::PathBuf;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: `diff` found a disagreement.
pub const EXIT_DISAGREE: u8 = 1;
/// Exit code: bad input (flags, service key, files).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: eds-server unreachable or discovery failed.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: no such service key or port.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit code: the Kubernetes API refused or failed.
pub const EXIT_KUBE: u8 = 5;
/// Exit code: eds-server answered something unexpected.
pub const EXIT_SERVER: u8 = 6;

/// The exit codes as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (diff: Kubernetes, server and every client agree)
  1  diff: they disagree; or output could not be written
  2  bad input: flags, service key, files
  3  eds-server unreachable, or discovery / port-forward failed
  4  not found: no such service key or Service port
  5  Kubernetes refused or failed: credentials, permissions, kubeconfig
  6  eds-server answered something unexpected (not ready, bad JSON, HTTP error)";

/// Everything that can go wrong in edsctl.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or argument the user gave is unusable.
    #[error("{message}")]
    Usage {
        /// What is wrong.
        message: String,
        /// What to do instead.
        hint: Option<String>,
    },
    /// A service key that does not parse.
    #[error("{input:?} is not a service key")]
    BadKey {
        /// The text given.
        input: String,
        /// Why it does not parse.
        #[source]
        source: lb_core::KeyError,
    },
    /// A file given on the command line could not be used.
    #[error("cannot use {what} {path}: {problem}")]
    File {
        /// Which flag it came from.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// No connection to eds-server's admin port.
    #[error("cannot reach eds-server at {target}")]
    Unreachable {
        /// What was tried, e.g. `127.0.0.1:18001 (from --server)`.
        target: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// eds-server could not be located through Kubernetes.
    #[error("discovering eds-server: {tried}: {problem}")]
    Discovery {
        /// What was looked up, e.g. `Service eds-system/eds-server`.
        tried: String,
        /// What was found instead.
        problem: String,
    },
    /// Port-forwarding to the eds-server pod failed.
    #[error("port-forward to pod {namespace}/{pod} port {port} failed")]
    PortForward {
        /// Namespace of the pod.
        namespace: String,
        /// The pod found behind the eds-server Service.
        pod: String,
        /// The admin port on the pod.
        port: u16,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The service key is not in the server's snapshot (or not in Kubernetes).
    #[error("no service key {key} {place}")]
    NotFound {
        /// The key asked for.
        key: String,
        /// Where it was looked for: "on eds-server", "in Kubernetes".
        place: &'static str,
        /// Close matches, best first.
        suggestions: Vec<String>,
    },
    /// The kubeconfig could not be loaded.
    #[error("cannot load the kubeconfig ({tried})")]
    Kubeconfig {
        /// Which file and context were tried.
        tried: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {action}")]
    Kube {
        /// What was being done, e.g. `get Service eds-system/eds-server`.
        action: String,
        /// The client error.
        #[source]
        source: KubeCause,
    },
    /// eds-server answered with an unexpected HTTP status.
    #[error("eds-server answered {status} to GET {path}: {body}")]
    Server {
        /// The admin path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// The body, trimmed.
        body: String,
    },
    /// eds-server has not finished its initial Kubernetes lists.
    #[error("eds-server is not ready yet (GET {path} answered 503)")]
    NotReady {
        /// The admin path.
        path: String,
    },
    /// eds-server's JSON did not have the expected shape.
    #[error("eds-server's answer to GET {path} is not the expected JSON")]
    Decode {
        /// The admin path.
        path: String,
        /// The decoder's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A value in eds-server's JSON is unusable (an address that does not parse).
    #[error("eds-server sent an unusable value: {0}")]
    BadValue(String),
    /// eds-server speaks another version of the admin API.
    #[error(transparent)]
    ApiVersion(crate::model::VersionError),
    /// Writing output failed (closed pipe and the like).
    #[error("writing output")]
    Output(#[source] std::io::Error),
    /// Serialising JSON or YAML output failed.
    #[error("formatting output as {format}: {message}")]
    Format {
        /// json or yaml.
        format: &'static str,
        /// The serialiser's complaint.
        message: String,
    },
}

impl From<crate::model::ValueError> for Error {
    fn from(e: crate::model::ValueError) -> Self {
        Error::BadValue(e.0)
    }
}

impl Error {
    /// The process exit code for this error (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage { .. } | Error::BadKey { .. } | Error::File { .. } => EXIT_USAGE,
            Error::Unreachable { .. } | Error::Discovery { .. } | Error::PortForward { .. } => {
                EXIT_UNREACHABLE
            }
            Error::NotFound { .. } => EXIT_NOT_FOUND,
            Error::Kubeconfig { .. } | Error::Kube { .. } => EXIT_KUBE,
            Error::Server { .. }
            | Error::NotReady { .. }
            | Error::Decode { .. }
            | Error::BadValue(_)
            | Error::ApiVersion(_)
            | Error::Format { .. } => EXIT_SERVER,
            // Neither the user's input nor the server's fault: the generic
            // failure code, as for a shell pipeline that broke.
            Error::Output(_) => EXIT_DISAGREE,
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } => hint.clone(),
            Error::BadKey { .. } => Some(
                "write a service key as <service>.<namespace>:<port>, e.g. echo.demo:8080 \
                 (or <service>:<port> with -n <namespace>); `edsctl services` lists them"
                    .into(),
            ),
            Error::File { .. } => None,
            Error::Unreachable { .. } => Some(
                "check that eds-server runs and that the address is its admin port \
                 (--admin-addr, 18001 by default); without --server, edsctl finds it \
                 through the kubeconfig"
                    .into(),
            ),
            Error::Discovery { .. } => Some(
                "point --server-namespace / --server-service (EDSCTL_SERVER_NAMESPACE, \
                 EDSCTL_SERVER_SERVICE) at the eds-server Service, or skip discovery with \
                 --server ADDR (e.g. after `kubectl port-forward -n eds-system svc/eds-server 18001:admin`)"
                    .into(),
            ),
            Error::PortForward { namespace, pod, .. } => Some(format!(
                "port-forwarding needs permission to create pods/portforward in {namespace} \
                 and a kubelet the API server can reach on the pod's node; or run \
                 `kubectl port-forward -n {namespace} pod/{pod} 18001:<admin port>` yourself \
                 and pass --server 127.0.0.1:18001"
            )),
            Error::NotFound { suggestions, .. } if !suggestions.is_empty() => Some(format!(
                "did you mean {}? `edsctl services` lists every key",
                suggestions.join(", ")
            )),
            Error::NotFound { .. } => {
                Some("`edsctl services` lists every key the server knows".into())
            }
            Error::Kubeconfig { .. } => Some(
                "pass --kubeconfig FILE and --context NAME, or set KUBECONFIG; \
                 or skip Kubernetes with --server ADDR (diff always needs Kubernetes)"
                    .into(),
            ),
            Error::Kube { source, .. } => kube_hint(&source.0),
            Error::NotReady { .. } => Some(
                "eds-server serves nothing until every Kubernetes watch has listed once; \
                 see its /readyz and logs"
                    .into(),
            ),
            Error::Server { .. } | Error::Decode { .. } | Error::BadValue(_) => Some(
                "is this an eds-server admin port, and does its version match edsctl's?".into(),
            ),
            Error::ApiVersion(_) => Some(
                "install the edsctl built with this eds-server (same release), or read the \
                 admin JSON directly with curl"
                    .into(),
            ),
            Error::Output(_) | Error::Format { .. } => None,
        }
    }
}

fn kube_hint(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(status) if status.code == 401 => Some(
            "the API server refused the credentials: refresh them (e.g. log in again) \
             or pick another --context"
                .into(),
        ),
        kube::Error::Api(status) if status.code == 403 => Some(
            "permission denied: edsctl needs get/list on services, endpointslices and pods \
             and create on pods/portforward; ask for a role granting them, or use \
             --server ADDR to skip discovery"
                .into(),
        ),
        kube::Error::Api(_) => None,
        _ => Some(
            "could not talk to the Kubernetes API server: check the kubeconfig's \
             server address and that the cluster is up (`kubectl cluster-info`)"
                .into(),
        ),
    }
}

/// A Kubernetes client error, shown briefly: an API refusal as its
/// message and HTTP code (kube's own text appends the whole `Status`
/// structure), anything else as kube words it, with its sources.
#[derive(Debug)]
pub struct KubeCause(pub kube::Error);

impl From<kube::Error> for KubeCause {
    fn from(e: kube::Error) -> Self {
        KubeCause(e)
    }
}

impl std::fmt::Display for KubeCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            kube::Error::Api(status) => {
                write!(f, "{} (HTTP {}", status.message, status.code)?;
                if !status.reason.is_empty() {
                    write!(f, " {}", status.reason)?;
                }
                f.write_str(")")
            }
            other => write!(f, "{other}"),
        }
    }
}

impl std::error::Error for KubeCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            kube::Error::Api(_) => None,
            other => std::error::Error::source(other),
        }
    }
}

/// A short result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_its_documented_code() {
        let usage = Error::Usage {
            message: "x".into(),
            hint: None,
        };
        assert_eq!(usage.exit_code(), EXIT_USAGE);
        let nf = Error::NotFound {
            key: "a.b:1".into(),
            place: "on eds-server",
            suggestions: vec!["a.b:2".into()],
        };
        assert_eq!(nf.exit_code(), EXIT_NOT_FOUND);
        assert!(nf.hint().is_some_and(|h| h.contains("a.b:2")));
        let disc = Error::Discovery {
            tried: "Service eds-system/eds-server".into(),
            problem: "not found".into(),
        };
        assert_eq!(disc.exit_code(), EXIT_UNREACHABLE);
        assert!(disc.hint().is_some_and(|h| h.contains("--server")));
        assert!(EXIT_CODES_HELP.contains("6  eds-server answered"));
    }
}
