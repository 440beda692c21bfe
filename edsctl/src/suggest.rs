//! "Did you mean": close matches for a service key the server does not
//! know, among the keys it does.
//!
//! Ranking: the same Service and namespace with another port first (the
//! usual mistake is the port), then by edit similarity of the whole key
//! (Damerau-Levenshtein, normalised), keeping only close ones. Pure; no
//! IO. Not a general fuzzy finder: it only ever offers a few keys.

use lb_core::ServiceKey;

/// At most this many suggestions.
const MAX: usize = 3;
/// Below this similarity (0..=1) a key is not offered.
const MIN_SIMILARITY: f64 = 0.7;

/// Keys from `known` close to `wanted`, best first.
pub fn close_matches<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let parsed = wanted.parse::<ServiceKey>().ok();
    let canonical = parsed
        .as_ref()
        .map_or_else(|| wanted.to_owned(), |k| k.canonical().to_string());
    let mut scored: Vec<(u8, f64, &str)> = known
        .into_iter()
        .filter(|k| *k != canonical)
        .filter_map(|k| {
            let same_service = match (&parsed, k.parse::<ServiceKey>()) {
                (Some(w), Ok(k)) => w.name() == k.name() && w.namespace() == k.namespace(),
                _ => false,
            };
            let sim = strsim::normalized_damerau_levenshtein(&canonical, k);
            (same_service || sim >= MIN_SIMILARITY).then_some((u8::from(!same_service), sim, k))
        })
        .collect();
    scored.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.total_cmp(&a.1))
            .then_with(|| a.2.cmp(b.2))
    });
    scored
        .into_iter()
        .take(MAX)
        .map(|(_, _, k)| k.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: [&str; 5] = [
        "echo.demo:8080",
        "echo.demo:9000",
        "echo.prod:8080",
        "users.demo:8080",
        "zzz.other:1",
    ];

    #[test]
    fn same_service_other_port_comes_first() {
        assert_eq!(
            close_matches("echo.demo:8081", KNOWN),
            ["echo.demo:8080", "echo.demo:9000"]
        );
    }

    #[test]
    fn typos_in_the_name_are_caught_and_strangers_are_not() {
        assert_eq!(close_matches("ehco.demo:8080", KNOWN)[0], "echo.demo:8080");
        assert!(close_matches("payments.billing:443", KNOWN).is_empty());
        // The fully qualified form compares as its canonical form.
        assert_eq!(
            close_matches("echo.demo.svc.cluster.local:9001", KNOWN)[0],
            "echo.demo:9000"
        );
    }
}
