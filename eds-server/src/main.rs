//! eds-server's entry point: parse and validate flags, then run.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = eds_server::config::Args::parse().validate()?;
    eds_server::app::init_tracing(&config.args.log_format);
    eds_server::app::run(config).await
}
