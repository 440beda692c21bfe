//! The `edsctl` binary: parse flags, decide on colour, run, and turn an
//! error into one readable message, a hint and its exit code (see
//! `edsctl --help`). Everything else is the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use edsctl::cli::{Cli, ColorChoice};

fn main() -> ExitCode {
    // A bug must still not greet the user with a stack trace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("edsctl: internal error ({info}); please report it with the command you ran");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version exit 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = match cli.global.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal() && !no_color,
    };
    let err_color =
        cli.global.color != ColorChoice::Never && std::io::stderr().is_terminal() && !no_color;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let result = runtime.block_on(edsctl::run(cli, color, &mut out, &mut err));
    // Port-forward and connection tasks may still be running; do not wait.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let label = if err_color {
                "\x1b[31;1merror\x1b[0m"
            } else {
                "error"
            };
            eprintln!("{label}: {e}");
            let mut last = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                // Many errors repeat their source's text; say it once.
                if !last.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                last = text;
                source = s.source();
            }
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
