//! Snapshots as users see them, on top of the pool's mechanics (`pool::Pool::snapshot`,
//! `clone_snapshot`, `rollback`, `promote`, `destroy_with`, `hold`, `diff`):
//!
//! - [`rollback`]: `-r`/`-R` semantics (destroy newer snapshots, and their clones, first;
//!   checked up front so a refused rollback changes nothing);
//! - [`send`] and [`recv`]: the send stream (`STREAM.md`), full and incremental, received
//!   into a temporary volume that only becomes visible once the whole stream verified.

mod error;
pub mod stream;

pub use error::{Error, Result};
pub use pool::Recursion;

use pool::{DatasetInfo, DatasetKind, Landing, Pool, VolumeHandle};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use stream::{Begin, Record, StreamReader, StreamWriter, CHUNK};

/// Suffix of the temporary volume a receive writes into.
pub const PARTIAL_SUFFIX: &str = ".recv-partial";

/// Property that marks a volume as a receive's temporary one: only a volume carrying it is
/// destroyed as the leftover of an interrupted receive (a user's own volume of that name is
/// not).
pub const PARTIAL_TAG: &str = "tarn:receiving";

/// `props` with [`PARTIAL_TAG`] added.
fn tagged(props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut p = props.clone();
    p.insert(PARTIAL_TAG.into(), "1".into());
    p
}

/// Splits `POOL/VOL@SNAP` into (`POOL/VOL`, `SNAP`), checking the name.
pub fn split_snapshot(full: &str) -> Result<(&str, &str)> {
    pool::names::split_any_name(full)?;
    full.split_once('@').ok_or_else(|| {
        Error::InvalidArgument(format!("{full} is not a snapshot name (POOL/VOL@SNAP)"))
    })
}

/// `vol`'s snapshots, oldest first.
pub fn snapshots_of<'a>(all: &'a [DatasetInfo], vol: &str) -> Vec<&'a DatasetInfo> {
    let prefix = format!("{vol}@");
    let mut v: Vec<&DatasetInfo> = all
        .iter()
        .filter(|d| d.kind == DatasetKind::Snapshot && d.name.starts_with(&prefix))
        .collect();
    v.sort_by_key(|d| d.creation_txg);
    v
}

/// Why destroying `name` with `rec` would be refused, if it would (mirrors the pool's rules).
fn destroy_blocker(
    all: &BTreeMap<&str, &DatasetInfo>,
    name: &str,
    rec: Recursion,
) -> Option<String> {
    let d = all.get(name)?;
    if d.kind == DatasetKind::Snapshot {
        if !d.holds.is_empty() {
            return Some(format!("{name} has holds ({})", d.holds.join(", ")));
        }
        if !d.clones.is_empty() {
            if rec < Recursion::All {
                return Some(format!(
                    "{name} has clones ({}); use -R",
                    d.clones.join(", ")
                ));
            }
            return d
                .clones
                .iter()
                .find_map(|c| destroy_blocker(all, c, Recursion::All));
        }
        None
    } else {
        let prefix = format!("{name}@");
        all.keys()
            .filter(|k| k.starts_with(&prefix))
            .find_map(|s| destroy_blocker(all, s, rec))
    }
}

/// Rolls a volume back to snapshot `snap`. With `Recursion::None` newer snapshots make it
/// refuse (naming them); `Snapshots` destroys them first (refusing if they have clones or
/// holds), `All` their clones too. Everything is checked before anything is destroyed.
/// Returns the names destroyed.
pub fn rollback(pool: &Pool, snap: &str, rec: Recursion) -> Result<Vec<String>> {
    let (vol, _) = split_snapshot(snap)?;
    let all = pool.list()?;
    let snaps = snapshots_of(&all, vol);
    let pos = snaps
        .iter()
        .position(|d| d.name == snap)
        .ok_or_else(|| pool::Error::NotFound(snap.into()))?;
    let newer: Vec<String> = snaps[pos + 1..].iter().map(|d| d.name.clone()).collect();
    let mut gone = Vec::new();
    if rec > Recursion::None && !newer.is_empty() {
        let by_name: BTreeMap<&str, &DatasetInfo> =
            all.iter().map(|d| (d.name.as_str(), d)).collect();
        if let Some(why) = newer.iter().find_map(|n| destroy_blocker(&by_name, n, rec)) {
            return Err(pool::Error::HasDependents {
                action: "roll back to".into(),
                name: snap.into(),
                reason: format!("a newer snapshot cannot be destroyed: {why}"),
            }
            .into());
        }
        for n in newer.iter().rev() {
            gone.extend(pool.destroy_with(n, rec)?);
        }
    }
    pool.rollback(snap)?;
    Ok(gone)
}

/// What a send wrote.
#[derive(Clone, Debug, Default)]
pub struct SendSummary {
    /// Stream bytes.
    pub bytes: u64,
    /// Data bytes carried in WRITE records.
    pub write_bytes: u64,
    /// Bytes described by FREE records.
    pub free_bytes: u64,
}

/// Resolves `-i` (`@OLDER` or `POOL/VOL@OLDER`) against `snap`'s volume.
pub fn resolve_from(snap: &str, from: &str) -> Result<String> {
    let (vol, _) = split_snapshot(snap)?;
    let full = match from.strip_prefix('@') {
        Some(s) => format!("{vol}@{s}"),
        None => from.to_string(),
    };
    let (fvol, _) = split_snapshot(&full)?;
    if fvol != vol {
        return Err(Error::InvalidArgument(format!(
            "{full} is not a snapshot of {vol}"
        )));
    }
    if full == snap {
        return Err(Error::InvalidArgument(format!(
            "an incremental stream needs an older snapshot than {snap}"
        )));
    }
    Ok(full)
}

/// Copies `len` bytes at `off` of `vol` into WRITE records; with `dry`, records of the same
/// sizes holding zeroes, without reading the volume.
fn copy_range<W: Write>(
    vol: &VolumeHandle,
    w: &mut StreamWriter<W>,
    buf: &mut [u8],
    (off, len): (u64, u64),
    dry: bool,
) -> Result<()> {
    let mut p = off;
    while p < off + len {
        let n = (off + len - p).min(buf.len() as u64) as usize;
        if !dry {
            vol.read_at(p, &mut buf[..n])?;
        }
        w.write(p, &buf[..n])
            .map_err(|e| Error::io("writing the stream", e))?;
        p += n as u64;
    }
    Ok(())
}

/// Writes a stream of snapshot `snap` to `out`: full (only blocks holding data), or
/// incremental from `from` (a full `POOL/VOL@OLDER`; see [`resolve_from`]) carrying only the
/// ranges `Pool::diff` reports, as WRITE records for data and FREE records for zeroed ranges.
pub fn send<W: Write>(pool: &Pool, snap: &str, from: Option<&str>, out: W) -> Result<SendSummary> {
    let mut out = std::io::BufWriter::with_capacity(256 << 10, out);
    send_part(pool, snap, from, &mut out, 0, false)
}

/// What [`send`] (or, with `package`, [`send_package`]) would write, exactly, without
/// writing it or reading any data (`zfs send -n`): the walk of what changed is the same,
/// and data records are counted at their sizes.
pub fn send_estimate(
    pool: &Pool,
    snap: &str,
    from: Option<&str>,
    package: bool,
) -> Result<SendSummary> {
    let sink = std::io::sink();
    if package {
        package_inner(pool, snap, from, sink, true)
    } else {
        send_part(pool, snap, from, sink, 0, true)
    }
}

/// Writes a package of streams (see `STREAM.md`) that recreates every snapshot of `snap`'s
/// volume up to `snap`, oldest first: with `from` (older than `snap`), an incremental stream
/// from it to each later snapshot in turn (`zfs send -I`); without, a full stream of the
/// oldest snapshot, then incremental ones (`zfs send -R`, for one volume). A package of one
/// stream is that stream, as [`send`] writes it. Returns the totals.
pub fn send_package<W: Write>(
    pool: &Pool,
    snap: &str,
    from: Option<&str>,
    out: W,
) -> Result<SendSummary> {
    package_inner(pool, snap, from, out, false)
}

/// [`send_package`], or with `dry` [`send_estimate`]'s count of it.
fn package_inner<W: Write>(
    pool: &Pool,
    snap: &str,
    from: Option<&str>,
    out: W,
    dry: bool,
) -> Result<SendSummary> {
    let (vol, _) = split_snapshot(snap)?;
    let all = pool.list()?;
    let snaps = snapshots_of(&all, vol);
    let Some(to) = snaps.iter().position(|d| d.name == snap) else {
        return Err(pool::Error::NotFound(snap.into()).into());
    };
    let first = match from {
        None => 0,
        Some(f) => match snaps.iter().position(|d| d.name == f) {
            Some(i) if i < to => i + 1,
            Some(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{f} is not older than {snap}"
                )))
            }
            None => return Err(pool::Error::NotFound(f.into()).into()),
        },
    };
    let chain: Vec<String> = snaps[first..=to].iter().map(|d| d.name.clone()).collect();
    // Every stream says so where any snapshot has properties: a reader that does not know
    // the bit then refuses the package before it receives anything.
    let features = if snaps[first..=to]
        .iter()
        .any(|d| !sent_props(&d.props).is_empty())
    {
        stream::FEATURE_SNAPSHOT_PROPS
    } else {
        0
    };
    let mut out = std::io::BufWriter::with_capacity(256 << 10, out);
    let mut base = from.map(str::to_owned);
    let mut sum = SendSummary::default();
    for (i, s) in chain.iter().enumerate() {
        let more = if i + 1 < chain.len() {
            stream::FEATURE_MORE
        } else {
            0
        };
        let part = send_part(pool, s, base.as_deref(), &mut out, features | more, dry)?;
        sum.bytes += part.bytes;
        sum.write_bytes += part.write_bytes;
        sum.free_bytes += part.free_bytes;
        base = Some(s.clone());
    }
    Ok(sum)
}

/// A dataset's user properties as a stream carries them: all but a receive's own tag.
fn sent_props(props: &BTreeMap<String, String>) -> Vec<(String, String)> {
    props
        .iter()
        .filter(|(k, _)| *k != PARTIAL_TAG)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// [`send`] into `out`, as a stream with (at least) preamble feature bits `features` (see
/// [`StreamWriter::part`]); with `dry`, data records hold zeroes and nothing is read.
fn send_part<W: Write>(
    pool: &Pool,
    snap: &str,
    from: Option<&str>,
    out: W,
    features: u32,
    dry: bool,
) -> Result<SendSummary> {
    let (vol_name, _) = split_snapshot(snap)?;
    let info = pool.dataset(snap)?;
    if info.kind != DatasetKind::Snapshot {
        return Err(Error::InvalidArgument(format!("{snap} is not a snapshot")));
    }
    let volume = pool.dataset(vol_name)?;
    let from_info = from.map(|f| pool.dataset(f)).transpose()?;
    let begin = Begin {
        to_guid: info.guid,
        from_guid: from_info.as_ref().map(|f| f.guid).unwrap_or(0),
        to_id: info.id,
        volume_id: volume.id,
        pool_guid: pool.guid(),
        size: info.size,
        block_size: info.block_size,
        creation_time: info.creation_time,
        creation_txg: info.creation_txg,
        name: info.name.clone(),
        from_name: from_info
            .as_ref()
            .map(|f| f.name.clone())
            .unwrap_or_default(),
        // The receive's own tag is never sent (a volume left with it by a crash keeps it).
        props: sent_props(&volume.props),
        snapshot_props: sent_props(&info.props),
    };
    let begin_len = begin.encode_with(features | begin.features()).len();
    if begin_len as u64 > stream::MAX_PAYLOAD {
        return Err(Error::Refused(format!(
            "the user properties of {snap} and its volume take {begin_len} bytes with the \
             stream's header, more than a stream carries ({} bytes); remove some",
            stream::MAX_PAYLOAD
        )));
    }
    // Work out what to send before writing anything, so a refused send writes nothing of
    // this stream (a package's streams before it are written already).
    let ranges = match from {
        Some(f) => pool.diff(f, Some(snap))?,
        None => vec![(0, info.size)],
    };
    let vol = pool.volume(snap)?;
    let size = vol.size();
    let mut w = StreamWriter::part(out, &begin, features)
        .map_err(|e| Error::io("writing the stream", e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut sum = SendSummary::default();
    for (off, len) in ranges {
        if off >= size {
            continue;
        }
        let end = (off + len).min(size);
        let mut p = off;
        for (d, dl) in vol.data_ranges(off, end - off)? {
            if d > p && from.is_some() {
                w.free(p, d - p)
                    .map_err(|e| Error::io("writing the stream", e))?;
                sum.free_bytes += d - p;
            }
            copy_range(&vol, &mut w, &mut buf, (d, dl), dry)?;
            sum.write_bytes += dl;
            p = d + dl;
        }
        if p < end && from.is_some() {
            w.free(p, end - p)
                .map_err(|e| Error::io("writing the stream", e))?;
            sum.free_bytes += end - p;
        }
    }
    let (_, bytes) = w.finish().map_err(|e| Error::io("writing the stream", e))?;
    sum.bytes = bytes;
    Ok(sum)
}

/// What a receive created.
#[derive(Clone, Debug)]
pub struct RecvSummary {
    /// The snapshot received, `POOL/VOL@SNAP`.
    pub snapshot: String,
    /// The sender's name for it.
    pub source: String,
    /// Whether the stream was incremental.
    pub incremental: bool,
    /// Data bytes written.
    pub write_bytes: u64,
}

/// Applies a stream's records to `vol`, then flushes. Returns data bytes written.
fn apply<R: Read>(
    vol: &VolumeHandle,
    r: &mut StreamReader<R>,
    size: u64,
    incremental: bool,
) -> Result<u64> {
    let mut written = 0;
    let check = |offset: u64, len: u64| {
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::BadStream(format!(
                "a record covers bytes {offset}..+{len}, past the volume's {size} bytes"
            )));
        }
        Ok(())
    };
    while let Some(rec) = r.next_record()? {
        match rec {
            Record::Write { offset, len } => {
                check(offset, len)?;
                vol.write_at(offset, &r.buf)?;
                written += len;
            }
            Record::Free { .. } if !incremental => {
                return Err(Error::BadStream(
                    "a full stream carries a FREE record (only incremental streams have them: a \
                     full receive starts from an empty volume)"
                        .into(),
                ));
            }
            Record::Free { offset, len } => {
                check(offset, len)?;
                vol.write_zeroes(offset, len)?;
            }
        }
    }
    vol.flush()?;
    Ok(written)
}

fn exists(pool: &Pool, full: &str) -> Result<Option<DatasetInfo>> {
    match pool.dataset(full) {
        Ok(d) => Ok(Some(d)),
        Err(pool::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Destroys a leftover temporary volume of an interrupted receive (with its snapshots; a
/// clone of them is refused, not destroyed). A volume of that name that no receive made is
/// left alone, and the receive refused.
fn clear_partial(pool: &Pool, temp: &str) -> Result<()> {
    let Some(d) = exists(pool, temp)? else {
        return Ok(());
    };
    if !d.props.contains_key(PARTIAL_TAG) {
        return Err(Error::Refused(format!(
            "{temp} exists and was not made by a receive; rename or destroy it first"
        )));
    }
    tracing::warn!(
        dataset = temp,
        "destroying the leftover of an interrupted receive"
    );
    pool.destroy_with(temp, Recursion::Snapshots)?;
    Ok(())
}

/// Runs `f`; on error destroys `temp` (best effort) and returns the error.
fn or_discard<T>(pool: &Pool, temp: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    f().inspect_err(|_| {
        if let Err(e) = pool.destroy_with(temp, Recursion::All) {
            tracing::error!(dataset = temp, error = %e, "could not discard a failed receive");
        }
    })
}

/// Receives a stream from `input` into `target` (`POOL/VOL`, or `POOL/VOL@SNAP` to rename the
/// snapshot). A full stream creates `VOL`, which must not exist; an incremental one needs
/// `VOL`'s newest snapshot to be the stream's base (matched by GUID), and refuses if `VOL`
/// changed since that snapshot unless `force` (the changes are discarded). The data goes into
/// `VOL.recv-partial` first; a stream that is truncated or fails a checksum leaves nothing.
///
/// A package of streams ([`send_package`]) is received stream by stream, each in its own txgs
/// as `zfs recv` does: every stream after the first must be based on the snapshot the one
/// before it recreated, `force` applies to the first only, and the snapshots keep their own
/// names (a target naming a snapshot is refused). A stream that fails leaves the snapshots
/// of the streams before it received, and nothing of its own. Returns what each stream made.
pub fn recv<R: Read>(pool: &Pool, target: &str, input: R, force: bool) -> Result<Vec<RecvSummary>> {
    let (mut reader, mut begin) = StreamReader::new(input)?;
    if reader.more() && target.contains('@') {
        return Err(Error::InvalidArgument(format!(
            "cannot receive a package of streams into {target}: its snapshots keep their \
             names; receive into the volume ({})",
            target.split_once('@').map_or(target, |(v, _)| v)
        )));
    }
    let mut got: Vec<RecvSummary> = Vec::new();
    loop {
        let step =
            recv_one(pool, target, &mut reader, &begin, force && got.is_empty()).and_then(|s| {
                got.push(s);
                if reader.more() {
                    next_in_package(reader.into_inner(), &begin).map(Some)
                } else {
                    Ok(None)
                }
            });
        match step {
            Ok(Some(next)) => (reader, begin) = next,
            Ok(None) => return Ok(got),
            Err(e) if got.is_empty() => return Err(e),
            Err(e) => {
                return Err(Error::PackageCut {
                    stream: got.len() + 1,
                    received: got.into_iter().map(|g| g.snapshot).collect(),
                    source: Box::new(e),
                })
            }
        }
    }
}

/// Reads the BEGIN of a package's next stream from `input`, checking that it is based on
/// the snapshot `prev` (the stream before it) recreated.
fn next_in_package<R: Read>(input: R, prev: &Begin) -> Result<(StreamReader<R>, Begin)> {
    let (reader, begin) = StreamReader::new(input)?;
    if begin.from_guid != prev.to_guid {
        return Err(Error::BadStream(format!(
            "{} is not based on {}, which the stream before it recreated (its base: {})",
            begin.name,
            prev.name,
            if begin.is_incremental() {
                begin.from_name.as_str()
            } else {
                "none, a full stream"
            }
        )));
    }
    Ok((reader, begin))
}

/// Receives one stream, whose BEGIN `begin` was read from `reader` (see [`recv`]).
fn recv_one<R: Read>(
    pool: &Pool,
    target: &str,
    reader: &mut StreamReader<R>,
    begin: &Begin,
    force: bool,
) -> Result<RecvSummary> {
    let (vol, snap_arg) = match target.split_once('@') {
        Some((v, s)) => {
            pool::names::split_any_name(target)?;
            (v, Some(s))
        }
        None => {
            pool::names::split_dataset_name(target)?;
            (target, None)
        }
    };
    let snap = format!("{vol}@{}", snap_arg.unwrap_or(begin.snap_name()));
    pool::names::split_any_name(&snap)?;
    let temp = format!("{vol}{PARTIAL_SUFFIX}");
    // The stream lands as `temp` (with its snapshot, for a full stream) before it takes
    // `vol`'s name: refused here, before any data is read, if those names cannot exist.
    let temp_snap = format!("{temp}@{}", split_snapshot(&snap)?.1);
    let longest = if begin.is_incremental() {
        &temp
    } else {
        &temp_snap
    };
    if longest.len() > pool::names::MAX_NAME {
        return Err(Error::InvalidArgument(format!(
            "cannot receive into {snap}: a receive lands as {longest} first, which is longer \
             than {} bytes; receive into a name {} bytes shorter and rename it afterwards",
            pool::names::MAX_NAME,
            longest.len() - pool::names::MAX_NAME
        )));
    }
    pool::names::split_any_name(longest)?;
    // A stream cannot tag a volume as a receive's leftover (which a later receive would
    // destroy).
    // Neither the receive's own tag nor a reservation (a received volume takes none; tarn
    // never sends one, another sender might) comes from a stream.
    let received = |k: &String| k != PARTIAL_TAG && k != pool::REFRESERVATION_PROP;
    let props: BTreeMap<String, String> = begin
        .props
        .iter()
        .filter(|(k, _)| received(k))
        .cloned()
        .collect();
    // The snapshot's own, checked before anything is received.
    let snapshot_props: Vec<(String, String)> = begin
        .snapshot_props
        .iter()
        .filter(|(k, _)| received(k))
        .cloned()
        .collect();
    snapshot_props
        .iter()
        .try_for_each(|(k, v)| pool::check_prop(k, v))?;
    let mut summary = RecvSummary {
        snapshot: snap.clone(),
        source: begin.name.clone(),
        incremental: begin.is_incremental(),
        write_bytes: 0,
    };
    if !begin.is_incremental() {
        if exists(pool, vol)?.is_some() {
            return Err(Error::Refused(format!(
                "{vol} exists; a full stream creates a new volume (receive into another name, or send incrementally)"
            )));
        }
        clear_partial(pool, &temp)?;
        pool.create_volume(&temp, begin.size, begin.block_size, &tagged(&props))?;
        or_discard(pool, &temp, || {
            let h = pool.volume(&temp)?;
            summary.write_bytes = apply(&h, reader, begin.size, begin.is_incremental())?;
            drop(h);
            pool.snapshot_with_guid(&temp_snap, begin.to_guid)?;
            if !snapshot_props.is_empty() {
                pool.set_props(&temp_snap, &snapshot_props)?;
            }
            pool.rename(&temp, vol)?;
            Ok(())
        })?;
        // Under its own name the tag means nothing; a crash before this leaves it, harmless.
        if let Err(e) = pool.set_props(vol, &[(PARTIAL_TAG.into(), String::new())]) {
            tracing::warn!(dataset = vol, error = %e, "could not drop the receive's tag");
        }
        return Ok(summary);
    }
    // Incremental: check everything before touching the pool.
    let Some(t) = exists(pool, vol)? else {
        return Err(Error::Refused(format!(
            "{vol} does not exist; an incremental stream needs the volume holding its base {}",
            begin.from_name
        )));
    };
    if t.kind == DatasetKind::Snapshot {
        return Err(Error::InvalidArgument(format!("{vol} is not a volume")));
    }
    // Properties the landing would refuse, refused before anything is destroyed.
    props.iter().try_for_each(|(k, v)| pool::check_prop(k, v))?;
    // An interrupted receive's leftover (a clone, maybe of a snapshot -F is to destroy) goes
    // first, so that it neither blocks nor survives this one.
    clear_partial(pool, &temp)?;
    let all = pool.list()?;
    let snaps = snapshots_of(&all, vol);
    if let Some(have) = snaps.iter().find(|d| d.guid == begin.to_guid) {
        return Err(Error::Refused(format!(
            "{vol} already has this stream's snapshot ({})",
            have.name
        )));
    }
    let Some(base_at) = snaps.iter().position(|d| d.guid == begin.from_guid) else {
        return Err(Error::Refused(format!(
            "{vol} has no snapshot matching the stream's base {} (guid {:#x})",
            begin.from_name, begin.from_guid
        )));
    };
    let base = snaps[base_at].name.clone();
    // Snapshots newer than the base: -F destroys them in the txg the stream lands in (as zfs
    // recv -F), refusing up front if one has clones or holds; without -F they refuse the
    // stream.
    let newer: Vec<String> = snaps[base_at + 1..]
        .iter()
        .map(|d| d.name.clone())
        .collect();
    if let Some(newest) = newer.last() {
        if !force {
            return Err(Error::Refused(format!(
                "the stream's base {base} is not {vol}'s newest snapshot ({newest}); use -F to \
                 destroy the newer snapshots, or destroy them first"
            )));
        }
        let by_name: BTreeMap<&str, &DatasetInfo> =
            all.iter().map(|d| (d.name.as_str(), d)).collect();
        if let Some(why) = newer
            .iter()
            .find_map(|n| destroy_blocker(&by_name, n, Recursion::Snapshots))
        {
            return Err(Error::Refused(format!(
                "-F would destroy the snapshots of {vol} newer than {base}, but {why}"
            )));
        }
    }
    if snaps[..=base_at].iter().any(|d| d.name == snap) {
        return Err(pool::Error::AlreadyExists(snap).into());
    }
    let base_size = pool.dataset(&base)?.size;
    if pool.changed_since_newest_snapshot(vol)? && !force {
        return Err(Error::Refused(format!(
            "{vol} changed since {base} ({} bytes written, size {} then {}, or zeroed); use -F \
             to discard the changes",
            t.written, base_size, t.size
        )));
    }
    if t.block_size != begin.block_size {
        return Err(Error::Refused(format!(
            "{vol} has block size {}, the stream {}",
            t.block_size, begin.block_size
        )));
    }
    pool.clone_snapshot(&base, &temp, &tagged(&BTreeMap::new()))?;
    or_discard(pool, &temp, || {
        // The clone has the base's size, whatever the volume's is now.
        if base_size != begin.size {
            pool.resize_volume(&temp, begin.size)?;
        }
        let h = pool.volume(&temp)?;
        summary.write_bytes = apply(&h, reader, begin.size, begin.is_incremental())?;
        drop(h);
        pool.sync()?;
        // Data, snapshot and properties land in one txg, and the newer snapshots -F destroys
        // go in it: a crash leaves the volume as it was or as received, snapshots and all.
        let set: Vec<(String, String)> = props.into_iter().collect();
        let landing = Landing {
            snapshot: &snap,
            guid: begin.to_guid,
            props: &set,
            snapshot_props: &snapshot_props,
            destroy: &newer,
        };
        pool.land_clone(vol, &temp, force, landing)?;
        Ok(())
    })?;
    Ok(summary)
}

#[cfg(test)]
mod tests;
