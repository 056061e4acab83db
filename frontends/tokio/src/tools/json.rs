//! The little JSON and size formatting nbdinfo's output needs.

/// A JSON string literal, with every terminal control escaped (see
/// [`crate::client::text`]).
pub use crate::client::text::json_string as string;

/// libnbd's `human_size`: the largest binary unit dividing the size
/// exactly ("64M", "1536K", "513"); true if a unit was used.
pub fn human_size(mut bytes: u64) -> (String, bool) {
    const UNITS: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    let mut i = 0;
    while bytes != 0 && bytes & 1023 == 0 && i < 6 {
        bytes >>= 10;
        i += 1;
    }
    (format!("{bytes}{}", UNITS[i]), i > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_strings() {
        assert_eq!(human_size(64 << 20), ("64M".into(), true));
        assert_eq!(human_size(1536 << 10), ("1536K".into(), true));
        assert_eq!(human_size(513), ("513".into(), false));
        assert_eq!(human_size(0), ("0".into(), false));
        assert_eq!(string("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
    }
}
