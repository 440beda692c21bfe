//! The benchmark suite's shared record: the result format every benchmark
//! program writes ([`report`]) and what a run records about the machine it
//! ran on and the processes it measured ([`machine`]).
//!
//! It is its own small crate so that `cargo xtask`, which renders
//! `docs/benchmarks.md` from these records, links nothing heavier than
//! serde. It measures nothing and renders nothing.

pub mod machine;
pub mod report;
