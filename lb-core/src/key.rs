//! Service keys: the one name every part of the system uses for one port of
//! one Kubernetes Service.
//!
//! Accepted text forms (DESIGN.md, "Names everyone shares"):
//!
//! ```text
//! echo.demo:8080                        canonical: <service>.<namespace>:<port-number>
//! echo.demo:grpc                        <service>.<namespace>:<port-name>
//! echo.demo.svc.cluster.local:8080      <service>.<namespace>.svc.<cluster-domain>:<port>
//! ```
//!
//! A key remembers the form it was written in, because the server answers
//! under the exact name a client asked for; [`ServiceKey::canonical`] gives the
//! form without the cluster domain. This module validates names the way the
//! Kubernetes API does (DNS-1035 Service names, DNS-1123 namespaces, IANA port
//! names); it does not know whether the Service exists.

use std::fmt;
use std::str::FromStr;

/// A port of a Service, by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// A port number, 1 to 65535.
    Number(u16),
    /// A port name as declared in the Service spec (IANA service name syntax).
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// One port of one Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    name: String,
    namespace: String,
    port: PortRef,
    /// `Some` when written in the fully qualified form, e.g. `cluster.local`.
    cluster_domain: Option<String>,
}

/// Why a string is not a service key. Each variant names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The string has no `:` separating the host part from the port.
    #[error(
        "service key {0:?} has no port: expected <service>.<namespace>:<port>, e.g. echo.demo:8080"
    )]
    MissingPort(String),
    /// The host part does not have a namespace.
    #[error(
        "service key {0:?} has no namespace: expected <service>.<namespace>:<port>, e.g. echo.demo:8080"
    )]
    MissingNamespace(String),
    /// The host part has extra labels that are not `.svc.<cluster-domain>`.
    #[error("service key {0:?}: after <service>.<namespace> only .svc.<cluster-domain> may follow")]
    UnexpectedSuffix(String),
    /// The Service name is not a DNS-1035 label.
    #[error(
        "service name {0:?} is not valid: lower-case letters, digits and '-', starting with a letter, at most 63 characters"
    )]
    InvalidName(String),
    /// The namespace is not a DNS-1123 label.
    #[error(
        "namespace {0:?} is not valid: lower-case letters, digits and '-', starting and ending alphanumeric, at most 63 characters"
    )]
    InvalidNamespace(String),
    /// The cluster domain is not a DNS-1123 subdomain.
    #[error("cluster domain {0:?} is not a valid DNS name")]
    InvalidClusterDomain(String),
    /// The port is neither a number in 1..=65535 nor an IANA service name.
    #[error(
        "port {0:?} is not valid: a number from 1 to 65535 or a port name (at most 15 lower-case letters, digits and '-', with a letter)"
    )]
    InvalidPort(String),
}

impl ServiceKey {
    /// A key in canonical form, validating each part.
    pub fn new(name: &str, namespace: &str, port: PortRef) -> Result<Self, KeyError> {
        validate_name(name)?;
        validate_namespace(namespace)?;
        validate_port(&port)?;
        Ok(Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            port,
            cluster_domain: None,
        })
    }

    /// The Service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Service's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The port, by number or name, as written.
    pub fn port(&self) -> &PortRef {
        &self.port
    }

    /// The cluster domain, when the key was written fully qualified.
    pub fn cluster_domain(&self) -> Option<&str> {
        self.cluster_domain.as_deref()
    }

    /// The same key without the cluster domain: `<service>.<namespace>:<port>`.
    pub fn canonical(&self) -> ServiceKey {
        ServiceKey {
            cluster_domain: None,
            ..self.clone()
        }
    }

    /// The same key with a resolved port number, in canonical form.
    pub fn with_port_number(&self, port: u16) -> Result<ServiceKey, KeyError> {
        ServiceKey::new(&self.name, &self.namespace, PortRef::Number(port))
    }

    /// The cluster DNS name of the Service (`<service>.<namespace>.svc.<domain>`),
    /// which clients fall back to when the control plane was never reachable.
    pub fn dns_name(&self, default_domain: &str) -> String {
        let domain = self.cluster_domain.as_deref().unwrap_or(default_domain);
        format!("{}.{}.svc.{domain}", self.name, self.namespace)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)?;
        if let Some(domain) = &self.cluster_domain {
            write!(f, ".svc.{domain}")?;
        }
        write!(f, ":{}", self.port)
    }
}

impl FromStr for ServiceKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| KeyError::MissingPort(s.to_owned()))?;
        let port = parse_port(port)?;
        let mut labels = host.splitn(3, '.');
        let name = labels.next().unwrap_or_default();
        let namespace = labels
            .next()
            .ok_or_else(|| KeyError::MissingNamespace(s.to_owned()))?;
        let cluster_domain = match labels.next() {
            None => None,
            Some(rest) => match rest.strip_prefix("svc.") {
                Some(domain) => {
                    validate_domain(domain)?;
                    Some(domain.to_owned())
                }
                None => return Err(KeyError::UnexpectedSuffix(s.to_owned())),
            },
        };
        let mut key = ServiceKey::new(name, namespace, port)?;
        key.cluster_domain = cluster_domain;
        Ok(key)
    }
}

impl serde::Serialize for ServiceKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn parse_port(port: &str) -> Result<PortRef, KeyError> {
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        return match port.parse::<u16>() {
            Ok(n) if n > 0 => Ok(PortRef::Number(n)),
            _ => Err(KeyError::InvalidPort(port.to_owned())),
        };
    }
    let port = PortRef::Name(port.to_owned());
    validate_port(&port)?;
    Ok(port)
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn validate_name(name: &str) -> Result<(), KeyError> {
    // DNS-1035: a DNS label that also starts with a letter.
    if is_dns_label(name) && name.as_bytes()[0].is_ascii_lowercase() {
        Ok(())
    } else {
        Err(KeyError::InvalidName(name.to_owned()))
    }
}

fn validate_namespace(namespace: &str) -> Result<(), KeyError> {
    if is_dns_label(namespace) {
        Ok(())
    } else {
        Err(KeyError::InvalidNamespace(namespace.to_owned()))
    }
}

fn validate_domain(domain: &str) -> Result<(), KeyError> {
    if domain.len() <= 253 && domain.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(KeyError::InvalidClusterDomain(domain.to_owned()))
    }
}

fn validate_port(port: &PortRef) -> Result<(), KeyError> {
    match port {
        PortRef::Number(0) => Err(KeyError::InvalidPort("0".to_owned())),
        PortRef::Number(_) => Ok(()),
        PortRef::Name(name) => {
            // IANA_SVC_NAME, as Kubernetes validates container and Service port names.
            let ok = name.len() <= 15
                && is_dns_label(name)
                && !name.contains("--")
                && name.bytes().any(|c| c.is_ascii_lowercase());
            if ok {
                Ok(())
            } else {
                Err(KeyError::InvalidPort(name.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn parses(s: &str, name: &str, ns: &str, port: PortRef, domain: Option<&str>) {
        let key: ServiceKey = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(key.name(), name);
        assert_eq!(key.namespace(), ns);
        assert_eq!(key.port(), &port);
        assert_eq!(key.cluster_domain(), domain);
        assert_eq!(key.to_string(), s, "prints as written");
    }

    #[test]
    fn accepted_forms() {
        parses(
            "echo.demo:8080",
            "echo",
            "demo",
            PortRef::Number(8080),
            None,
        );
        parses(
            "echo.demo:grpc",
            "echo",
            "demo",
            PortRef::Name("grpc".into()),
            None,
        );
        parses(
            "echo.demo.svc.cluster.local:8080",
            "echo",
            "demo",
            PortRef::Number(8080),
            Some("cluster.local"),
        );
        parses(
            "echo-2.kube-system.svc.corp.example:http-api",
            "echo-2",
            "kube-system",
            PortRef::Name("http-api".into()),
            Some("corp.example"),
        );
    }

    #[test]
    fn canonical_drops_the_domain() {
        let key: ServiceKey = "echo.demo.svc.cluster.local:8080".parse().unwrap();
        assert_eq!(key.canonical().to_string(), "echo.demo:8080");
        assert_eq!(key.dns_name("ignored"), "echo.demo.svc.cluster.local");
        let key: ServiceKey = "echo.demo:8080".parse().unwrap();
        assert_eq!(key.dns_name("cluster.local"), "echo.demo.svc.cluster.local");
    }

    #[test]
    fn rejects_with_the_reason() {
        use KeyError::*;
        type Check = fn(&KeyError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("echo.demo", |e| matches!(e, MissingPort(_))),
            ("echo:8080", |e| matches!(e, MissingNamespace(_))),
            ("echo.demo.cluster.local:80", |e| {
                matches!(e, UnexpectedSuffix(_))
            }),
            ("Echo.demo:80", |e| matches!(e, InvalidName(_))),
            ("1echo.demo:80", |e| matches!(e, InvalidName(_))),
            (".demo:80", |e| matches!(e, InvalidName(_))),
            ("echo.-demo:80", |e| matches!(e, InvalidNamespace(_))),
            ("echo.demo:0", |e| matches!(e, InvalidPort(_))),
            ("echo.demo:65536", |e| matches!(e, InvalidPort(_))),
            ("echo.demo:", |e| matches!(e, InvalidPort(_))),
            ("echo.demo:a--b", |e| matches!(e, InvalidPort(_))),
            ("echo.demo:sixteen-chars-xx", |e| {
                matches!(e, InvalidPort(_))
            }),
            ("echo.demo.svc.:80", |e| {
                matches!(e, InvalidClusterDomain(_))
            }),
            ("echo.demo.svc.bad_domain:80", |e| {
                matches!(e, InvalidClusterDomain(_))
            }),
            ("echo.demo:[::1]:80", |e| {
                matches!(
                    e,
                    InvalidNamespace(_) | InvalidPort(_) | UnexpectedSuffix(_)
                )
            }),
        ];
        for (input, ok) in cases {
            let err = input.parse::<ServiceKey>().expect_err(input);
            assert!(ok(&err), "{input}: unexpected {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    proptest! {
        #[test]
        fn print_then_parse_is_identity(
            name in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
            ns in "[a-z0-9][a-z0-9-]{0,20}[a-z0-9]",
            port in prop_oneof![
                (1u16..).prop_map(PortRef::Number),
                "[a-z]{1,5}(-[a-z0-9]{1,4})?".prop_map(PortRef::Name),
            ],
            domain in proptest::option::of("[a-z]{1,8}(\\.[a-z]{1,8}){0,2}"),
        ) {
            let mut key = ServiceKey::new(&name, &ns, port).unwrap();
            key.cluster_domain = domain;
            let parsed: ServiceKey = key.to_string().parse().unwrap();
            prop_assert_eq!(parsed, key);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<ServiceKey>();
        }
    }
}
