//! `cargo xtask`: the one entry point for the project's automation.
//!
//! Each subcommand lives in its own module; this file only parses the command
//! line and dispatches. It is not a build system: cargo builds, xtask orchestrates.

mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project automation for eds", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything CI runs: install what the tests need, then fmt, clippy and the tests.
    Test(test::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test(args) => test::run(args),
    }
}
