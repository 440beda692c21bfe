//! eds-server's entry point: parse and validate flags, then run.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = eds_server::config::Args::parse().validate()?;
    let telemetry = eds_server::telemetry::init(
        &config.args.log_format,
        config.args.otlp_endpoint.as_deref(),
    )?;
    let result = eds_server::app::run(config).await;
    // Send the spans of the last moments before exiting.
    drop(telemetry);
    result
}
