//! The command line a benchmark program records in its result
//! (`BenchResult::command`), so every figure in the report names the exact
//! invocation that produced it. Formatting only; it runs nothing.

use std::fmt::Display;

/// `cargo run --release -p eds-bench --bin <bin>`, followed by ` -- ` and
/// the flags that change the figures (`--quick`, `--rounds R`) when any
/// were given.
pub fn command(bin: &str, quick: bool, rounds: Option<impl Display>) -> String {
    let mut flags = Vec::new();
    if quick {
        flags.push("--quick".to_owned());
    }
    if let Some(r) = rounds {
        flags.push(format!("--rounds {r}"));
    }
    let base = format!("cargo run --release -p eds-bench --bin {bin}");
    if flags.is_empty() {
        base
    } else {
        format!("{base} -- {}", flags.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_only_when_given() {
        assert_eq!(
            command("scale", false, None::<u32>),
            "cargo run --release -p eds-bench --bin scale"
        );
        assert_eq!(
            command("picker", true, Some(3)),
            "cargo run --release -p eds-bench --bin picker -- --quick --rounds 3"
        );
    }
}
