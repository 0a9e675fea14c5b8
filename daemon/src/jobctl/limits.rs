//! Parsing of jobctl's flag values: sizes, CPUs, counts, durations, `KEY=VALUE`.
//!
//! Every parser refuses zero, negative and malformed values with a message naming the accepted
//! forms; clap reports them as usage errors (exit status 2) before anything is sent.

use std::time::Duration;

/// The accepted forms of a size, for error messages.
pub const SIZE_FORMS: &str =
    "a positive number of bytes, optionally with a suffix K, M, G, T (or Ki, Mi, Gi, Ti; all powers of 1024), e.g. 512K, 128M, 1.5G, 1Gi, 4096";
/// The accepted forms of a CPU amount.
pub const CPU_FORMS: &str = "a positive number of CPUs, e.g. 0.5, 1, 2.25 (at least 0.001)";
/// The accepted forms of a count.
pub const COUNT_FORMS: &str = "a positive whole number, e.g. 64";
/// The accepted forms of a duration.
pub const DURATION_FORMS: &str =
    "a positive duration: a number with a unit ms, s, m or h (e.g. 500ms, 30s, 1.5m, 2h), or plain seconds";

/// A refused flag value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not valid: expected {forms}")]
pub struct ParseError {
    /// What was given.
    pub value: String,
    /// What is accepted.
    pub forms: &'static str,
}

fn err(value: &str, forms: &'static str) -> ParseError {
    ParseError {
        value: value.to_string(),
        forms,
    }
}

/// Splits `s` into a non-negative decimal number (digits with at most one '.') and the rest.
/// Returns the number as (integer part, fraction digits) and the suffix.
fn split_number(s: &str) -> Option<(&str, &str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None; // a second '.'
    }
    if num.ends_with('.') || (num.starts_with('.') && int.is_empty() && frac.is_empty()) {
        return None;
    }
    Some((int, frac, suffix))
}

/// `int.frac * scale`, exactly (truncating sub-unit remainders), or None on overflow.
fn scaled(int: &str, frac: &str, scale: u128) -> Option<u128> {
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut v = int.checked_mul(scale)?;
    if !frac.is_empty() {
        if frac.len() > 18 {
            return None;
        }
        let f: u128 = frac.parse().ok()?;
        let den = 10u128.pow(frac.len() as u32);
        v = v.checked_add(f.checked_mul(scale)? / den)?;
    }
    Some(v)
}

/// A size in bytes: `4096`, `512K`, `128M`, `1G`, `1Gi`, `100Mi`, `1.5G` (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, ParseError> {
    let t = s.trim();
    let (int, frac, suffix) = split_number(t).ok_or_else(|| err(s, SIZE_FORMS))?;
    let scale: u128 = match suffix {
        "" | "B" | "b" => 1,
        "K" | "k" | "Ki" | "KiB" | "KB" | "kb" => 1 << 10,
        "M" | "m" | "Mi" | "MiB" | "MB" | "mb" => 1 << 20,
        "G" | "g" | "Gi" | "GiB" | "GB" | "gb" => 1 << 30,
        "T" | "t" | "Ti" | "TiB" | "TB" | "tb" => 1 << 40,
        _ => return Err(err(s, SIZE_FORMS)),
    };
    if scale == 1 && !frac.is_empty() {
        return Err(err(s, SIZE_FORMS)); // fractional bytes
    }
    match scaled(int, frac, scale) {
        Some(v) if v > 0 && v <= u64::MAX as u128 => Ok(v as u64),
        _ => Err(err(s, SIZE_FORMS)),
    }
}

/// CPUs as millicores: `0.5` -> 500, `2` -> 2000.
pub fn parse_cpus(s: &str) -> Result<u32, ParseError> {
    let t = s.trim();
    match split_number(t) {
        Some((int, frac, "")) => match scaled(int, frac, 1000) {
            Some(v) if v > 0 && v <= u32::MAX as u128 => Ok(v as u32),
            _ => Err(err(s, CPU_FORMS)),
        },
        _ => Err(err(s, CPU_FORMS)),
    }
}

/// A positive count that fits in 32 bits.
pub fn parse_count(s: &str) -> Result<u32, ParseError> {
    match s.trim().parse::<u32>() {
        Ok(v) if v > 0 && !s.trim().starts_with('+') => Ok(v),
        _ => Err(err(s, COUNT_FORMS)),
    }
}

/// A positive count that fits in 64 bits (IO operations per second).
pub fn parse_count64(s: &str) -> Result<u64, ParseError> {
    match s.trim().parse::<u64>() {
        Ok(v) if v > 0 && !s.trim().starts_with('+') => Ok(v),
        _ => Err(err(s, COUNT_FORMS)),
    }
}

/// A duration: `500ms`, `30s`, `1.5m`, `2h`, or plain seconds (`10`).
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let t = s.trim();
    let (int, frac, suffix) = split_number(t).ok_or_else(|| err(s, DURATION_FORMS))?;
    let ms_per: u128 = match suffix {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err(s, DURATION_FORMS)),
    };
    match scaled(int, frac, ms_per) {
        Some(v) if v > 0 && v <= u64::MAX as u128 => Ok(Duration::from_millis(v as u64)),
        _ => Err(err(s, DURATION_FORMS)),
    }
}

/// `KEY=VALUE` (the value may be empty and may contain '=').
pub fn parse_env(s: &str) -> Result<(String, String), ParseError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(err(s, "KEY=VALUE with a non-empty KEY")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("128M"), Ok(128 << 20));
        assert_eq!(parse_bytes("128m"), Ok(128 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("100Mi"), Ok(100 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("10M"), Ok(10 << 20));
    }

    #[test]
    fn bad_sizes_name_the_forms() {
        for bad in [
            "128X",
            "-1",
            "0",
            "0M",
            "1.5.0",
            "",
            "M",
            "1.5",
            ".",
            "1.",
            "1 2",
            "+5",
            "99999999999T",
        ] {
            let e = parse_bytes(bad).expect_err(bad);
            assert!(e.to_string().contains("128M"), "{e}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("1"), Ok(1000));
        assert_eq!(parse_cpus("2.25"), Ok(2250));
        assert_eq!(parse_cpus(".5"), Ok(500));
        assert_eq!(parse_cpus("0.001"), Ok(1));
        for bad in ["0", "-1", "1.5.0", "0.0001", "1c", "", "abc"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("64"), Ok(64));
        assert_eq!(parse_count64("1000"), Ok(1000));
        for bad in ["0", "-1", "1.5", "x", "", "+3"] {
            assert!(parse_count(bad).is_err(), "{bad}");
            assert!(parse_count64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["0", "-1s", "1.5.0", "5x", "", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), "".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("A").is_err());
    }
}
