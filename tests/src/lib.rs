//! Support library for integration tests (being written).
