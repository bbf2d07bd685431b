//! Reservations (ZFS's `refreservation`): space a volume is guaranteed, so that a guest's
//! disk never runs out of room because other volumes filled the pool (a thick volume).
//!
//! A volume's reservation R is kept in its property [`REFRESERVATION_PROP`] (`auto`: its size;
//! or bytes). What the pool holds for it beyond what it already uses alone is its *slack*:
//! R minus its `written` bytes (data born since its latest snapshot or origin: what no
//! snapshot shares), plus the block map that rest needs and an overwrite headroom
//! ([`OVERWRITE_HEADROOM`]). Writes to other
//! volumes see the pool's free space less every other volume's slack; a volume's own writes
//! may use its slack. A snapshot sets `written` to 0, so
//! taking one raises the slack back to R and is refused where the pool cannot hold that (as
//! in ZFS). Slack is recomputed at every commit (which is when `written` changes) and at open;
//! between commits, a reserved volume's pending writes are counted both in its slack and as
//! dirty data, which only ever refuses others early.

use crate::blocktree::indirect_blocks;
use crate::error::{Error, Result};
use crate::phys::{DatasetKind, INDIRECT_SIZE, SECTOR};
use crate::pool::{lock, writable, DatasetEntry, Shared};
use crate::volume::Volume;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// The property that holds a volume's reservation: `auto` (its size) or a byte count.
pub const REFRESERVATION_PROP: &str = "tarn:refreservation";

/// Most a reserved volume holds beyond its reservation, for the new copies of blocks it
/// overwrites while the old ones wait out their deferral (`DEFER_TXGS` commits): without it,
/// a thick volume written whole in an otherwise full pool could not overwrite itself. A
/// writer short of space commits, each commit releasing the frees of older ones, so a few
/// of its requests' worth keeps it going.
pub const OVERWRITE_HEADROOM: u64 = 16 << 20;

/// What the pool holds for a reservation of `r` bytes on a volume of `block_size`-byte blocks
/// that uses `written` bytes alone: the rest of the reservation, the block map that rest
/// needs (indirect blocks are metadata, outside `written`; as ZFS counts a zvol's metadata in
/// its reservation), and the overwrite headroom.
pub(crate) fn held(r: u64, written: u64, block_size: u32) -> u64 {
    if r == 0 {
        return 0;
    }
    let rest = r.saturating_sub(written);
    rest.saturating_add(map_bytes(rest, block_size))
        .saturating_add(r.min(OVERWRITE_HEADROOM))
}

/// Bytes of indirect blocks that map `bytes` of data in `block_size`-byte blocks.
fn map_bytes(bytes: u64, block_size: u32) -> u64 {
    if bytes == 0 {
        return 0;
    }
    let blocks = bytes.div_ceil(u64::from(block_size.max(1)));
    let indirect = usize::try_from(blocks).map_or(usize::MAX, indirect_blocks);
    (indirect as u64).saturating_mul(INDIRECT_SIZE as u64)
}

/// A volume's reservation in bytes, from its properties and its size (0 when it has none, or
/// an unreadable value, which only a damaged directory could hold).
pub(crate) fn reservation(props: &BTreeMap<String, String>, size: u64) -> u64 {
    match props.get(REFRESERVATION_PROP).map(String::as_str) {
        None => 0,
        Some("auto") => size,
        Some(v) => v.parse().unwrap_or(0),
    }
}

/// Checks the value of [`REFRESERVATION_PROP`] in `props`, if set there: `auto`, a byte
/// count, or empty (none).
pub(crate) fn check_values<'a>(
    mut props: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<()> {
    props.try_for_each(|(k, v)| {
        if k == REFRESERVATION_PROP {
            check_value(v)
        } else {
            Ok(())
        }
    })
}

fn check_value(v: &str) -> Result<()> {
    if v.is_empty() || v == "auto" || v.parse::<u64>().is_ok() {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "refreservation '{v}': expected auto, none or a size"
    )))
}

/// Refuses `props` that set a reservation where one cannot be set (a clone, a received
/// stream's landing, an NFS view's staged properties): set it on the volume afterwards.
pub(crate) fn refuse_in(props: &[(String, String)], what: &str) -> Result<()> {
    if props.iter().any(|(k, _)| k == REFRESERVATION_PROP) {
        return Err(Error::InvalidArgument(format!(
            "{what} cannot set refreservation; set it on the volume afterwards"
        )));
    }
    Ok(())
}

impl Shared {
    /// Recomputes every volume's slack and their total.
    pub(crate) fn refresh_slack(&self, ds: &BTreeMap<u64, DatasetEntry>) {
        let mut total = 0u64;
        for d in ds.values().filter(|d| d.kind == DatasetKind::Volume) {
            let st = lock(&d.vol.state);
            let r = reservation(&d.props, st.size);
            let slack = held(r, st.written.saturating_mul(SECTOR), d.vol.block_size);
            drop(st);
            d.vol.slack.store(slack, Ordering::Release);
            total = total.saturating_add(slack);
        }
        self.slack_total.store(total, Ordering::Release);
    }

    /// What holding `target` bytes for `vol` (see [`held`]) adds to what it holds now.
    pub(crate) fn slack_increase(&self, vol: &Volume, target: u64) -> u64 {
        target.saturating_sub(vol.slack.load(Ordering::Acquire))
    }

    /// Bytes held for the reservations of volumes other than `vol`.
    pub(crate) fn held_for_others(&self, vol: &Volume) -> u64 {
        self.slack_total
            .load(Ordering::Acquire)
            .saturating_sub(vol.slack.load(Ordering::Acquire))
    }

    /// Refuses a change that holds `increase` more bytes for reservations (for `vol`, or
    /// for a volume being made) than the pool's writable space, less dirty data and what is
    /// held already, has; holds it at once otherwise, so that neither writers nor another
    /// change can take it before the commit that makes the change recomputes what is held
    /// (a change that fails after this holds it until that commit). Checked and counted under
    /// the space-map lock, as writers count their reservations. Called with the commit lock
    /// held, before anything changes.
    pub(crate) fn admit(&self, increase: u64, vol: Option<&Volume>) -> Result<()> {
        if increase == 0 {
            return Ok(());
        }
        let sm = lock(&self.spacemap);
        let avail = writable(&sm)
            .saturating_sub(self.dirty_bytes.load(Ordering::Acquire))
            .saturating_sub(self.slack_total.load(Ordering::Acquire));
        if increase > avail {
            return Err(Error::NoSpace {
                pool: self.name().into(),
                needed: increase,
                available: avail,
            });
        }
        self.slack_total.fetch_add(increase, Ordering::AcqRel);
        if let Some(v) = vol {
            v.slack.fetch_add(increase, Ordering::AcqRel);
        }
        Ok(())
    }
}
