//! Errors of lb-client: building a client, naming a service, and sending a
//! request. Request errors reach tonic as a [`tonic::Status`] with a precise
//! code, so callers see gRPC semantics, not transport internals.

use std::net::SocketAddr;
use std::time::Duration;

use lb_core::{ConfigError, KeyError};

/// A configuration the client refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A balancing setting is out of range.
    #[error("service {service}: {source}")]
    Balancer {
        /// The service key (or `default`).
        service: String,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
    /// The outlier-detection settings are out of range.
    #[error("outlier detection: {0}")]
    Outlier(#[source] ConfigError),
    /// The control-plane address is not a URI tonic can dial.
    #[error("control-plane address {address:?}: {source}")]
    ControlPlane {
        /// The address as given.
        address: String,
        /// Why it is unusable.
        #[source]
        source: tonic::transport::Error,
    },
    /// A service key in the per-service options does not parse.
    #[error("per-service options: {0}")]
    ServiceKey(#[source] KeyError),
    /// A duration that must be positive is zero.
    #[error("{0} must be above zero")]
    ZeroDuration(&'static str),
    /// The xDS response size limit is below gRPC's own default.
    #[error("max_xds_message_bytes must be at least 4 MiB (gRPC's default), got {0}")]
    XdsMessageLimit(usize),
    /// A service's cap on requests in flight per endpoint is zero.
    #[error("service {service}: max_in_flight_per_endpoint must be above zero")]
    ZeroInFlightCap {
        /// The service key (or `default`).
        service: String,
    },
    /// A retry-budget setting is out of range.
    #[error(
        "retry budget: ratio must be in [0, 1000] and min_per_sec finite, got {ratio} and {min_per_sec}"
    )]
    RetryBudget {
        /// Retries allowed per request.
        ratio: f32,
        /// Retries allowed per second regardless of traffic.
        min_per_sec: u32,
    },
}

/// Why `LbClient::channel` refused a service name.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The name is not a service key (`<svc>.<ns>:<port>`).
    #[error("{name:?} is not a service key (expected <service>.<namespace>:<port>): {source}")]
    BadKey {
        /// The name as given.
        name: String,
        /// Why it does not parse.
        #[source]
        source: KeyError,
    },
    /// The hash-key header in the per-service options is not a header name.
    #[error("hash header {0:?} is not a valid HTTP header name")]
    BadHashHeader(String),
    /// The balancer cannot be built with these options.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Backend TLS is configured but the service's certificate name is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a request could not be sent. Converted to a `tonic::Status` by
/// [`RequestError::to_status`]; all are retriable from the caller's view
/// except where noted.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No endpoint became known within the wait.
    #[error("no endpoints for {service} after waiting {waited:?} (control plane: {control_plane})")]
    NoEndpoints {
        /// The service key.
        service: String,
        /// How long the request waited.
        waited: Duration,
        /// The control-plane connection state, for the operator.
        control_plane: &'static str,
    },
    /// Connecting to the picked endpoint failed, and no retry was allowed.
    #[error("connecting to {address} for {service}: {source}")]
    Connect {
        /// The service key.
        service: String,
        /// The endpoint.
        address: SocketAddr,
        /// The transport error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/2 exchange failed after the request was sent.
    #[error("request to {address} for {service} failed: {source}")]
    Transport {
        /// The service key.
        service: String,
        /// The endpoint.
        address: SocketAddr,
        /// The HTTP error.
        #[source]
        source: hyper::Error,
    },
    /// The request's deadline (its `grpc-timeout`) passed before response
    /// headers arrived. Not retriable as is: the caller's time is up.
    #[error("deadline of {timeout:?} exceeded for {service}")]
    DeadlineExceeded {
        /// The service key.
        service: String,
        /// The request's timeout.
        timeout: Duration,
    },
    /// Every endpoint picked already had the service's cap of requests in
    /// flight (`ServiceOptions::max_in_flight_per_endpoint`).
    #[error(
        "{service}: every endpoint tried has {cap} requests in flight, the cap (max_in_flight_per_endpoint)"
    )]
    Overloaded {
        /// The service key.
        service: String,
        /// The cap.
        cap: u32,
    },
}

impl RequestError {
    /// The gRPC status a caller sees.
    pub fn to_status(&self) -> tonic::Status {
        // The message shows the direct source; its causes are often the
        // useful part (hyper says "connection error", the TLS alert under
        // it says why).
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self).and_then(std::error::Error::source);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        match self {
            RequestError::DeadlineExceeded { .. } => tonic::Status::deadline_exceeded(message),
            // Nothing was sent: the caller may back off and retry.
            RequestError::Overloaded { .. } => tonic::Status::resource_exhausted(message),
            // Nothing reached application code on the server, or the
            // connection broke; the request may be retried.
            RequestError::NoEndpoints { .. }
            | RequestError::Connect { .. }
            | RequestError::Transport { .. } => tonic::Status::unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_and_cap_have_their_own_codes_and_name_the_service() {
        let s = RequestError::DeadlineExceeded {
            service: "echo.demo:8080".into(),
            timeout: Duration::from_millis(200),
        }
        .to_status();
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(s.message(), "deadline of 200ms exceeded for echo.demo:8080");
        let s = RequestError::Overloaded {
            service: "echo.demo:8080".into(),
            cap: 2,
        }
        .to_status();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(
            s.message().contains("echo.demo:8080") && s.message().contains(" 2 "),
            "{}",
            s.message()
        );
        let s = RequestError::NoEndpoints {
            service: "echo.demo:8080".into(),
            waited: Duration::ZERO,
            control_plane: "connected",
        }
        .to_status();
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
}
