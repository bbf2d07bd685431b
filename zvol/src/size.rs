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
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let unit = if unit.len() > 1 {
        unit.strip_suffix(['B', 'b']).unwrap_or(unit)
    } else {
        unit
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    let v = if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| bad())?;
        let bytes = f * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(bad());
        }
        bytes.ceil() as u64
    } else {
        let n: u64 = num.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift).ok_or_else(bad)?
    };
    Ok(v)
}

/// Formats bytes with the largest binary unit that keeps three significant digits (`1.50G`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else if v < 10.0 {
        format!("{v:.2}{}", UNITS[u])
    } else if v < 100.0 {
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
        for bad in ["", "G", "ten", "1X", "1.2.3K", "99999999999999P", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512B");
        assert_eq!(format_size(1536), "1.50K");
        assert_eq!(format_size(10 << 30), "10.0G");
        assert_eq!(format_size(300 << 20), "300M");
    }
}
