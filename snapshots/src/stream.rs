//! The send stream's bytes (see `STREAM.md`): a preamble, a BEGIN record, WRITE and FREE
//! records, and an END record carrying a checksum of everything before it. Every record has
//! its own checksum too, verified before the record is acted on.

use crate::error::{Error, Result};
use std::hash::Hasher;
use std::io::{self, Read, Write};
use twox_hash::XxHash3_64 as Xxh3;

/// The first eight bytes of every stream.
pub const MAGIC: [u8; 8] = *b"TARNSTRM";
/// The stream format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Seed of the per-record checksums (`"tarnrec1"`).
pub const RECORD_SEED: u64 = u64::from_le_bytes(*b"tarnrec1");
/// Seed of the whole-stream checksum in END (`"tarnstr1"`).
pub const STREAM_SEED: u64 = u64::from_le_bytes(*b"tarnstr1");
/// Bytes of the preamble.
pub const PREAMBLE_LEN: usize = 16;
/// Preamble feature bit: another stream follows this one's END (a package of streams, as
/// `send -I` and `send -R` write: each one's base is the snapshot the one before recreates).
pub const FEATURE_MORE: u32 = 1;
/// Preamble feature bit: BEGIN ends with the snapshot's own user properties.
pub const FEATURE_SNAPSHOT_PROPS: u32 = 2;
/// The feature bits this build knows.
pub const KNOWN_FEATURES: u32 = FEATURE_MORE | FEATURE_SNAPSHOT_PROPS;
/// Bytes of a record header.
pub const HEADER_LEN: usize = 32;
/// Largest payload a reader accepts (a writer never emits more than `CHUNK`).
pub const MAX_PAYLOAD: u64 = 16 << 20;
/// Data per WRITE record.
pub const CHUNK: usize = 1 << 20;

/// Record types.
pub mod kind {
    /// What the stream carries (first record).
    pub const BEGIN: u32 = 1;
    /// Bytes to write at an offset.
    pub const WRITE: u32 = 2;
    /// A range that reads as zeroes.
    pub const FREE: u32 = 3;
    /// Counts and the whole-stream checksum (last record).
    pub const END: u32 = 4;
}

/// What a stream carries, from its BEGIN record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Begin {
    /// GUID of the snapshot the stream recreates.
    pub to_guid: u64,
    /// GUID of the base snapshot of an incremental stream; 0 for a full stream.
    pub from_guid: u64,
    /// The source snapshot's dataset ID (in the sending pool).
    pub to_id: u64,
    /// The source volume's dataset ID (in the sending pool).
    pub volume_id: u64,
    /// The sending pool's GUID.
    pub pool_guid: u64,
    /// Volume size at the snapshot, bytes.
    pub size: u64,
    /// Volume block size, bytes.
    pub block_size: u32,
    /// The snapshot's creation time, seconds since the Unix epoch.
    pub creation_time: u64,
    /// The snapshot's txg in the sending pool.
    pub creation_txg: u64,
    /// The snapshot's full name in the sending pool, `POOL/VOL@SNAP`.
    pub name: String,
    /// The base snapshot's full name (empty for a full stream).
    pub from_name: String,
    /// The volume's user properties, sorted by key.
    pub props: Vec<(String, String)>,
    /// The snapshot's own user properties, sorted by key (sent with
    /// [`FEATURE_SNAPSHOT_PROPS`] where there are any).
    pub snapshot_props: Vec<(String, String)>,
}

impl Begin {
    /// Whether this is an incremental stream.
    pub fn is_incremental(&self) -> bool {
        self.from_guid != 0
    }

    /// The part of `name` after `@`.
    pub fn snap_name(&self) -> &str {
        self.name.split_once('@').map(|(_, s)| s).unwrap_or("")
    }

    /// The BEGIN payload of a lone stream.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(self.features())
    }

    /// The BEGIN payload of a stream whose preamble has feature bits `features`: with
    /// [`FEATURE_SNAPSHOT_PROPS`], the snapshot's properties (a count of 0 where it has none,
    /// as in a package where another snapshot has some); without, none.
    pub fn encode_with(&self, features: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        for v in [
            self.to_guid,
            self.from_guid,
            self.to_id,
            self.volume_id,
            self.pool_guid,
            self.size,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&(self.props.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.creation_time.to_le_bytes());
        b.extend_from_slice(&self.creation_txg.to_le_bytes());
        for s in [&self.name, &self.from_name] {
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        put_props(&mut b, &self.props);
        if features & FEATURE_SNAPSHOT_PROPS != 0 {
            b.extend_from_slice(&(self.snapshot_props.len() as u32).to_le_bytes());
            put_props(&mut b, &self.snapshot_props);
        }
        b
    }

    /// The preamble's feature bits this BEGIN needs.
    pub fn features(&self) -> u32 {
        if self.snapshot_props.is_empty() {
            0
        } else {
            FEATURE_SNAPSHOT_PROPS
        }
    }

    /// Parses a BEGIN payload of a stream with preamble feature bits `features`; it must be
    /// consumed exactly.
    pub fn decode(b: &[u8], features: u32) -> Result<Begin> {
        let mut c = Cursor { b, at: 0 };
        let mut d = Begin {
            to_guid: c.u64()?,
            from_guid: c.u64()?,
            to_id: c.u64()?,
            volume_id: c.u64()?,
            pool_guid: c.u64()?,
            size: c.u64()?,
            block_size: c.u32()?,
            ..Begin::default()
        };
        let nprops = c.u32()?;
        d.creation_time = c.u64()?;
        d.creation_txg = c.u64()?;
        let n = c.u16()? as usize;
        d.name = c.str(n)?;
        let n = c.u16()? as usize;
        d.from_name = c.str(n)?;
        d.props = c.props(nprops)?;
        if features & FEATURE_SNAPSHOT_PROPS != 0 {
            let n = c.u32()?;
            d.snapshot_props = c.props(n)?;
        }
        if c.at != b.len() {
            return Err(Error::BadStream(format!(
                "BEGIN record has {} unexpected trailing bytes",
                b.len() - c.at
            )));
        }
        if d.to_guid == 0 || d.size == 0 || !d.block_size.is_power_of_two() || d.block_size < 512 {
            return Err(Error::BadStream(format!(
                "BEGIN record is implausible (guid {}, size {}, block size {})",
                d.to_guid, d.size, d.block_size
            )));
        }
        let (min_bs, max_bs) = pool::BLOCK_SIZE_RANGE;
        if !(min_bs..=max_bs).contains(&d.block_size) {
            return Err(Error::BadStream(format!(
                "the stream's volume has {}-byte blocks; pools hold {min_bs} to {max_bs}",
                d.block_size
            )));
        }
        if !d.size.is_multiple_of(u64::from(d.block_size)) {
            return Err(Error::BadStream(format!(
                "BEGIN record: size {} is not a multiple of the block size {}",
                d.size, d.block_size
            )));
        }
        // Incremental exactly when it names a base, by GUID and by name.
        if (d.from_guid == 0) != d.from_name.is_empty() {
            return Err(Error::BadStream(format!(
                "BEGIN record: base guid {:#x} and base name '{}' disagree",
                d.from_guid, d.from_name
            )));
        }
        if d.snap_name().is_empty() {
            return Err(Error::BadStream(format!(
                "BEGIN record: '{}' is not a snapshot name",
                d.name
            )));
        }
        Ok(d)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| Error::BadStream("BEGIN record is cut short".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self, n: usize) -> Result<String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| {
            Error::BadStream("BEGIN record holds a name or property that is not UTF-8".into())
        })
    }
    /// `n` properties (key: u16 length and bytes; value: u32 length and bytes).
    fn props(&mut self, n: u32) -> Result<Vec<(String, String)>> {
        // Each property takes at least 6 bytes (two lengths): a count the payload cannot hold
        // is refused before anything is allocated for it.
        if n as usize > (self.b.len() - self.at) / 6 {
            return Err(Error::BadStream(format!(
                "BEGIN record claims {n} properties in {} bytes",
                self.b.len() - self.at
            )));
        }
        let mut props = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let kn = self.u16()? as usize;
            let k = self.str(kn)?;
            let vn = self.u32()? as usize;
            let v = self.str(vn)?;
            props.push((k, v));
        }
        Ok(props)
    }
}

/// Appends properties as [`Cursor::props`] reads them.
fn put_props(b: &mut Vec<u8>, props: &[(String, String)]) {
    for (k, v) in props {
        b.extend_from_slice(&(k.len() as u16).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(v.as_bytes());
    }
}

/// The END payload: what the reader checks the stream against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// Records before END (BEGIN included).
    pub records: u64,
    /// Payload bytes of WRITE records.
    pub write_bytes: u64,
    /// xxh3-64 (seed `STREAM_SEED`) of every byte before the END record.
    pub stream_checksum: u64,
}

fn header(kind: u32, offset: u64, length: u64, payload_len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    // h[4..8]: flags, zero in version 1.
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..24].copy_from_slice(&length.to_le_bytes());
    h[24..32].copy_from_slice(&payload_len.to_le_bytes());
    h
}

fn record_checksum(h: &[u8], payload: &[u8]) -> u64 {
    let mut x = Xxh3::with_seed(RECORD_SEED);
    x.write(h);
    x.write(payload);
    x.finish()
}

/// Writes a stream.
pub struct StreamWriter<W: Write> {
    out: W,
    hash: Xxh3,
    records: u64,
    write_bytes: u64,
    bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the preamble and the BEGIN record of a lone stream.
    pub fn new(out: W, begin: &Begin) -> io::Result<Self> {
        Self::part(out, begin, 0)
    }

    /// Writes the preamble and the BEGIN record of a stream with (at least) the preamble
    /// feature bits `features`: [`FEATURE_MORE`] for each stream of a package but the last,
    /// and [`FEATURE_SNAPSHOT_PROPS`] on every stream of a package where any snapshot has
    /// properties (so that a reader that does not know the bit refuses the whole package at
    /// its first preamble). The bits the BEGIN itself needs are always set.
    pub fn part(out: W, begin: &Begin, features: u32) -> io::Result<Self> {
        let mut w = StreamWriter {
            out,
            hash: Xxh3::with_seed(STREAM_SEED),
            records: 0,
            write_bytes: 0,
            bytes: 0,
        };
        let mut pre = [0u8; PREAMBLE_LEN];
        pre[0..8].copy_from_slice(&MAGIC);
        pre[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let features = features | begin.features();
        pre[12..16].copy_from_slice(&features.to_le_bytes());
        w.put(&pre)?;
        w.record(kind::BEGIN, 0, 0, &begin.encode_with(features))?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.hash.write(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b)
    }

    fn record(&mut self, kind: u32, offset: u64, length: u64, payload: &[u8]) -> io::Result<()> {
        let h = header(kind, offset, length, payload.len() as u64);
        let sum = record_checksum(&h, payload);
        self.put(&h)?;
        self.put(payload)?;
        self.put(&sum.to_le_bytes())?;
        self.records += 1;
        Ok(())
    }

    /// A WRITE record: `data` at `offset` (at most `MAX_PAYLOAD` bytes).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_bytes += data.len() as u64;
        self.record(kind::WRITE, offset, data.len() as u64, data)
    }

    /// A FREE record: `offset..offset + len` reads as zeroes.
    pub fn free(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.record(kind::FREE, offset, len, &[])
    }

    /// Writes END and flushes; returns the inner writer and the stream's length in bytes.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let end = End {
            records: self.records,
            write_bytes: self.write_bytes,
            stream_checksum: self.hash.finish(),
        };
        let mut p = Vec::with_capacity(24);
        for v in [end.records, end.write_bytes, end.stream_checksum] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        self.record(kind::END, 0, 0, &p)?;
        self.out.flush()?;
        Ok((self.out, self.bytes))
    }
}

/// One data record read from a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `len` bytes (in the reader's buffer) for `offset`.
    Write {
        /// Byte offset in the volume.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `offset..offset + len` reads as zeroes.
    Free {
        /// Byte offset in the volume.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

/// Reads and verifies a stream record by record.
pub struct StreamReader<R: Read> {
    inp: R,
    hash: Xxh3,
    records: u64,
    write_bytes: u64,
    done: bool,
    /// Another stream follows this one's END ([`FEATURE_MORE`]).
    more: bool,
    /// Payload of the last WRITE record.
    pub buf: Vec<u8>,
}

fn read_full<R: Read>(r: &mut R, b: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(b).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::BadStream(format!("the stream is truncated (it ends inside {what})"))
        } else {
            Error::io("reading the stream", e)
        }
    })
}

impl<R: Read> StreamReader<R> {
    /// Reads the preamble and BEGIN record.
    pub fn new(mut inp: R) -> Result<(Self, Begin)> {
        let mut pre = [0u8; PREAMBLE_LEN];
        read_full(&mut inp, &mut pre, "the preamble")?;
        if pre[0..8] != MAGIC {
            return Err(Error::BadStream(
                "not a tarn send stream (bad magic)".into(),
            ));
        }
        let version = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "send stream version {version}; this tarn reads version {VERSION}"
            )));
        }
        let flags = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]);
        if flags & !KNOWN_FEATURES != 0 {
            return Err(Error::Unsupported(format!(
                "send stream features {:#x}; this tarn knows only {KNOWN_FEATURES:#x}",
                flags
            )));
        }
        let mut hash = Xxh3::with_seed(STREAM_SEED);
        hash.write(&pre);
        let mut r = StreamReader {
            inp,
            hash,
            records: 0,
            write_bytes: 0,
            done: false,
            more: flags & FEATURE_MORE != 0,
            buf: Vec::new(),
        };
        let (k, _, _) = r.raw()?;
        if k != kind::BEGIN {
            return Err(Error::BadStream(format!(
                "the first record is of type {k}, not BEGIN"
            )));
        }
        let begin = Begin::decode(&r.buf, flags)?;
        Ok((r, begin))
    }

    /// Reads one record into `self.buf`, verifying its checksum: (type, offset, length).
    fn raw(&mut self) -> Result<(u32, u64, u64)> {
        let mut h = [0u8; HEADER_LEN];
        read_full(&mut self.inp, &mut h, "a record header")?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let k = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let (offset, length, plen) = (u64_at(8), u64_at(16), u64_at(24));
        let n = self.records;
        if plen > MAX_PAYLOAD {
            return Err(Error::BadStream(format!(
                "record {n} claims a payload of {plen} bytes (most is {MAX_PAYLOAD}); the stream is corrupt"
            )));
        }
        self.buf.resize(plen as usize, 0);
        read_full(&mut self.inp, &mut self.buf, "a record payload")?;
        let mut sum = [0u8; 8];
        read_full(&mut self.inp, &mut sum, "a record checksum")?;
        if record_checksum(&h, &self.buf) != u64::from_le_bytes(sum) {
            return Err(Error::BadStream(format!(
                "checksum mismatch in record {n}; the stream is corrupt"
            )));
        }
        if h[4..8] != [0; 4] {
            return Err(Error::Unsupported(format!(
                "record {n} has flags this tarn does not know"
            )));
        }
        if k != kind::END {
            self.hash.write(&h);
            self.hash.write(&self.buf);
            self.hash.write(&sum);
            self.records += 1;
        }
        Ok((k, offset, length))
    }

    /// Whether another stream follows this one's END (the stream is one of a package).
    pub fn more(&self) -> bool {
        self.more
    }

    /// The input, positioned after this stream's END once [`StreamReader::next_record`] has
    /// returned `None`: where a package's next stream starts.
    pub fn into_inner(self) -> R {
        self.inp
    }

    /// The next data record, or `None` once END has been read and the whole stream verified.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let n = self.records;
        let (k, offset, length) = self.raw()?;
        match k {
            kind::WRITE => {
                if length != self.buf.len() as u64 {
                    return Err(Error::BadStream(format!(
                        "WRITE record {n} says {length} bytes but carries {}",
                        self.buf.len()
                    )));
                }
                self.write_bytes += length;
                Ok(Some(Record::Write {
                    offset,
                    len: length,
                }))
            }
            kind::FREE => {
                if !self.buf.is_empty() {
                    return Err(Error::BadStream(format!(
                        "FREE record {n} carries a payload"
                    )));
                }
                Ok(Some(Record::Free {
                    offset,
                    len: length,
                }))
            }
            kind::END => {
                self.finish_end()?;
                Ok(None)
            }
            kind::BEGIN => Err(Error::BadStream(format!("record {n} is a second BEGIN"))),
            other => Err(Error::Unsupported(format!(
                "record {n} has unknown type {other}"
            ))),
        }
    }

    fn finish_end(&mut self) -> Result<()> {
        if self.buf.len() != 24 {
            return Err(Error::BadStream("END record has the wrong size".into()));
        }
        let v = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&self.buf[i * 8..i * 8 + 8]);
            u64::from_le_bytes(a)
        };
        let end = End {
            records: v(0),
            write_bytes: v(1),
            stream_checksum: v(2),
        };
        if end.stream_checksum != self.hash.finish() {
            return Err(Error::BadStream(
                "whole-stream checksum mismatch; the stream is corrupt".into(),
            ));
        }
        if end.records != self.records || end.write_bytes != self.write_bytes {
            return Err(Error::BadStream(format!(
                "END counts {} records and {} data bytes, the stream held {} and {}",
                end.records, end.write_bytes, self.records, self.write_bytes
            )));
        }
        if self.more {
            // The next stream of the package starts here; its reader checks it.
            self.done = true;
            return Ok(());
        }
        let mut extra = [0u8; 1];
        loop {
            match self.inp.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(Error::BadStream(
                        "unexpected data after the END record".into(),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("reading the stream", e)),
            }
        }
        self.done = true;
        Ok(())
    }
}

/// xxh3-64 of `b` with the record seed (exposed for tests and tools).
pub fn checksum(b: &[u8]) -> u64 {
    Xxh3::oneshot_with_seed(RECORD_SEED, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Begin {
        Begin {
            to_guid: 7,
            from_guid: 0,
            to_id: 3,
            volume_id: 2,
            pool_guid: 99,
            size: 1 << 20,
            block_size: 4096,
            creation_time: 1_700_000_000,
            creation_txg: 12,
            name: "tank/v@s".into(),
            from_name: String::new(),
            props: vec![("com.example:owner".into(), "alice".into())],
            snapshot_props: vec![("com.example:release".into(), "1.0".into())],
        }
    }

    fn stream() -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), &sample()).expect("begin");
        w.write(4096, &[7u8; 4096]).expect("write");
        w.free(8192, 4096).expect("free");
        w.finish().expect("finish").0
    }

    fn read_all(b: &[u8]) -> Result<(Begin, Vec<Record>)> {
        let (mut r, begin) = StreamReader::new(b)?;
        let mut v = Vec::new();
        while let Some(rec) = r.next_record()? {
            v.push(rec);
        }
        Ok((begin, v))
    }

    #[test]
    fn round_trip() {
        let s = stream();
        let (b, recs) = read_all(&s).expect("reads");
        assert_eq!(b, sample());
        assert_eq!(
            recs,
            [
                Record::Write {
                    offset: 4096,
                    len: 4096
                },
                Record::Free {
                    offset: 8192,
                    len: 4096
                }
            ]
        );
        // Layout: preamble, BEGIN header at 16.
        assert_eq!(&s[..8], b"TARNSTRM");
        assert_eq!(
            u32::from_le_bytes([s[16], s[17], s[18], s[19]]),
            kind::BEGIN
        );
    }

    #[test]
    fn every_truncation_is_rejected() {
        let s = stream();
        for cut in 0..s.len() {
            let e = read_all(&s[..cut]).expect_err("truncated stream accepted");
            assert!(matches!(e, Error::BadStream(_)), "cut {cut}: {e}");
        }
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let s = stream();
        for i in 0..s.len() {
            for bit in [0u8, 3, 7] {
                let mut c = s.clone();
                c[i] ^= 1 << bit;
                assert!(
                    read_all(&c).is_err(),
                    "flip of bit {bit} at byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_and_versions_are_rejected() {
        let mut s = stream();
        s.push(0);
        assert!(read_all(&s).is_err());
        let mut s = stream();
        s[8] = 2;
        assert!(matches!(read_all(&s), Err(Error::Unsupported(_))));
    }

    /// A BEGIN payload claiming more properties than its bytes can hold is refused before
    /// anything is allocated for them (2.8 million empty ones took 285 MB); a base named by
    /// GUID or by name alone is inconsistent.
    #[test]
    fn implausible_begin_records_are_rejected() {
        let mut b = sample().encode();
        // nprops sits after six u64s and the u32 block size.
        b[52..56].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Begin::decode(&b, 0), Err(Error::BadStream(_))));
        // So is one claiming more snapshot properties than it holds.
        let mut b = Begin {
            snapshot_props: Vec::new(),
            ..sample()
        }
        .encode();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Begin::decode(&b, FEATURE_SNAPSHOT_PROPS),
            Err(Error::BadStream(_))
        ));
        // Without the feature bit, snapshot properties are trailing bytes.
        let e = Begin::decode(&sample().encode(), 0).unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
        for (guid, name) in [(0, "tank/v@old"), (5, "")] {
            let mut d = sample();
            d.from_guid = guid;
            d.from_name = name.into();
            let e = Begin::decode(&d.encode(), d.features()).unwrap_err();
            assert!(e.to_string().contains("disagree"), "{e}");
        }
    }
}
