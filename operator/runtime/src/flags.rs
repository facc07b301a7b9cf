//! Parsers for upstream's flag value syntax, so that command lines written for the Go
//! components work unchanged.

use std::time::Duration;

/// Parses a Go `time.Duration` string: `15s`, `1m30s`, `500ms`, `1.5h`, `0`.
///
/// Negative durations are refused; no flag that takes a duration means anything by them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let input = s.trim();
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    if input.is_empty() {
        return Err("empty duration".into());
    }
    if input.starts_with('-') {
        return Err(format!("negative duration {input:?}"));
    }
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {input:?}"))?;
        if num_len == 0 {
            return Err(format!("invalid duration {input:?}"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {input:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown unit {other:?} in duration {input:?}")),
        };
        rest = &rest[unit_len..];
        total += value * unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("duration {input:?} out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2h45m0s"), Ok(Duration::from_secs(9900)));
        for bad in ["", "15", "s", "-1s", "1x", "1..5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
