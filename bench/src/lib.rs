//! The benchmark suite's shared parts: the result format every benchmark
//! program writes ([`report`]) and what a run records about the machine it
//! ran on and the processes it measured ([`machine`]).
//!
//! The programs themselves are the binaries in `src/bin/`; `cargo xtask
//! bench` builds them in release mode, runs them, and renders
//! `docs/benchmarks.md` from their JSON. This crate is not a test: nothing in
//! it asserts a timing.

pub mod command;
pub mod h2_mux;

// The record lives in its own light crate (xtask reads it without linking
// the stack); re-exported so the programs keep one path to it.
pub use eds_bench_report::{machine, report};
