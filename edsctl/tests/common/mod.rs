//! Golden files for edsctl's tests: compare output with
//! `tests/golden/<name>`, or rewrite the file when `UPDATE_GOLDEN=1`.
//! Plus the normalisation live output needs before it can be golden
//! (pod IPs, versions, times, namespaces, ports vary from run to run).

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// Path of golden file `name`.
pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Asserts `actual` equals golden file `name`; with `UPDATE_GOLDEN=1`,
/// writes it instead.
#[track_caller]
pub fn check(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create golden dir");
        }
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} unreadable ({e}); run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "output differs from {} (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// Replaces every `from` with `to`.
pub fn replace_all(text: &str, pairs: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    // Longest first, so 10.1.0.12 is not half-replaced by 10.1.0.1.
    let mut pairs = pairs.to_vec();
    pairs.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    for (from, to) in pairs {
        out = out.replace(&from, &to);
    }
    out
}

/// Replaces runs of 16 hex digits (content versions) with `<version>`,
/// RFC 3339 times with `<time>`, and ages like `12s ago` with `<age> ago`.
pub fn mask_volatile(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        // Version: exactly 16 lower-case hex digits, not part of a longer word.
        let boundary_before = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if boundary_before {
            let hex = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                .count();
            let after = chars
                .get(i + hex)
                .is_none_or(|c| !c.is_ascii_alphanumeric());
            if hex == 16 && after {
                out.push_str("<version>");
                i += 16;
                continue;
            }
            // Time: YYYY-MM-DDTHH:MM:SS[.fff]Z
            if let Some(len) = rfc3339_len(&chars[i..]) {
                out.push_str("<time>");
                i += len;
                continue;
            }
            // Age: digits with s/m/h/d units followed by " ago".
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || "smhd".contains(chars[j])) {
                j += 1;
            }
            if j > i
                && chars[i].is_ascii_digit()
                && chars[i..]
                    .iter()
                    .collect::<String>()
                    .get(j - i..)
                    .is_some_and(|r| r.starts_with(" ago"))
            {
                out.push_str("<age>");
                i = j;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn rfc3339_len(c: &[char]) -> Option<usize> {
    let d = |i: usize| c.get(i).is_some_and(char::is_ascii_digit);
    let is = |i: usize, ch: char| c.get(i) == Some(&ch);
    let shape = (0..4).all(d)
        && is(4, '-')
        && d(5)
        && d(6)
        && is(7, '-')
        && d(8)
        && d(9)
        && is(10, 'T')
        && d(11)
        && d(12)
        && is(13, ':')
        && d(14)
        && d(15)
        && is(16, ':')
        && d(17)
        && d(18);
    if !shape {
        return None;
    }
    let mut i = 19;
    if is(i, '.') {
        i += 1;
        while d(i) {
            i += 1;
        }
    }
    is(i, 'Z').then_some(i + 1)
}

/// Re-aligns a table whose cells changed width after masking: columns are
/// split on runs of two or more spaces and padded again to three spaces.
/// Lines that are not table rows (no double space) pass through.
pub fn realign(text: &str) -> String {
    let mut out = String::new();
    let mut block: Vec<Vec<String>> = Vec::new();
    let flush = |block: &mut Vec<Vec<String>>, out: &mut String| {
        if block.is_empty() {
            return;
        }
        let cols = block.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in block.iter() {
            for (i, c) in row.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        for row in block.drain(..) {
            let mut line = String::new();
            let last = row.len().saturating_sub(1);
            for (i, c) in row.iter().enumerate() {
                line.push_str(c);
                if i < last {
                    line.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.contains("  ") && !line.starts_with('#') {
            let cells: Vec<String> = line
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            block.push(cells);
        } else {
            flush(&mut block, &mut out);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut block, &mut out);
    out
}
