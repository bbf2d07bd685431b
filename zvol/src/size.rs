//! Human sizes: binary units (`K` = KiB, `G` = GiB), as zfs(8) and qemu-img take them.

use crate::error::{Error, Result};

/// Parses `512`, `4K`, `1.5G`, `10GiB`, `2t` (binary units; a trailing `B`/`iB` is allowed).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        Error::InvalidArgument(format!(
            "'{s}' is not a size (examples: 4096, 64K, 10G, 1.5T)"
        ))
    };
    let t = s.trim();
    // "GiB", "GB", "G" and "g" alike; a bare "iB" or "B" suffix needs a unit before it.
    let (t, binary) = match t.strip_suffix("iB").or_else(|| t.strip_suffix("ib")) {
        Some(rest) => (rest, true),
        None => (t, false),
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let unit = if unit.len() > 1 && !binary {
        unit.strip_suffix(['B', 'b']).unwrap_or(unit)
    } else {
        unit
    };
    let shift: u32 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" if !binary => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(bad()),
    };
    // Exact decimal arithmetic (no floating point): whole part, then the fraction rounded up
    // to a whole byte. A fraction needs a unit: there is no half a byte.
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty()
        || !frac.chars().all(|c| c.is_ascii_digit())
        || (!frac.is_empty() && shift == 0)
        // More would overflow below, and no size needs it (18 digits of a P are 1/256 byte).
        || frac.len() > 18
    {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_bytes = if frac.is_empty() {
        0
    } else {
        let digits: u128 = frac.parse().map_err(|_| bad())?;
        let scale = 10u128.pow(frac.len() as u32);
        // At most 18 digits (< 2^60) times 2^50: no overflow in u128.
        (digits << shift).div_ceil(scale)
    };
    whole
        .checked_mul(1u128 << shift)
        .and_then(|b| b.checked_add(frac_bytes))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(bad)
}

/// Formats bytes with the largest binary unit that keeps three significant digits (`1.50G`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut u = 0;
    // Up a unit when the number would show as 1024 once rounded (1048575 is "1.00M").
    while v >= 1023.5 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    // Digits after the point by the value as rounded, so that 9.999 is "10.0", not "10.00".
    if u == 0 {
        format!("{bytes}B")
    } else if v < 9.995 {
        format!("{v:.2}{}", UNITS[u])
    } else if v < 99.95 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5m").unwrap(), 3 << 19);
        assert_eq!(parse_size("2TB").unwrap(), 2 << 40);
        assert_eq!(parse_size("1.1G").unwrap(), 1181116007); // ceil(1.1 * 2^30)
        assert_eq!(parse_size(".5K").unwrap(), 512);
        assert_eq!(parse_size("16383P").unwrap(), 16383 << 50);
        assert_eq!(parse_size("0.999999999999999999P").unwrap(), 1 << 50); // rounded up
        for bad in [
            "",
            "G",
            "ten",
            "1X",
            "1.2.3K",
            "99999999999999P",
            "-1",
            "1iB",
            "1.5",
            "16384P",
            "1e3K",
            "1.K5",
            ".",
            "1 iB",
            // 30 digits: once a wrong 146M, not 1P.
            "0.999999999999999999999999999999P",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512B");
        assert_eq!(format_size(1536), "1.50K");
        assert_eq!(format_size(10 << 30), "10.0G");
        assert_eq!(format_size(300 << 20), "300M");
        assert_eq!(format_size(1048575), "1.00M");
        assert_eq!(format_size(10235), "10.0K");
        assert_eq!(format_size(u64::MAX), "16384P");
    }
}
