//! The page's HTML pieces: escaping, tables, and the self-contained document (inline CSS, no
//! script, nothing fetched), so a report can be mailed or opened from a cluster's scratch disk.

use std::fmt::Write;

/// Text made safe inside HTML and SVG, both in element content and in quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table of plain-text cells (escaped here); `class` names its kind for readers and tests.
pub fn table(class: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(r#"<table class="{}"><thead><tr>"#, escape(class));
    for h in headers {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>");
    for row in rows {
        s.push_str("<tr>");
        for cell in row {
            let _ = write!(s, "<td>{}</td>", escape(cell));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>\n");
    s
}

/// Text shown as it is (a config, a sample), escaped, in a `<pre>`.
pub fn pre(class: &str, text: &str) -> String {
    format!(r#"<pre class="{}">{}</pre>"#, escape(class), escape(text))
}

/// A collapsible block (no script: the browser's own `<details>`).
pub fn details(summary: &str, open: bool, body: &str) -> String {
    format!(
        "<details{}><summary>{}</summary>{body}</details>\n",
        if open { " open" } else { "" },
        escape(summary)
    )
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 980px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin: 1.2em 0 0.3em; }
.note { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
pre.sample { border-left: 3px solid #4e79a7; }
svg.chart { width: 100%; height: auto; max-width: 720px; display: block; }
svg .frame { fill: none; stroke: #999; }
svg .grid { stroke: #eee; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
svg .extreme { font-weight: bold; fill: #000; }
svg .axis { font-size: 12px; fill: #222; }
svg .line { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
svg .line.raw { stroke-width: 1; opacity: 0.3; }
svg .key { stroke-width: 3; }
"#;

/// The whole page around `body`.
pub fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_both_quotes() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        // Already-escaped text is escaped again, not passed through.
        assert_eq!(escape("&amp;"), "&amp;amp;");
        assert_eq!(escape("plain ü"), "plain ü");
    }

    #[test]
    fn table_cells_and_pre_text_are_escaped() {
        let t = table("t", &["a<b"], &[vec!["</td><script>".to_string()]]);
        assert!(t.contains("<th>a&lt;b</th>"));
        assert!(t.contains("<td>&lt;/td&gt;&lt;script&gt;</td>"));
        assert!(!t.contains("<script>"));
        assert_eq!(pre("c", "x < y"), r#"<pre class="c">x &lt; y</pre>"#);
    }
}
