//! Naming rules for pools and datasets (as in ZFS): components of letters, digits and
//! `_ . : -`, separated by `/` below the pool name.

use crate::error::{Error, Result};

/// Longest full dataset name, pool included.
pub const MAX_NAME: usize = 255;

fn check_component(full: &str, c: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            name: full.to_string(),
            reason: reason.into(),
        })
    };
    if c.is_empty() {
        return bad("empty component (leading, trailing or doubled '/')");
    }
    if c == "." || c == ".." {
        return bad("'.' and '..' are not names");
    }
    if let Some(ch) = c
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || "_.:-".contains(*ch)))
    {
        return bad(&format!(
            "character '{ch}' is not allowed (use letters, digits, '_', '.', ':', '-')"
        ));
    }
    Ok(())
}

/// Checks a pool name: one component starting with a letter.
pub fn check_pool_name(name: &str) -> Result<()> {
    check_component(name, name)?;
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: "a pool name starts with a letter".into(),
        });
    }
    check_length(name)
}

/// Splits `POOL/a/b` into (`POOL`, `a/b`), checking both parts.
pub fn split_dataset_name(full: &str) -> Result<(&str, &str)> {
    let Some((pool, rest)) = full.split_once('/') else {
        return Err(Error::InvalidName {
            name: full.into(),
            reason: "expected POOL/NAME".into(),
        });
    };
    check_pool_name(pool)?;
    check_length(full)?;
    for c in rest.split('/') {
        check_component(full, c)?;
    }
    Ok((pool, rest))
}

/// Splits `POOL/a/b` or `POOL/a/b@snap` into (`POOL`, `a/b` or `a/b@snap`), checking each part
/// and the whole name's length, as ZFS has it (the directory stores names with a u16 length,
/// and a longer snapshot part used to be cut there, which made the directory leaf undecodable
/// and the pool open at an older txg).
pub fn split_any_name(full: &str) -> Result<(&str, &str)> {
    check_length(full)?;
    split_any_name_of_any_length(full)
}

/// Refuses a name longer than [`MAX_NAME`].
pub fn check_length(full: &str) -> Result<()> {
    if full.len() > MAX_NAME {
        return Err(Error::InvalidName {
            name: full.into(),
            reason: format!("longer than {MAX_NAME} bytes"),
        });
    }
    Ok(())
}

/// [`split_any_name`] without the length limit on snapshot names, for names a pool already
/// holds: pools written before the limit may have longer ones, and must still open.
pub fn split_any_name_of_any_length(full: &str) -> Result<(&str, &str)> {
    match full.split_once('@') {
        None => split_dataset_name(full),
        Some((head, snap)) => {
            let (pool, _) = split_dataset_name(head)?;
            check_component(full, snap)?;
            if snap.contains('/') {
                return Err(Error::InvalidName {
                    name: full.into(),
                    reason: "a snapshot name has no '/'".into(),
                });
            }
            Ok((pool, &full[pool.len() + 1..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert_eq!(
            split_dataset_name("tank/a/b-1.2:x_y").unwrap(),
            ("tank", "a/b-1.2:x_y")
        );
        for bad in [
            "tank",
            "tank/",
            "tank//a",
            "tank/a b",
            "1tank/a",
            "tank/a/..",
            "tank/é",
        ] {
            assert!(split_dataset_name(bad).is_err(), "{bad}");
        }
        assert!(check_pool_name("tank-2").is_ok());
        assert_eq!(split_any_name("tank/a/b@s1").unwrap(), ("tank", "a/b@s1"));
        assert_eq!(split_any_name("tank/a").unwrap(), ("tank", "a"));
        for bad in [
            "tank/a@",
            "tank/a@b@c",
            "tank@s",
            "tank/a@s/x",
            "tank/a@s p",
        ] {
            assert!(split_any_name(bad).is_err(), "{bad}");
        }
        assert!(check_pool_name("-tank").is_err());
    }
}
