//! Sizes as people type them: `1G`, `512M`, `64k`, `1.5G`, `4096`.

/// Parses a byte count with an optional binary suffix (K, M, G, T, P, E;
/// an optional trailing `B` or `iB` is accepted). Fractions are allowed
/// with a suffix as long as the result is a whole number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let suffix = match suffix {
        s if s.len() > 1 && (s.ends_with('B') || s.ends_with('b')) => &s[..s.len() - 1],
        "B" | "b" => "",
        s => s,
    };
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown suffix {suffix:?} (use K, M, G, T, P or E)"
            ));
        }
    };
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number like 1G or 4096"
        ));
    }
    let too_big = || format!("invalid size {s:?}: larger than 2^64 - 1 bytes");
    match num.split_once('.') {
        None => {
            let n: u64 = num
                .parse()
                .map_err(|_| format!("invalid size {s:?}: not a number"))?;
            n.checked_mul(1u64 << shift).ok_or_else(too_big)
        }
        Some((int, frac)) => {
            if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
                return Err(format!("invalid size {s:?}: not a number"));
            }
            let int: u64 = if int.is_empty() {
                0
            } else {
                int.parse()
                    .map_err(|_| format!("invalid size {s:?}: not a number"))?
            };
            // Exact arithmetic: frac / 10^digits * 2^shift must be whole.
            let digits = u32::try_from(frac.len()).map_err(|_| too_big())?;
            let den = 10u128.checked_pow(digits).ok_or_else(too_big)?;
            let f: u128 = if frac.is_empty() {
                0
            } else {
                frac.parse()
                    .map_err(|_| format!("invalid size {s:?}: not a number"))?
            };
            let scaled = f * (1u128 << shift);
            if scaled % den != 0 {
                return Err(format!("invalid size {s:?}: not a whole number of bytes"));
            }
            let total = u128::from(int) * (1u128 << shift) + scaled / den;
            u64::try_from(total).map_err(|_| too_big())
        }
    }
}

/// `1073741824` → `1 GiB`, for log lines.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    while i + 1 < UNITS.len() && n >= 1u64 << (10 * (i + 1)) && n % (1u64 << (10 * (i + 1))) == 0 {
        i += 1;
    }
    format!("{} {}", n >> (10 * i), UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("3MB"), Ok(3 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("16E").unwrap_err().contains("larger"), true);
        assert!(parse_size("0.3").is_err());
        assert!(parse_size("1Q").unwrap_err().contains("suffix"));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1..2G").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(1536), "1536 B");
        assert_eq!(human(3 << 20), "3 MiB");
    }
}
