//! Errors for bad configuration and impossible picks.
//!
//! Every algorithm validates its configuration when it is built and returns
//! one of these instead of panicking later on a request path.

/// A configuration value out of its documented range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A number outside its allowed range (or NaN).
    #[error("{name} must be {expected}, got {value}")]
    OutOfRange {
        /// The setting, as users write it.
        name: &'static str,
        /// The allowed range, in words.
        expected: &'static str,
        /// What was given.
        value: f64,
    },
    /// A weight that is zero, negative or not a number.
    #[error("weight of endpoint {index} must be a positive finite number, got {value}")]
    BadWeight {
        /// Index of the endpoint in the list given.
        index: usize,
        /// What was given.
        value: f64,
    },
}

impl ConfigError {
    /// Checks `min <= value <= max` (and not NaN).
    pub(crate) fn check(
        name: &'static str,
        expected: &'static str,
        value: f64,
        min: f64,
        max: f64,
    ) -> Result<f64, ConfigError> {
        if value.is_nan() || value < min || value > max {
            Err(ConfigError::OutOfRange {
                name,
                expected,
                value,
            })
        } else {
            Ok(value)
        }
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// The service has no endpoints at all.
    #[error("the service has no endpoints")]
    NoEndpoints,
    /// Endpoints exist but none may take traffic: none is ready or draining
    /// (not-ready endpoints are never picked, whatever the panic threshold).
    #[error("the service has endpoints but none is ready or draining")]
    NoneUsable,
}
