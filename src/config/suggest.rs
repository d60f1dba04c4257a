//! "Did you mean" suggestions by edit distance, for unknown keys and group options.

use serde_yaml::Value;

use super::yaml_text::key_str;

/// Levenshtein distance over chars.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Up to three candidates close to `wanted`: by whole-path distance, or sharing its last segment
/// (so `batch_size` suggests `loader.batch_size`).
pub(crate) fn closest<'a>(wanted: &str, candidates: &'a [String]) -> Vec<&'a str> {
    let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    let wanted_last = last(wanted);
    let limit = (wanted.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .iter()
        .filter_map(|c| {
            let d = distance(wanted, c);
            let dl = distance(&wanted_last, &last(c));
            let score = if d <= limit {
                d
            } else if dl <= (wanted_last.chars().count() / 4).max(1) {
                limit + 1 + dl
            } else {
                return None;
            };
            Some((score, c.as_str()))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

/// ` (did you mean 'a', 'b'?)`, or an empty string when nothing is close.
pub(crate) fn did_you_mean(wanted: &str, candidates: &[String]) -> String {
    let close = closest(wanted, candidates);
    if close.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = close.iter().map(|c| format!("'{c}'")).collect();
        format!(" (did you mean {}?)", quoted.join(", "))
    }
}

/// Every dotted key path of a tree (inner nodes and leaves; list items are not descended).
pub(crate) fn paths(root: &Value) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Value::Mapping(m) = v {
            for (k, child) in m {
                let k = key_str(k);
                let p = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(p.clone());
                walk(child, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_suggestions() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        let c: Vec<String> = [
            "loader.batch_size",
            "loader.eval_batch_size",
            "model.length",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(closest("loader.batchsize", &c)[0], "loader.batch_size");
        assert_eq!(closest("batch_size", &c)[0], "loader.batch_size");
        assert!(closest("zzzzzz", &c).is_empty());
    }
}
