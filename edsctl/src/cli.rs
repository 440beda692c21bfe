//! The command line: kubectl-like global flags and one subcommand per
//! view. Parsing only; [`crate::commands`] runs what was parsed.
//!
//! ```text
//!  edsctl [global flags] <command> [-n NS] [args]
//!    services | endpoints KEY [--zone Z] | clients | watch KEY | diff KEY
//!    simulate KEY --policy P[,P..] --from-zone Z --key K -n N | completions SHELL
//! ```
//!
//! `-n` is `--namespace` everywhere except `simulate`, where (as the issue
//! asks) `-n N` is the number of requests and the namespace is `--namespace`
//! only; so `-n` goes after the command name, and the other flags anywhere.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_core::Policy;

use crate::error::EXIT_CODES_HELP;

/// Inspect eds-server: its snapshot, its clients, and how both compare with Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "edsctl", version, after_help = EXIT_CODES_HELP, propagate_version = true)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to show.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// Aligned columns with more of them.
    Wide,
    /// JSON (one object; `watch`: one object per line).
    Json,
    /// YAML (`watch`: one document per change).
    Yaml,
}

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Flags for every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,

    /// eds-server's admin address (host:port, http://.. or https://..); skips discovery.
    #[arg(long, global = true, env = "EDSCTL_SERVER", value_name = "ADDR")]
    pub server: Option<String>,

    /// Namespace of the eds-server Service, for discovery.
    #[arg(
        long,
        global = true,
        env = "EDSCTL_SERVER_NAMESPACE",
        default_value = "eds-system",
        value_name = "NS"
    )]
    pub server_namespace: String,

    /// Name of the eds-server Service, for discovery.
    #[arg(
        long,
        global = true,
        env = "EDSCTL_SERVER_SERVICE",
        default_value = "eds-server",
        value_name = "NAME"
    )]
    pub server_service: String,

    /// The Service's admin port, by name or number, for discovery.
    #[arg(
        long,
        global = true,
        env = "EDSCTL_SERVER_PORT",
        default_value = "admin",
        value_name = "PORT"
    )]
    pub server_port: String,

    /// Talk to this eds-server pod (one replica) instead of the first ready
    /// one, for discovery; compare replicas by running a command for each.
    #[arg(long, global = true, env = "EDSCTL_SERVER_POD", value_name = "POD")]
    pub server_pod: Option<String>,

    /// Use TLS with a bare host:port --server.
    #[arg(long, global = true)]
    pub tls: bool,

    /// PEM CA bundle to verify eds-server's certificate (default: system roots).
    #[arg(long, global = true, env = "EDSCTL_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate, for mTLS.
    #[arg(long, global = true, env = "EDSCTL_CERT_FILE", value_name = "FILE")]
    pub cert_file: Option<PathBuf>,

    /// PEM private key of --cert-file.
    #[arg(long, global = true, env = "EDSCTL_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Server name to verify the certificate against (default: the --server host).
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Give up on one request to eds-server after this long (e.g. 10s, 500ms).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub request_timeout: Duration,

    /// Colour: auto (terminal and NO_COLOR unset), always, never.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub color: ColorChoice,
}

/// `-n/--namespace` for the commands where it means a namespace.
#[derive(Debug, Clone, Args)]
pub struct NamespaceArg {
    /// Only this namespace; also completes keys written <service>:<port>.
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every service key: endpoints per zone and health, version, subscribers.
    Services {
        /// Namespace filter.
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// One service key's endpoints with their metadata.
    Endpoints {
        /// Service key: <service>.<namespace>:<port> (number or name).
        #[arg(value_name = "SERVICE_KEY")]
        key: String,
        /// Only endpoints in this zone.
        #[arg(long)]
        zone: Option<String>,
        /// Namespace for a key written without one.
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// Connected xDS clients: node, zone, subscriptions, acked versions, NACKs, staleness.
    Clients {
        /// Only clients subscribed to services in this namespace.
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// Follow one service key's endpoints: timestamped +/-/~ lines until Ctrl-C.
    Watch {
        /// Service key.
        #[arg(value_name = "SERVICE_KEY")]
        key: String,
        /// How often to poll eds-server.
        #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
        interval: Duration,
        /// Stop after this many changes (for scripts and tests).
        #[arg(long, value_name = "N")]
        max_events: Option<u64>,
        /// Stop after this long (for scripts and tests).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        timeout: Option<Duration>,
        /// Namespace for a key written without one.
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// Kubernetes vs eds-server vs each client's acked version; exit 1 when they disagree.
    Diff {
        /// Service key.
        #[arg(value_name = "SERVICE_KEY")]
        key: String,
        /// Namespace for a key written without one.
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// What lb-core's balancing policies would pick over the live endpoints.
    Simulate {
        /// Service key.
        #[arg(value_name = "SERVICE_KEY")]
        key: String,
        /// Policies, comma-separated, or `all`: p2c, peak-ewma, round-robin,
        /// random, weighted-round-robin, ring-hash, bounded-load-hash.
        #[arg(long, value_delimiter = ',', default_value = "all", value_parser = parse_policies)]
        policy: Vec<Vec<Policy>>,
        /// The caller's zone (zone affinity); none: affinity off.
        #[arg(long, value_name = "ZONE")]
        from_zone: Option<String>,
        /// One hash key for every request (hash policies); none: a key per request.
        #[arg(long = "key", value_name = "HASH_KEY")]
        hash_key: Option<String>,
        /// Number of requests.
        #[arg(
            short = 'n',
            long = "requests",
            default_value_t = 10_000,
            value_name = "N"
        )]
        requests: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Random seed, for repeatable results.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Namespace for a key written without one (no `-n` here: that is the request count).
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A duration flag: `250ms`, `5s`, `2m`, `1h30m` or a bare number of
/// seconds (the grammar is [`lb_core::duration`]'s, shared by every crate).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    lb_core::duration::parse(s).map_err(|e| e.to_string())
}

/// One `--policy` item: a policy name or `all`.
fn parse_policies(s: &str) -> Result<Vec<Policy>, String> {
    if s == "all" {
        return Ok(Policy::ALL.to_vec());
    }
    s.parse::<Policy>()
        .map(|p| vec![p])
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn simulate_takes_dash_n_as_requests_and_others_as_namespace() {
        let cli = Cli::try_parse_from([
            "edsctl",
            "simulate",
            "echo.demo:8080",
            "--policy",
            "p2c,ring-hash",
            "-n",
            "50",
            "-o",
            "json",
        ])
        .unwrap();
        match cli.command {
            Command::Simulate {
                requests, policy, ..
            } => {
                assert_eq!(requests, 50);
                assert_eq!(policy.concat(), [Policy::P2c, Policy::RingHash]);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(cli.global.output, OutputFormat::Json);
        let cli =
            Cli::try_parse_from(["edsctl", "--server", "x:1", "services", "-n", "demo"]).unwrap();
        assert!(
            matches!(cli.command, Command::Services { ns } if ns.namespace.as_deref() == Some("demo"))
        );
        assert!(Cli::try_parse_from(["edsctl", "-o", "xml", "services"]).is_err());
        assert!(Cli::try_parse_from(["edsctl", "simulate", "k", "--policy", "fastest"]).is_err());
    }
}
