//! Arbitrary UTF-8 through `sql::sanitize` / `summarize` in both dialects.
//! Checks: no panic; output at most `MAX_LEN` bytes; sanitize is idempotent
//! (which also means its output holds no literal the lexer would redact);
//! and a literal `'zq9137'` placed after any text that cannot open a quote,
//! comment or dollar string is always redacted, whatever follows it.
#![no_main]

use autotel_protocols::sql::{sanitize, span_name, summarize, Dialect, MAX_LEN};
use libfuzzer_sys::fuzz_target;

const MARKER: &str = "zq9137";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for d in [Dialect::Postgres, Dialect::Mysql] {
        let once = sanitize(text, d);
        assert!(once.len() <= MAX_LEN, "{} bytes", once.len());
        assert_eq!(
            sanitize(&once, d),
            once,
            "not idempotent for {text:?} ({d:?})"
        );
        let _ = span_name(&summarize(text, d));

        // Prefix in plain code state: nothing that starts a quote or comment.
        let mid = text.len() / 2;
        let mid = (0..=mid)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let (head, tail) = text.split_at(mid);
        let head: String = head
            .chars()
            .filter(|c| !"'\"`$-/#*\\z".contains(*c))
            .collect();
        let probe = format!("{head}'{MARKER}'{tail}");
        let out = sanitize(&probe, d);
        assert!(
            text.contains(MARKER) || !out.contains(MARKER),
            "literal leaked: {probe:?} -> {out:?} ({d:?})"
        );
    }
});
