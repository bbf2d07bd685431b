//! On-disk structures and their little-endian encoding. `FORMAT.md` describes every byte; keep
//! the two in step.

use crate::error::{Error, Result};
use twox_hash::XxHash3_128;

/// Allocation unit and alignment of everything on disk.
pub const SECTOR: u64 = 4096;
/// The only pool format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 3;
/// Label magic, at byte 0 of the device and of the backup label.
pub const LABEL_MAGIC: [u8; 8] = *b"TARNPOOL";
/// Uberblock magic.
pub const UBER_MAGIC: [u8; 8] = *b"TARNUBER";
/// Dataset directory ("meta block") magic.
pub const META_MAGIC: [u8; 8] = *b"TARNMETA";
/// Magic of a directory leaf block.
pub const DIR_LEAF_MAGIC: [u8; 8] = *b"TARNDIRL";
/// Magic of a deferred-free list block.
pub const DEFERRED_MAGIC: [u8; 8] = *b"TARNDEFR";
/// Dataset IDs per directory leaf: leaf `i` holds the datasets with `id / DIR_LEAF_IDS == i`,
/// so a commit rewrites only the leaves whose datasets changed.
pub const DIR_LEAF_IDS: u64 = 64;
/// Space-map chunk magic.
pub const SPACEMAP_MAGIC: [u8; 8] = *b"TARNSMAP";
/// Uberblock ring slots; slot = txg % RING_SLOTS.
pub const RING_SLOTS: u64 = 64;
/// Size of an indirect block.
pub const INDIRECT_SIZE: usize = 16384;
/// Sectors of an indirect block.
pub const INDIRECT_SECTORS: u64 = INDIRECT_SIZE as u64 / SECTOR;
/// The most holds one snapshot may have (the directory stores their count as a u16).
pub const MAX_HOLDS: usize = 4096;
/// The longest hold tag, in bytes.
pub const MAX_HOLD_TAG: usize = 255;

/// The most data blocks a volume may have (its tree then has at most 5 indirect levels).
pub const MAX_VOLUME_BLOCKS: u64 = 1 << 40;
/// Block pointers per indirect block.
pub const PTRS_PER_INDIRECT: usize = INDIRECT_SIZE / BlockPtr::SIZE;
/// Header bytes at the start of each space-map chunk.
pub const SPACEMAP_HEADER: usize = 32;
/// Allocation bits per space-map chunk (one bit per sector).
pub const SPACEMAP_BITS_PER_CHUNK: u64 = ((SECTOR as usize - SPACEMAP_HEADER) * 8) as u64;

/// Byte offset of the label copies.
pub const LABEL_OFFSETS: [u64; 2] = [0, SECTOR];
/// Byte offset of the uberblock ring.
pub const RING_OFFSET: u64 = 2 * SECTOR;

/// Checksum of a block's bytes: XXH3-128, seeded with the pool GUID so that blocks of another
/// pool in the same file never verify.
pub fn checksum(data: &[u8], seed: u64) -> u128 {
    XxHash3_128::oneshot_with_seed(seed, data)
}

/// Appends little-endian fields to a buffer.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    /// A u8.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// A u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A u128.
    pub fn u128(&mut self, v: u128) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A string: u16 length, then UTF-8 bytes. Callers keep strings shorter (names, tags and
    /// values are checked where they come in); one longer is cut, at a character boundary,
    /// so that what is written always decodes.
    pub fn str(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        debug_assert_eq!(end, s.len(), "a string too long to encode");
        self.u16(end as u16).bytes(&s.as_bytes()[..end])
    }
    /// A block pointer (32 bytes).
    pub fn ptr(&mut self, p: &BlockPtr) -> &mut Self {
        self.bytes(&p.to_bytes())
    }
}

/// Reads little-endian fields, failing with a `Corrupt` error naming `what` on a short buffer.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Dec<'a> {
    /// Starts reading `buf`, described as `what` in errors.
    pub fn new(buf: &'a [u8], what: &'a str) -> Self {
        Dec { buf, pos: 0, what }
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "{} is truncated at byte {} (wanted {n} more)",
                    self.what, self.pos
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// A u8.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    /// A u16.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    /// A u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    /// A u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// A u128.
    pub fn u128(&mut self) -> Result<u128> {
        Ok(u128::from_le_bytes(self.arr()?))
    }
    /// A u16-length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::Corrupt(format!("{} holds a string that is not UTF-8", self.what)))
    }
    /// A block pointer.
    pub fn ptr(&mut self) -> Result<BlockPtr> {
        BlockPtr::from_bytes(self.take(BlockPtr::SIZE)?)
    }
}

/// Points at a block: where it is, its size, when it was written and what it must hash to.
/// All zeroes is a hole (reads as zeroes, occupies nothing).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BlockPtr {
    /// First sector (byte offset / 4096).
    pub sector: u64,
    /// Length in sectors; 0 means a hole.
    pub sectors: u32,
    /// The txg that wrote the block.
    pub birth: u64,
    /// XXH3-128 of the block's bytes, seeded with the pool GUID.
    pub checksum: u128,
}

impl BlockPtr {
    /// Encoded size.
    pub const SIZE: usize = 32;
    /// Largest block: sectors is a 16-bit field.
    pub const MAX_SECTORS: u32 = 0xffff;

    /// The hole that was never written.
    pub const HOLE: BlockPtr = BlockPtr {
        sector: 0,
        sectors: 0,
        birth: 0,
        checksum: 0,
    };

    /// A hole made in `birth` (data zeroed or discarded then), so incremental walks see it.
    pub fn hole(birth: u64) -> BlockPtr {
        BlockPtr {
            birth,
            ..BlockPtr::HOLE
        }
    }

    /// Whether this is a hole.
    pub fn is_hole(&self) -> bool {
        self.sectors == 0
    }

    /// Byte offset on the device.
    pub fn offset(&self) -> u64 {
        self.sector * SECTOR
    }

    /// Length in bytes.
    pub fn byte_len(&self) -> u64 {
        u64::from(self.sectors) * SECTOR
    }

    /// Encodes into 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        let dva = self.sector | (u64::from(self.sectors) << 48);
        b[0..8].copy_from_slice(&dva.to_le_bytes());
        b[8..16].copy_from_slice(&self.birth.to_le_bytes());
        b[16..32].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Decodes 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut d = Dec::new(b, "block pointer");
        let dva = d.u64()?;
        let p = BlockPtr {
            sector: dva & ((1 << 48) - 1),
            sectors: (dva >> 48) as u32,
            birth: d.u64()?,
            checksum: d.u128()?,
        };
        if p.is_hole() && (p.sector != 0 || p.checksum != 0) {
            return Err(Error::Corrupt(
                "a hole block pointer carries a location or checksum".into(),
            ));
        }
        Ok(p)
    }
}

/// The pool label: written once at creation (two copies), never rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelPhys {
    /// Format version.
    pub version: u32,
    /// Permanent pool identity; seeds every checksum.
    pub guid: u64,
    /// Pool name.
    pub name: String,
    /// Device size the pool was created on, bytes.
    pub size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Byte offsets of the two space-map copies.
    pub spacemap_offsets: [u64; 2],
    /// Chunks (4 KiB each) in each space-map copy.
    pub spacemap_chunks: u32,
    /// First byte of the data region.
    pub data_offset: u64,
}

impl LabelPhys {
    /// Lays out a new pool on a device of `size` bytes.
    pub fn new(name: &str, guid: u64, size: u64, created: u64) -> Self {
        let sectors = size / SECTOR;
        let chunks = sectors.div_ceil(SPACEMAP_BITS_PER_CHUNK);
        let sm0 = RING_OFFSET + RING_SLOTS * SECTOR;
        let sm1 = sm0 + chunks * SECTOR;
        LabelPhys {
            version: FORMAT_VERSION,
            guid,
            name: name.to_string(),
            size,
            created,
            spacemap_offsets: [sm0, sm1],
            spacemap_chunks: chunks as u32,
            data_offset: sm1 + chunks * SECTOR,
        }
    }

    /// Encodes into one 4 KiB sector, checksum in the last 16 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(&LABEL_MAGIC)
            .u32(self.version)
            .u32(0)
            .u64(self.guid)
            .u64(self.size)
            .u64(self.created)
            .u64(self.spacemap_offsets[0])
            .u64(self.spacemap_offsets[1])
            .u32(self.spacemap_chunks)
            .u32(0)
            .u64(self.data_offset)
            .str(&self.name);
        let mut b = e.0;
        b.resize(SECTOR as usize - 16, 0);
        let c = checksum(&b, 0);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes one label sector. `Ok(None)` when the magic is absent (not a label at all).
    pub fn decode(b: &[u8], path: &str) -> Result<Option<Self>> {
        if b.len() < SECTOR as usize || b[0..8] != LABEL_MAGIC {
            return Ok(None);
        }
        let body = &b[..SECTOR as usize - 16];
        let want = u128::from_le_bytes(
            b[SECTOR as usize - 16..SECTOR as usize]
                .try_into()
                .unwrap_or_default(),
        );
        // Only a label that verifies speaks for its version (`read_label` names an unverified
        // one's version if no copy verifies).
        if checksum(body, 0) != want {
            return Err(Error::Corrupt(format!(
                "{path}: pool label checksum mismatch"
            )));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.into(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut d = Dec::new(&body[8..], "pool label");
        let version = d.u32()?;
        d.u32()?;
        Some(LabelPhys {
            version,
            guid: d.u64()?,
            size: d.u64()?,
            created: d.u64()?,
            spacemap_offsets: [d.u64()?, d.u64()?],
            spacemap_chunks: {
                let c = d.u32()?;
                d.u32()?;
                c
            },
            data_offset: d.u64()?,
            name: d.str()?,
        })
        .map(|l| l.check_layout(path))
        .transpose()
    }

    /// A label whose checksum verifies may still come from a crafted file: its layout must be
    /// the one this version computes for its size (the offsets and counts are used to read and
    /// write the device), its size a whole number of sectors, and its name a valid pool name
    /// (it names the registry entry).
    fn check_layout(self, path: &str) -> Result<Self> {
        let expect = LabelPhys::new(&self.name, self.guid, self.size, self.created);
        let sane = self.size.is_multiple_of(SECTOR)
            && self.size >= crate::pool::MIN_POOL_SIZE
            && self.spacemap_offsets == expect.spacemap_offsets
            && self.spacemap_chunks == expect.spacemap_chunks
            && self.data_offset == expect.data_offset
            && crate::names::check_pool_name(&self.name).is_ok();
        if !sane {
            return Err(Error::Corrupt(format!(
                "{path}: the pool label describes an impossible layout (size {}, name {:?}); \
                 the file is damaged or was not written by tarn",
                self.size, self.name
            )));
        }
        Ok(self)
    }
}

/// One uberblock: the root of a committed transaction group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UberblockPhys {
    /// The committed txg.
    pub txg: u64,
    /// Commit time, nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Pool GUID (an uberblock of another pool never matches).
    pub guid: u64,
    /// The meta block (dataset directory and pending frees).
    pub root: BlockPtr,
    /// Which space-map copy (0 or 1) describes this txg.
    pub spacemap_copy: u8,
}

impl UberblockPhys {
    /// Bytes covered by the checksum.
    const BODY: usize = 96;

    /// Encodes into a 4 KiB ring slot.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(&UBER_MAGIC)
            .u32(FORMAT_VERSION)
            .u32(0)
            .u64(self.txg)
            .u64(self.timestamp)
            .u64(self.guid)
            .ptr(&self.root)
            .u8(self.spacemap_copy);
        let mut b = e.0;
        b.resize(Self::BODY, 0);
        let c = checksum(&b, self.guid);
        b.extend_from_slice(&c.to_le_bytes());
        b.resize(SECTOR as usize, 0);
        b
    }

    /// Decodes a ring slot; `None` if empty, torn, foreign or of another version.
    pub fn decode(b: &[u8], guid: u64) -> Option<Self> {
        if b.len() < Self::BODY + 16 || b[0..8] != UBER_MAGIC {
            return None;
        }
        let want = u128::from_le_bytes(b[Self::BODY..Self::BODY + 16].try_into().ok()?);
        if checksum(&b[..Self::BODY], guid) != want {
            return None;
        }
        let mut d = Dec::new(&b[8..Self::BODY], "uberblock");
        let version = d.u32().ok()?;
        d.u32().ok()?;
        let ub = UberblockPhys {
            txg: d.u64().ok()?,
            timestamp: d.u64().ok()?,
            guid: d.u64().ok()?,
            root: d.ptr().ok()?,
            spacemap_copy: d.u8().ok()?,
        };
        // A txg this far out is no pool's: commits would wrap round (and be lost on reopen).
        let sane_txg = ub.txg < 1 << 62;
        (version == FORMAT_VERSION && ub.guid == guid && ub.spacemap_copy < 2 && sane_txg)
            .then_some(ub)
    }
}

/// Dataset types. Only volumes exist today; filesystems are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// A block volume (zvol).
    Volume,
    /// A filesystem (reserved; not implemented yet).
    Filesystem,
    /// A read-only, frozen image of a volume at one txg.
    Snapshot,
}

impl DatasetKind {
    fn code(self) -> u8 {
        match self {
            DatasetKind::Volume => 1,
            DatasetKind::Filesystem => 2,
            DatasetKind::Snapshot => 3,
        }
    }
    fn from_code(c: u8) -> Result<Self> {
        match c {
            1 => Ok(DatasetKind::Volume),
            2 => Ok(DatasetKind::Filesystem),
            3 => Ok(DatasetKind::Snapshot),
            _ => Err(Error::Corrupt(format!(
                "dataset directory names unknown dataset type {c}"
            ))),
        }
    }
}

/// One dataset's directory entry (volumes and snapshots alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetPhys {
    /// Permanent ID, never reused within a pool.
    pub id: u64,
    /// Type.
    pub kind: DatasetKind,
    /// Volumes: the name below the pool (`a/b` for `POOL/a/b`). Snapshots: the part after `@`.
    pub name: String,
    /// Random identity kept by send/receive (incremental streams name their base by it).
    pub guid: u64,
    /// Snapshots: the ID of their volume. Volumes: the snapshot they were cloned from, or 0.
    pub parent: u64,
    /// Volumes: the txg that created them. Snapshots: the txg they freeze (every block born at
    /// or before it and reachable from `root`).
    pub creation_txg: u64,
    /// Creation time, seconds since the Unix epoch.
    pub creation_time: u64,
    /// Logical size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Root of the block tree.
    pub root: BlockPtr,
    /// Sectors of data blocks reachable from `root`.
    pub referenced: u64,
    /// Sectors of data blocks reachable from `root` born after the previous snapshot (or the
    /// origin).
    pub written: u64,
    /// Volumes: txg of the latest snapshot or the origin (blocks born at or before it are shared
    /// and go to the deadlist when replaced). Snapshots: 0.
    pub prev_snap_txg: u64,
    /// Newest block of the deadlist chain (hole when empty).
    pub deadlist: BlockPtr,
    /// Entries in the deadlist chain.
    pub deadlist_count: u64,
    /// Snapshot holds (tags), sorted.
    pub holds: Vec<String>,
    /// User properties, sorted by key.
    pub props: Vec<(String, String)>,
}

/// One deadlist entry: a block the next dataset no longer references but an older snapshot does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadEntry {
    /// The block.
    pub ptr: BlockPtr,
    /// 0 for a data block, 1 and up for indirect blocks.
    pub level: u8,
}

impl DeadEntry {
    /// Encoded size.
    pub const SIZE: usize = 40;
}

/// Header bytes of a deadlist block: previous block pointer, entry count, reserved.
pub const DEADLIST_HEADER: usize = 64;
/// Bytes of a deadlist block at most.
pub const DEADLIST_MAX_BYTES: u64 = 65536;
/// Entries per deadlist block at most.
pub const DEADLIST_MAX_ENTRIES: usize =
    (DEADLIST_MAX_BYTES as usize - DEADLIST_HEADER) / DeadEntry::SIZE;
/// Entries per deadlist block this build writes: one sector's worth, which any free sector
/// places (longer blocks, up to [`DEADLIST_MAX_BYTES`], are read).
pub const DEADLIST_WRITE_ENTRIES: usize = (SECTOR as usize - DEADLIST_HEADER) / DeadEntry::SIZE;

/// Encodes a deadlist block holding `entries` and linking to the older block `prev`.
pub fn encode_deadlist_block(prev: &BlockPtr, entries: &[DeadEntry]) -> Vec<u8> {
    let mut e = Enc::default();
    e.ptr(prev).u32(entries.len() as u32).bytes(&[0; 28]);
    for d in entries {
        e.ptr(&d.ptr).u8(d.level).bytes(&[0; 7]);
    }
    let mut b = e.0;
    b.resize(b.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    b
}

/// Decodes a deadlist block: (older block, entries).
pub fn decode_deadlist_block(b: &[u8]) -> Result<(BlockPtr, Vec<DeadEntry>)> {
    let mut d = Dec::new(b, "deadlist block");
    let prev = d.ptr()?;
    let n = d.u32()? as usize;
    d.take(28)?;
    if n > DEADLIST_MAX_ENTRIES {
        return Err(Error::Corrupt(format!("deadlist block claims {n} entries")));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ptr = d.ptr()?;
        let level = d.u8()?;
        d.take(7)?;
        out.push(DeadEntry { ptr, level });
    }
    Ok((prev, out))
}

/// The meta block: everything the uberblock roots. Its size follows the number of directory
/// leaves (one per 64 dataset IDs), not the pool's activity: the deferred frees, which random
/// overwrites multiply, live in a chain of one-sector blocks ([`encode_deferred_block`]), so
/// no commit needs a long free run that a fragmented pool may not have.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MetaPhys {
    /// The txg that wrote it.
    pub txg: u64,
    /// Next dataset ID to hand out.
    pub next_dataset_id: u64,
    /// The dataset directory: (leaf index, leaf block), sorted by index; empty leaves absent.
    pub leaves: Vec<(u64, BlockPtr)>,
    /// Extents in the deferred-free chain.
    pub deferred_count: u64,
    /// Newest block of the deferred-free chain (hole when nothing is deferred).
    pub deferred_head: BlockPtr,
}

impl MetaPhys {
    /// Encodes, padded to whole sectors.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(&META_MAGIC)
            .u32(FORMAT_VERSION)
            .u32(0)
            .u64(self.txg)
            .u64(self.next_dataset_id)
            .u32(self.leaves.len() as u32)
            .u32(0)
            .u64(self.deferred_count)
            .ptr(&self.deferred_head);
        for (index, ptr) in &self.leaves {
            e.u64(*index).ptr(ptr);
        }
        let mut b = e.0;
        b.resize(b.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
        b
    }

    /// Decodes a meta block whose checksum already verified.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut d = Dec::new(b, "meta block");
        if d.take(8)? != META_MAGIC {
            return Err(Error::Corrupt("meta block has a bad magic".into()));
        }
        let version = d.u32()?;
        if version != FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "meta block has unknown version {version}"
            )));
        }
        d.u32()?;
        let txg = d.u64()?;
        let next_dataset_id = d.u64()?;
        let nleaves = d.u32()?;
        d.u32()?;
        let deferred_count = d.u64()?;
        let deferred_head = d.ptr()?;
        let mut leaves = Vec::with_capacity(nleaves.min(1 << 16) as usize);
        for _ in 0..nleaves {
            leaves.push((d.u64()?, d.ptr()?));
        }
        if leaves.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(Error::Corrupt(
                "meta block: directory leaves out of order".into(),
            ));
        }
        Ok(MetaPhys {
            txg,
            next_dataset_id,
            leaves,
            deferred_count,
            deferred_head,
        })
    }
}

/// One deferred free: an extent freed by a txg, allocatable once that txg is old enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeferredFree {
    /// The txg that freed it.
    pub txg: u64,
    /// First sector.
    pub sector: u64,
    /// Sectors.
    pub sectors: u32,
}

impl DeferredFree {
    /// Encoded size.
    pub const SIZE: usize = 20;
}

/// Header bytes of a deferred-free block: magic, version, count, txg, older block, reserved.
pub const DEFERRED_HEADER: usize = 64;
/// Bytes of a deferred-free block at most (read); this build writes one sector
/// ([`DEFERRED_WRITE_ENTRIES`]), which any free sector places.
pub const DEFERRED_MAX_BYTES: u64 = INDIRECT_SIZE as u64;
/// Entries per deferred-free block at most.
pub const DEFERRED_MAX_ENTRIES: usize =
    (DEFERRED_MAX_BYTES as usize - DEFERRED_HEADER) / DeferredFree::SIZE;
/// Entries per deferred-free block this build writes: one sector's worth.
pub const DEFERRED_WRITE_ENTRIES: usize = (SECTOR as usize - DEFERRED_HEADER) / DeferredFree::SIZE;

/// Encodes a block of the deferred-free chain that txg `txg` writes: `entries` (at most
/// [`DEFERRED_MAX_ENTRIES`]; this build writes [`DEFERRED_WRITE_ENTRIES`]), linking to the
/// older block `prev`.
pub fn encode_deferred_block(txg: u64, prev: &BlockPtr, entries: &[DeferredFree]) -> Vec<u8> {
    let mut e = Enc::default();
    e.bytes(&DEFERRED_MAGIC)
        .u32(FORMAT_VERSION)
        .u32(entries.len() as u32)
        .u64(txg)
        .ptr(prev)
        .bytes(&[0; DEFERRED_HEADER - 56]);
    for f in entries {
        e.u64(f.txg).u64(f.sector).u32(f.sectors);
    }
    let mut b = e.0;
    b.resize(b.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    b
}

/// Decodes a deferred-free block written by txg `txg` whose checksum already verified:
/// (older block, entries).
pub fn decode_deferred_block(b: &[u8], txg: u64) -> Result<(BlockPtr, Vec<DeferredFree>)> {
    let mut d = Dec::new(b, "deferred-free block");
    if d.take(8)? != DEFERRED_MAGIC {
        return Err(Error::Corrupt("deferred-free block has a bad magic".into()));
    }
    let version = d.u32()?;
    if version != FORMAT_VERSION {
        return Err(Error::Corrupt(format!(
            "deferred-free block has unknown version {version}"
        )));
    }
    let n = d.u32()? as usize;
    let written = d.u64()?;
    if written != txg {
        return Err(Error::Corrupt(format!(
            "deferred-free block of txg {written} in the chain of txg {txg}"
        )));
    }
    let prev = d.ptr()?;
    d.take(DEFERRED_HEADER - 56)?;
    if n > DEFERRED_MAX_ENTRIES {
        return Err(Error::Corrupt(format!(
            "deferred-free block claims {n} entries"
        )));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(DeferredFree {
            txg: d.u64()?,
            sector: d.u64()?,
            sectors: d.u32()?,
        });
    }
    Ok((prev, out))
}

/// Encodes directory leaf `index` holding `datasets` (sorted by ID, each with
/// `id / DIR_LEAF_IDS == index`), padded to whole sectors.
pub fn encode_dir_leaf(index: u64, datasets: &[&DatasetPhys]) -> Vec<u8> {
    let mut e = Enc::default();
    e.bytes(&DIR_LEAF_MAGIC)
        .u32(FORMAT_VERSION)
        .u32(datasets.len() as u32)
        .u64(index);
    for d in datasets {
        e.u64(d.id)
            .u8(d.kind.code())
            .str(&d.name)
            .u64(d.guid)
            .u64(d.parent)
            .u64(d.creation_txg)
            .u64(d.creation_time)
            .u64(d.size)
            .u32(d.block_size)
            .ptr(&d.root)
            .u64(d.referenced)
            .u64(d.written)
            .u64(d.prev_snap_txg)
            .ptr(&d.deadlist)
            .u64(d.deadlist_count)
            .u16(d.holds.len().min(MAX_HOLDS) as u16);
        for h in d.holds.iter().take(MAX_HOLDS) {
            e.str(h);
        }
        e.u32(d.props.len() as u32);
        for (k, v) in &d.props {
            e.str(k).str(v);
        }
    }
    let mut b = e.0;
    b.resize(b.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    b
}

/// Decodes directory leaf `index` (checksum already verified) into its datasets.
pub fn decode_dir_leaf(b: &[u8], index: u64) -> Result<Vec<DatasetPhys>> {
    let mut d = Dec::new(b, "directory leaf");
    if d.take(8)? != DIR_LEAF_MAGIC {
        return Err(Error::Corrupt(format!(
            "directory leaf {index} has a bad magic"
        )));
    }
    let version = d.u32()?;
    if version != FORMAT_VERSION {
        return Err(Error::Corrupt(format!(
            "directory leaf {index} has unknown version {version}"
        )));
    }
    let nds = d.u32()?;
    let stored = d.u64()?;
    if stored != index {
        return Err(Error::Corrupt(format!(
            "directory leaf {index} says it is leaf {stored}"
        )));
    }
    let mut datasets = Vec::with_capacity(nds.min(DIR_LEAF_IDS as u32) as usize);
    for _ in 0..nds {
        let id = d.u64()?;
        let kind = DatasetKind::from_code(d.u8()?)?;
        let name = d.str()?;
        let guid = d.u64()?;
        let parent = d.u64()?;
        let creation_txg = d.u64()?;
        let creation_time = d.u64()?;
        let size = d.u64()?;
        let block_size = d.u32()?;
        let root = d.ptr()?;
        let referenced = d.u64()?;
        let written = d.u64()?;
        let prev_snap_txg = d.u64()?;
        let deadlist = d.ptr()?;
        let deadlist_count = d.u64()?;
        let nh = d.u16()?;
        let holds = (0..nh).map(|_| d.str()).collect::<Result<Vec<_>>>()?;
        let np = d.u32()?;
        let mut props = Vec::new();
        for _ in 0..np {
            props.push((d.str()?, d.str()?));
        }
        let (min_bs, max_bs) = crate::pool::BLOCK_SIZE_RANGE;
        if !(min_bs..=max_bs).contains(&block_size)
            || !block_size.is_power_of_two()
            || size % u64::from(block_size) != 0
            || size / u64::from(block_size) > MAX_VOLUME_BLOCKS
        {
            return Err(Error::Corrupt(format!(
                "meta block: dataset {id} has block size {block_size} and size {size} (at \
                 most 2^40 blocks of 4 KiB to 128 KiB)"
            )));
        }

        datasets.push(DatasetPhys {
            id,
            kind,
            name,
            guid,
            parent,
            creation_txg,
            creation_time,
            size,
            block_size,
            root,
            referenced,
            written,
            prev_snap_txg,
            deadlist,
            deadlist_count,
            holds,
            props,
        });
    }
    if datasets.iter().any(|x| x.id / DIR_LEAF_IDS != index) {
        return Err(Error::Corrupt(format!(
            "directory leaf {index} holds a dataset of another leaf"
        )));
    }
    Ok(datasets)
}

/// Encodes block pointers into one indirect block (missing tail entries are holes).
pub fn encode_indirect(ptrs: &[BlockPtr]) -> Vec<u8> {
    let mut b = vec![0u8; INDIRECT_SIZE];
    for (i, p) in ptrs.iter().enumerate() {
        b[i * BlockPtr::SIZE..(i + 1) * BlockPtr::SIZE].copy_from_slice(&p.to_bytes());
    }
    b
}

/// Decodes an indirect block into `out` (up to its length).
pub fn decode_indirect(b: &[u8], out: &mut [BlockPtr]) -> Result<()> {
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = BlockPtr::from_bytes(&b[i * BlockPtr::SIZE..(i + 1) * BlockPtr::SIZE])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ptr_round_trips_and_rejects_dirty_holes() {
        let p = BlockPtr {
            sector: (1 << 48) - 1,
            sectors: 0xffff,
            birth: 7,
            checksum: u128::MAX - 3,
        };
        assert_eq!(BlockPtr::from_bytes(&p.to_bytes()).unwrap(), p);
        assert!(BlockPtr::from_bytes(&[0; 32]).unwrap().is_hole());
        let mut born = [0u8; 32];
        born[9] = 1;
        assert_eq!(BlockPtr::from_bytes(&born).unwrap(), BlockPtr::hole(256));
        let mut bad = [0u8; 32];
        bad[20] = 1;
        assert!(BlockPtr::from_bytes(&bad).is_err());
    }

    #[test]
    fn label_round_trips_and_detects_flips() {
        let l = LabelPhys::new("tank", 42, 1 << 30, 1000);
        let mut b = l.encode();
        assert_eq!(LabelPhys::decode(&b, "x").unwrap(), Some(l));
        b[100] ^= 1;
        assert!(LabelPhys::decode(&b, "x").is_err());
        assert_eq!(LabelPhys::decode(&[0; 4096], "x").unwrap(), None);
    }

    #[test]
    fn uberblock_rejects_torn_and_foreign() {
        let u = UberblockPhys {
            txg: 9,
            timestamp: 1,
            guid: 5,
            root: BlockPtr::HOLE,
            spacemap_copy: 1,
        };
        let b = u.encode();
        assert_eq!(UberblockPhys::decode(&b, 5), Some(u));
        assert_eq!(UberblockPhys::decode(&b, 6), None);
        let mut torn = b.clone();
        torn[20] ^= 0x40;
        assert_eq!(UberblockPhys::decode(&torn, 5), None);
    }

    #[test]
    fn deadlist_blocks_round_trip() {
        let e = DeadEntry {
            ptr: BlockPtr {
                sector: 9,
                sectors: 2,
                birth: 4,
                checksum: 5,
            },
            level: 1,
        };
        let prev = BlockPtr {
            sector: 77,
            sectors: 1,
            birth: 3,
            checksum: 8,
        };
        let b = encode_deadlist_block(&prev, &[e, e]);
        assert_eq!(b.len(), 4096);
        assert_eq!(decode_deadlist_block(&b).unwrap(), (prev, vec![e, e]));
    }

    #[test]
    fn deferred_free_blocks_round_trip_and_refuse_strangers() {
        let prev = BlockPtr {
            sector: 40,
            sectors: 4,
            birth: 6,
            checksum: 9,
        };
        let f = |i: u64| DeferredFree {
            txg: 3 + i % 2,
            sector: 1000 + 8 * i,
            sectors: 8,
        };
        let full: Vec<DeferredFree> = (0..DEFERRED_MAX_ENTRIES as u64).map(f).collect();
        let b = encode_deferred_block(7, &prev, &full);
        assert_eq!(
            b.len() as u64,
            DEFERRED_MAX_BYTES,
            "a full block fits the limit"
        );
        assert_eq!(decode_deferred_block(&b, 7).unwrap(), (prev, full));
        let b = encode_deferred_block(7, &BlockPtr::HOLE, &[f(1)]);
        assert_eq!(b.len(), SECTOR as usize);
        assert_eq!(
            decode_deferred_block(&b, 7).unwrap(),
            (BlockPtr::HOLE, vec![f(1)])
        );
        // Another txg's block (a stale chain), a bad magic, an absurd count.
        assert!(decode_deferred_block(&b, 8).is_err());
        let mut bad = b.clone();
        bad[0] ^= 1;
        assert!(decode_deferred_block(&bad, 7).is_err());
        let mut bad = b;
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_deferred_block(&bad, 7).is_err());
    }

    #[test]
    fn meta_and_directory_leaves_round_trip() {
        let leaf = BlockPtr {
            sector: 300,
            sectors: 1,
            birth: 3,
            checksum: 1,
        };
        let m = MetaPhys {
            txg: 3,
            next_dataset_id: 9,
            leaves: vec![(0, leaf), (5, leaf)],
            deferred_count: 2,
            deferred_head: leaf,
        };
        assert_eq!(MetaPhys::decode(&m.encode()).unwrap(), m);
        let d = DatasetPhys {
            id: 4,
            kind: DatasetKind::Snapshot,
            name: "a/b".into(),
            guid: 0x1234,
            parent: 2,
            creation_txg: 2,
            creation_time: 77,
            size: 1 << 20,
            block_size: 16384,
            root: BlockPtr {
                sector: 100,
                sectors: 4,
                birth: 3,
                checksum: 99,
            },
            referenced: 12,
            written: 5,
            prev_snap_txg: 1,
            deadlist: BlockPtr {
                sector: 200,
                sectors: 1,
                birth: 3,
                checksum: 7,
            },
            deadlist_count: 9,
            holds: vec!["keep".into()],
            props: vec![("k".into(), "v=1".into())],
        };
        let b = encode_dir_leaf(0, &[&d]);
        assert_eq!(b.len() % SECTOR as usize, 0);
        assert_eq!(decode_dir_leaf(&b, 0).unwrap(), vec![d.clone()]);
        assert!(
            decode_dir_leaf(&b, 1).is_err(),
            "a leaf read as another is refused"
        );
        let wrong = encode_dir_leaf(1, &[&d]);
        assert!(
            decode_dir_leaf(&wrong, 1).is_err(),
            "a dataset filed in the wrong leaf is refused"
        );
    }
}
