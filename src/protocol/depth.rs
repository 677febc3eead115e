//! A guard against deeply nested JSON, run before any parser sees untrusted text.
//!
//! sonic-rs parses and skips nested values recursively with no depth limit, so a
//! small document of `[[[[…` (about 20 KB) overflows a thread's stack and aborts the
//! whole process (found by fuzzing). Events and client messages are shallow by
//! nature; anything nested deeper than `MAX_DEPTH` is refused up front. One linear
//! pass, no allocation.

/// Deeper than any real event or command needs.
pub const MAX_DEPTH: usize = 128;

/// Whether `text` never nests arrays/objects deeper than `max` (strings, with their
/// escapes, are skipped; malformed text is left to the parser to reject).
pub fn nesting_within(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_structure() {
        assert!(nesting_within(br#"{"a":[1,{"b":[]}]}"#, 4));
        assert!(!nesting_within(br#"{"a":[1,{"b":[]}]}"#, 3));
        assert!(
            nesting_within(br#"{"s":"[[[[[[[[[[\"[["}"#, 1),
            "brackets in strings do not count"
        );
        assert!(!nesting_within(&[b'['; 200], MAX_DEPTH));
        assert!(nesting_within(b"", 0));
    }
}
