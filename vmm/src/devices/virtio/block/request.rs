//! virtio-blk requests: parsing a descriptor chain into a [`Request`] and executing it on a
//! [`zvol::BlockBackend`]. No KVM here: a vhost-user-blk server can reuse this module as is.
//!
//! Everything the guest hands over is checked before use: every descriptor must lie inside one
//! guest memory region, data must flow in the direction the request type needs, lengths are
//! multiples of the sector size and ranges lie inside the disk. A bad chain gets an error
//! status (when it has somewhere to put one), never VMM memory, a hang or a crash.

use crate::error::{Error, Result};
use smallvec::SmallVec;
use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, VolatileMemory, VolatileSlice,
};
use zvol::BlockBackend;

/// Sector size of the virtio-blk protocol (offsets and capacity are in these units).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the request header (type, reserved, sector).
pub const HEADER_LEN: u32 = 16;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Most segments in one discard or write-zeroes request (advertised in the config space).
pub const MAX_DISCARD_SEGS: u32 = 32;
/// Most sectors in one discard or write-zeroes segment (advertised in the config space).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Size of one discard / write-zeroes segment.
const SEGMENT_LEN: u32 = 16;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
const FLAG_UNMAP: u32 = 1;
/// Data segments a [`Request`] holds without a heap allocation. Linux sends one per
/// physically contiguous run of the bio; the common request has one or two.
pub const INLINE_SEGMENTS: usize = 4;
/// Descriptors of a chain [`parse`] holds without a heap allocation (header, data, status).
const INLINE_DESCRIPTORS: usize = 16;

/// The data buffers of a request.
pub type Segments = SmallVec<[Segment; INLINE_SEGMENTS]>;

/// A disk as the request handler sees it: the backend plus what the guest was promised.
pub struct Disk {
    backend: Arc<dyn BlockBackend>,
    capacity: u64,
    read_only: bool,
    /// Whether the backend frees discarded ranges (`BackendInfo::discards`): only then is
    /// discard offered to the guest.
    discards: bool,
    id: [u8; ID_BYTES],
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("discards", &self.discards)
            .field("id", &String::from_utf8_lossy(&self.id))
            .finish_non_exhaustive()
    }
}

impl Disk {
    /// Wraps `backend`; `read_only` forces read-only even where the backend allows writes.
    /// The capacity is the backend's size rounded down to whole sectors.
    pub fn new(backend: Arc<dyn BlockBackend>, read_only: bool) -> Disk {
        let info = backend.info();
        let mut id = [0u8; ID_BYTES];
        let n = info.id.len().min(ID_BYTES);
        id[..n].copy_from_slice(&info.id.as_bytes()[..n]);
        Disk {
            backend,
            capacity: info.size / SECTOR_SIZE * SECTOR_SIZE,
            read_only: read_only || info.read_only,
            discards: info.discards,
            id,
        }
    }

    /// Size in bytes (a whole number of sectors).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the guest may write.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether discard frees space on the backend (else it would write zeroes).
    pub fn discards(&self) -> bool {
        self.discards
    }

    /// The GET_ID answer (the backend's ID, NUL-padded or cut to 20 bytes).
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.backend
    }

    /// Checks that `len` bytes at `sector` lie inside the disk; returns the byte offset.
    fn check_range(&self, sector: u64, len: u64) -> Result<u64> {
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| Error::BadRequest(format!("sector {sector} overflows")))?;
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(offset),
            _ => Err(Error::BadRequest(format!(
                "{len} bytes at sector {sector} run past the end ({} bytes)",
                self.capacity
            ))),
        }
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read from the disk into guest buffers.
    In,
    /// Write guest buffers to the disk.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Return the disk's ID string.
    GetId,
    /// Discard ranges.
    Discard,
    /// Zero ranges.
    WriteZeroes,
    /// Anything else (answered `VIRTIO_BLK_S_UNSUPP`).
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            t => RequestType::Unsupported(t),
        }
    }
}

/// A guest buffer: validated to lie inside one guest memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A parsed request. Plain data: it can be sent to a worker thread and executed there.
/// Up to [`INLINE_SEGMENTS`] data buffers live inside it: parsing and executing a common
/// request allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestType,
    /// First sector (In, Out).
    pub sector: u64,
    /// Data buffers, in order.
    pub data: Segments,
    /// Total bytes in `data`.
    pub data_len: u64,
    /// Where the one-byte status goes.
    pub status: GuestAddress,
}

/// Why a chain could not be parsed, and where (if anywhere) to report it.
#[derive(Debug)]
pub struct ParseError {
    /// What is wrong.
    pub error: Error,
    /// A writable byte the guest offered for the status, if one was found.
    pub status: Option<GuestAddress>,
}

/// Guest memory lookups that remember the last region found: the buffers of a request (and
/// of the next one) usually lie in one region, so most lookups skip the region search and
/// cost a range check. Every lookup still checks that the whole range lies inside a region.
pub(crate) struct Lookup<'m> {
    mem: &'m GuestMemoryMmap,
    last: Option<&'m GuestRegionMmap>,
}

impl<'m> Lookup<'m> {
    /// Lookups in `mem`.
    pub(crate) fn new(mem: &'m GuestMemoryMmap) -> Self {
        Lookup { mem, last: None }
    }

    /// The `len` bytes at `addr`, which must lie inside one region.
    #[inline(always)]
    fn slice(&mut self, addr: GuestAddress, len: u32) -> Result<VolatileSlice<'m>> {
        match self.find(addr, len) {
            Some(vs) => Ok(vs),
            None => Err(not_in_memory(addr, len)),
        }
    }

    #[inline(always)]
    fn find(&mut self, addr: GuestAddress, len: u32) -> Option<VolatileSlice<'m>> {
        if let Some(r) = self.last {
            if let Some(off) = r.to_region_addr(addr) {
                return r.get_slice(off, len as usize).ok();
            }
        }
        let r = self.mem.find_region(addr)?;
        self.last = Some(r);
        r.get_slice(r.to_region_addr(addr)?, len as usize).ok()
    }
}

#[cold]
fn not_in_memory(addr: GuestAddress, len: u32) -> Error {
    Error::BadRequest(format!(
        "descriptor {:#x}+{len:#x} is not inside one guest memory region",
        addr.0
    ))
}

/// Checks that `len` bytes at `addr` lie inside one region of `mem`.
fn check_mem(look: &mut Lookup<'_>, addr: GuestAddress, len: u32) -> Result<()> {
    look.slice(addr, len).map(|_| ())
}

/// Parses the descriptors of one chain (as yielded by [`super::ring::Chain`], which already
/// bounds loops and the chain's total length).
///
/// Framing: the 16-byte header starts the first (device-readable) descriptor; the status is
/// the last byte of the last (device-writable) descriptor; everything between, including the
/// rest of those two descriptors, is data.
pub fn parse(
    mem: &GuestMemoryMmap,
    descs: impl IntoIterator<Item = Descriptor>,
) -> Result<Request, ParseError> {
    parse_in(&mut Lookup::new(mem), descs)
}

/// [`parse`] with the caller's lookups.
pub(crate) fn parse_in(
    look: &mut Lookup<'_>,
    descs: impl IntoIterator<Item = Descriptor>,
) -> Result<Request, ParseError> {
    // On the stack for ordinary chains; the iterator bounds the length for the others.
    let descs: SmallVec<[Descriptor; INLINE_DESCRIPTORS]> = descs.into_iter().collect();
    let fail = |error, status| Err(ParseError { error, status });

    // The status byte first, so that later errors can be reported.
    let Some(last) = descs.last() else {
        return fail(Error::BadRequest("empty descriptor chain".into()), None);
    };
    if !last.is_write_only() || last.len() == 0 {
        return fail(
            Error::BadRequest("last descriptor is not a writable status byte".into()),
            None,
        );
    }
    let status = match last.addr().checked_add(u64::from(last.len()) - 1) {
        Some(a) if check_mem(look, a, 1).is_ok() => a,
        _ => {
            return fail(
                Error::BadRequest("status byte is not in guest memory".into()),
                None,
            )
        }
    };
    let status_err = |error| {
        Err(ParseError {
            error,
            status: Some(status),
        })
    };

    if descs.len() < 2 && last.len() < 1 + HEADER_LEN {
        return status_err(Error::BadRequest("chain has no header".into()));
    }
    let first = descs[0];
    if first.is_write_only() || first.len() < HEADER_LEN {
        return status_err(Error::BadRequest(format!(
            "header descriptor is {} bytes{}",
            first.len(),
            if first.is_write_only() {
                ", device-writable"
            } else {
                ""
            }
        )));
    }
    // One read of the whole header, which must lie inside one region.
    let header = match look.slice(first.addr(), HEADER_LEN) {
        Ok(vs) => match vs.get_ref::<[u8; HEADER_LEN as usize]>(0) {
            Ok(r) => r.load(),
            Err(_) => return status_err(Error::BadRequest("unreadable header".into())),
        },
        Err(e) => return status_err(e),
    };
    let mut t = [0u8; 4];
    t.copy_from_slice(&header[0..4]);
    let mut sec = [0u8; 8];
    sec.copy_from_slice(&header[8..16]);
    let (kind, sector) = (
        RequestType::from(u32::from_le_bytes(t)),
        u64::from_le_bytes(sec),
    );

    // Data: the rest of the first descriptor, the middle ones, and all but the last byte of
    // the last one.
    let want_writable = matches!(kind, RequestType::In | RequestType::GetId);
    let mut data = Segments::new();
    let mut data_len = 0u64;
    let n = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let (mut addr, mut len) = (d.addr(), d.len());
        if i == 0 {
            // checked: the header lies inside guest memory.
            addr = GuestAddress(addr.0 + u64::from(HEADER_LEN));
            len -= HEADER_LEN;
        }
        if i == n - 1 {
            len -= 1;
        }
        if len == 0 {
            continue;
        }
        if i != 0 {
            if let Err(e) = check_mem(look, addr, len) {
                return status_err(e);
            }
        } else if let Err(e) = check_mem(look, d.addr(), d.len()) {
            return status_err(e);
        }
        // Unknown types get UNSUPP whatever their buffers' direction (at execution).
        if d.is_write_only() != want_writable && !matches!(kind, RequestType::Unsupported(_)) {
            return status_err(Error::BadRequest(format!(
                "{kind:?} request has a {} data buffer",
                if d.is_write_only() {
                    "device-writable"
                } else {
                    "device-readable"
                }
            )));
        }
        data.push(Segment { addr, len });
        data_len += u64::from(len);
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

/// The outcome of a request: its status and how many bytes the device wrote into the
/// guest's buffers (the used-ring length, status byte included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// `VIRTIO_BLK_S_*`.
    pub status: u8,
    /// Bytes written to guest memory.
    pub used_len: u32,
}

/// Maps an error to a virtio-blk status: unsupported operations get `UNSUPP`, everything
/// else (bad ranges, read-only disks, backend failures) `IOERR`.
fn status_of(e: &Error) -> u8 {
    match e {
        Error::Backend(e) if e.kind() == pool::ErrorKind::Unsupported => VIRTIO_BLK_S_UNSUPP as u8,
        Error::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
        _ => VIRTIO_BLK_S_IOERR as u8,
    }
}

/// What the device promised the driver (negotiated features that change request handling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// `VIRTIO_BLK_F_DISCARD` was negotiated.
    pub discard: bool,
    /// `VIRTIO_BLK_F_WRITE_ZEROES` was negotiated.
    pub write_zeroes: bool,
}

impl Request {
    /// Runs the request on `disk`, writes the status byte and returns the completion.
    /// Never fails: errors become a status for the guest (and a debug trace for us).
    pub fn execute(&self, mem: &GuestMemoryMmap, disk: &Disk, neg: Negotiated) -> Completion {
        self.execute_in(&mut Lookup::new(mem), disk, neg)
    }

    /// [`Request::execute`] with the caller's lookups.
    pub(crate) fn execute_in(
        &self,
        look: &mut Lookup<'_>,
        disk: &Disk,
        neg: Negotiated,
    ) -> Completion {
        let (status, written) = match self.run(look, disk, neg) {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(e) => {
                tracing::debug!("virtio-blk {:?} at sector {}: {e}", self.kind, self.sector);
                (status_of(&e), 0)
            }
        };
        // The status address was validated at parse time; a failure here means the memory
        // map changed under us, and there is nobody left to tell.
        match look.slice(self.status, 1) {
            Ok(vs) => match vs.get_ref::<u8>(0) {
                Ok(r) => r.store(status),
                Err(e) => tracing::warn!("virtio-blk: writing the status byte: {e}"),
            },
            Err(e) => tracing::warn!("virtio-blk: writing the status byte: {e}"),
        }
        Completion {
            status,
            used_len: written.saturating_add(1),
        }
    }

    /// Does the work; returns the bytes written into guest buffers.
    fn run(&self, look: &mut Lookup<'_>, disk: &Disk, neg: Negotiated) -> Result<u32> {
        let mem = look.mem;
        match self.kind {
            RequestType::In => {
                let offset = self.check_rw(disk)?;
                let mut bufs = guest_slices_mut(look, &self.data)?;
                disk.backend.read_vectored(offset, &mut bufs)?;
                // The chain's total length is bounded by 2^32 (virtio-queue enforces it).
                Ok(u32::try_from(self.data_len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if disk.read_only {
                    return Err(Error::BadRequest("write to a read-only disk".into()));
                }
                let offset = self.check_rw(disk)?;
                let bufs = guest_slices(look, &self.data)?;
                disk.backend.write_vectored(offset, &bufs)?;
                Ok(0)
            }
            RequestType::Flush => {
                if !disk.read_only {
                    disk.backend.flush()?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let mut left: &[u8] = disk.id();
                let mut written = 0u32;
                for seg in &self.data {
                    if left.is_empty() {
                        break;
                    }
                    let n = left.len().min(seg.len as usize);
                    mem.write_slice(&left[..n], seg.addr)
                        .map_err(|e| Error::BadRequest(format!("GET_ID buffer: {e}")))?;
                    left = &left[n..];
                    written += n as u32;
                }
                Ok(written)
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                let discard = self.kind == RequestType::Discard;
                if (discard && !neg.discard) || (!discard && !neg.write_zeroes) {
                    return Err(Error::Unsupported(format!(
                        "{:?} not negotiated",
                        self.kind
                    )));
                }
                if disk.read_only {
                    return Err(Error::BadRequest(format!(
                        "{:?} on a read-only disk",
                        self.kind
                    )));
                }
                for (addr, sector, sectors, flags) in self.segments(mem)? {
                    let len = u64::from(sectors) * SECTOR_SIZE;
                    let offset = disk.check_range(sector, len)?;
                    if sectors > MAX_DISCARD_SECTORS {
                        return Err(Error::BadRequest(format!(
                            "segment at {:#x}: {sectors} sectors > {MAX_DISCARD_SECTORS}",
                            addr.0
                        )));
                    }
                    if discard {
                        if flags != 0 {
                            return Err(Error::Unsupported(format!("discard flags {flags:#x}")));
                        }
                        disk.backend.discard(offset, len)?;
                    } else {
                        if flags & !FLAG_UNMAP != 0 {
                            return Err(Error::Unsupported(format!(
                                "write-zeroes flags {flags:#x}"
                            )));
                        }
                        disk.backend.write_zeroes(offset, len)?;
                    }
                }
                Ok(0)
            }
            RequestType::Unsupported(t) => Err(Error::Unsupported(format!("request type {t}"))),
        }
    }

    /// Checks an In/Out request's length and range; returns its byte offset.
    fn check_rw(&self, disk: &Disk) -> Result<u64> {
        if !self.data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::BadRequest(format!(
                "{} data bytes is not a whole number of sectors",
                self.data_len
            )));
        }
        disk.check_range(self.sector, self.data_len)
    }

    /// Reads the discard / write-zeroes segments: (where, sector, sectors, flags).
    fn segments(&self, mem: &GuestMemoryMmap) -> Result<Vec<(GuestAddress, u64, u32, u32)>> {
        if self.data_len == 0
            || !self.data_len.is_multiple_of(u64::from(SEGMENT_LEN))
            || self.data_len > u64::from(MAX_DISCARD_SEGS * SEGMENT_LEN)
        {
            return Err(Error::BadRequest(format!(
                "{} bytes of discard/write-zeroes segments",
                self.data_len
            )));
        }
        let mut bytes = Vec::with_capacity(self.data_len as usize);
        for seg in &self.data {
            let start = bytes.len();
            bytes.resize(start + seg.len as usize, 0);
            mem.read_slice(&mut bytes[start..], seg.addr)
                .map_err(|e| Error::BadRequest(format!("segment buffer: {e}")))?;
        }
        let le = |b: &[u8]| {
            let mut a = [0u8; 8];
            a[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(a)
        };
        Ok(bytes
            .chunks_exact(SEGMENT_LEN as usize)
            .map(|c| {
                (
                    self.data[0].addr,
                    le(&c[0..8]),
                    le(&c[8..12]) as u32,
                    le(&c[12..16]) as u32,
                )
            })
            .collect())
    }
}

/// Parses `descs` and executes the request: the whole life of one chain, for callers that
/// need no worker pool. Returns the used-ring length.
pub fn process(
    mem: &GuestMemoryMmap,
    descs: impl IntoIterator<Item = Descriptor>,
    disk: &Disk,
    neg: Negotiated,
) -> u32 {
    let look = &mut Lookup::new(mem);
    match parse_in(look, descs) {
        Ok(req) => req.execute_in(look, disk, neg).used_len,
        Err(e) => fail_parse(mem, e),
    }
}

/// Reports a chain that could not be parsed; returns the used-ring length.
pub fn fail_parse(mem: &GuestMemoryMmap, e: ParseError) -> u32 {
    tracing::debug!("virtio-blk: {}", e.error);
    match e.status {
        Some(addr) => match mem.write_obj(VIRTIO_BLK_S_IOERR as u8, addr) {
            Ok(()) => 1,
            Err(_) => 0,
        },
        None => 0,
    }
}

/// Host views of guest buffers, for vectored reads into them (no allocation for up to
/// [`INLINE_SEGMENTS`] buffers).
fn guest_slices_mut<'m>(
    look: &mut Lookup<'m>,
    segs: &[Segment],
) -> Result<SmallVec<[IoSliceMut<'m>; INLINE_SEGMENTS]>> {
    let mut out = SmallVec::with_capacity(segs.len());
    for s in segs {
        let vs = look.slice(s.addr, s.len)?;
        let ptr = vs.ptr_guard_mut().as_ptr();
        // SAFETY: `Lookup::slice` (the region's `get_slice`) checked that `s.len` bytes at
        // `ptr` lie inside one mapped guest memory region, which stays mapped while the guest
        // memory the lookups borrow for 'm lives. The guest may
        // touch these bytes concurrently, as with any DMA; they are plain bytes, never
        // references the VMM relies on, so the worst outcome is garbage data for the guest.
        out.push(IoSliceMut::new(unsafe {
            std::slice::from_raw_parts_mut(ptr, s.len as usize)
        }));
    }
    Ok(out)
}

/// Host views of guest buffers, for vectored writes from them (no allocation for up to
/// [`INLINE_SEGMENTS`] buffers).
fn guest_slices<'m>(
    look: &mut Lookup<'m>,
    segs: &[Segment],
) -> Result<SmallVec<[IoSlice<'m>; INLINE_SEGMENTS]>> {
    let mut out = SmallVec::with_capacity(segs.len());
    for s in segs {
        let vs = look.slice(s.addr, s.len)?;
        let ptr = vs.ptr_guard().as_ptr();
        // SAFETY: as in `guest_slices_mut`: the range is inside one mapping that outlives 'm.
        out.push(IoSlice::new(unsafe {
            std::slice::from_raw_parts(ptr, s.len as usize)
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::test_utils::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    /// (what, request type, sector, descriptors, expected (status, used length)).
    type Case = (&'static str, u32, u64, Vec<RawDescriptor>, (u8, u32));

    /// Runs one chain built from `descs` through parse + execute; returns (status, used len).
    /// Walks the chain twice, with `virtio_queue`'s iterator and with the fast ring accessor
    /// (`ring::Rings`), and checks that both come to the same result.
    fn run(mem: &GuestMemoryMmap, disk: &Disk, descs: &[RawDescriptor]) -> (u8, u32) {
        mem.write_obj(0xaau8, GuestAddress(ST)).unwrap();
        let q = MockSplitQueue::new(mem, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        let head = chain.head_index();
        let used = process(mem, chain, disk, ALL);
        let slow = (mem.read_obj::<u8>(GuestAddress(ST)).unwrap(), used);

        mem.write_obj(0xaau8, GuestAddress(ST)).unwrap();
        let queue: virtio_queue::Queue = q.create_queue().unwrap();
        let rings = crate::devices::virtio::block::ring::Rings::new(mem, &queue).unwrap();
        let used = process(mem, rings.chain(head), disk, ALL);
        let fast = (mem.read_obj::<u8>(GuestAddress(ST)).unwrap(), used);
        assert_eq!(
            slow, fast,
            "virtio-queue's chain walk vs the ring accessor's"
        );
        fast
    }

    fn fill(mem: &GuestMemoryMmap, addr: u64, len: usize, seed: u8) -> Vec<u8> {
        let v: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
        mem.write_slice(&v, GuestAddress(addr)).unwrap();
        v
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn write_then_read_back() {
        for kind in KINDS {
            let m = mem();
            let (_k, disk) = disk(kind, false);
            header(&m, HDR, VIRTIO_BLK_T_OUT, 3);
            let a = fill(&m, BUF, 4096, 1);
            let b = fill(&m, BUF + 0x2000, 512, 2);
            let r = run(
                &m,
                &disk,
                &[
                    desc(HDR, 16, 0),
                    desc(BUF, 4096, 0),
                    desc(BUF + 0x2000, 512, 0),
                    desc(ST, 1, WRITE),
                ],
            );
            assert_eq!(r, (OK, 1), "{kind:?}");
            // Read it back in one buffer that also carries the status byte.
            header(&m, HDR, VIRTIO_BLK_T_IN, 3);
            let r = run(&m, &disk, &[desc(HDR, 16, 0), desc(ST - 4608, 4609, WRITE)]);
            assert_eq!(r, (OK, 4609), "{kind:?}");
            assert_eq!(read(&m, ST - 4608, 4096), a);
            assert_eq!(read(&m, ST - 512, 512), b);
            // And straight from the backend.
            let mut direct = vec![0; 4608];
            disk.backend().read_at(3 * 512, &mut direct).unwrap();
            assert_eq!(&direct[..4096], &a[..]);
        }
    }

    #[test]
    fn header_and_data_in_one_descriptor() {
        for kind in KINDS {
            let m = mem();
            let (_k, disk) = disk(kind, false);
            header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
            let a = fill(&m, HDR + 16, 512, 9);
            assert_eq!(
                run(&m, &disk, &[desc(HDR, 528, 0), desc(ST, 1, WRITE)]),
                (OK, 1)
            );
            let mut got = vec![0; 512];
            disk.backend().read_at(0, &mut got).unwrap();
            assert_eq!(got, a);
        }
    }

    #[test]
    fn flush_get_id_discard_write_zeroes() {
        for kind in KINDS {
            let m = mem();
            let (_k, disk) = disk(kind, false);
            disk.backend().write_at(0, &[0x55; 8192]).unwrap();
            header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
            assert_eq!(
                run(&m, &disk, &[desc(HDR, 16, 0), desc(ST, 1, WRITE)]),
                (OK, 1)
            );

            header(&m, HDR, VIRTIO_BLK_T_GET_ID, 0);
            let r = run(
                &m,
                &disk,
                &[desc(HDR, 16, 0), desc(BUF, 20, WRITE), desc(ST, 1, WRITE)],
            );
            assert_eq!(r, (OK, 21));
            let id = disk.backend().info().id;
            let n = id.len().min(20);
            assert_eq!(&read(&m, BUF, n), &id.as_bytes()[..n]);

            for (t, sector) in [(VIRTIO_BLK_T_DISCARD, 0u64), (VIRTIO_BLK_T_WRITE_ZEROES, 8)] {
                header(&m, HDR, t, 0);
                m.write_obj(sector, GuestAddress(BUF)).unwrap();
                m.write_obj(8u32, GuestAddress(BUF + 8)).unwrap();
                m.write_obj(0u32, GuestAddress(BUF + 12)).unwrap();
                let r = run(
                    &m,
                    &disk,
                    &[desc(HDR, 16, 0), desc(BUF, 16, 0), desc(ST, 1, WRITE)],
                );
                assert_eq!(r, (OK, 1), "{kind:?} type {t}");
            }
            let mut got = vec![1; 8192];
            disk.backend().read_at(0, &mut got).unwrap();
            assert!(got.iter().all(|&b| b == 0), "{kind:?}");
        }
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        for kind in KINDS {
            let m = mem();
            let (_k, disk) = disk(kind, true);
            header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
            fill(&m, BUF, 512, 3);
            let r = run(
                &m,
                &disk,
                &[desc(HDR, 16, 0), desc(BUF, 512, 0), desc(ST, 1, WRITE)],
            );
            assert_eq!(r, (IOERR, 1));
            let mut got = vec![1; 512];
            disk.backend().read_at(0, &mut got).unwrap();
            assert!(got.iter().all(|&b| b == 0));
            for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
                header(&m, HDR, t, 0);
                m.write_obj(0u64, GuestAddress(BUF)).unwrap();
                m.write_obj(1u64, GuestAddress(BUF + 8)).unwrap();
                let r = run(
                    &m,
                    &disk,
                    &[desc(HDR, 16, 0), desc(BUF, 16, 0), desc(ST, 1, WRITE)],
                );
                assert_eq!(r, (IOERR, 1));
            }
            // Reads still work.
            header(&m, HDR, VIRTIO_BLK_T_IN, 0);
            let r = run(
                &m,
                &disk,
                &[desc(HDR, 16, 0), desc(BUF, 512, WRITE), desc(ST, 1, WRITE)],
            );
            assert_eq!(r, (OK, 513));
        }
        // A backend that is itself read-only.
        let m = mem();
        let (_k, b) = backend(Kind::Raw, true);
        let disk = Disk::new(b, false);
        assert!(disk.read_only());
        header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
        let r = run(
            &m,
            &disk,
            &[desc(HDR, 16, 0), desc(BUF, 512, 0), desc(ST, 1, WRITE)],
        );
        assert_eq!(r, (IOERR, 1));
    }

    #[test]
    fn hostile_chains_get_an_error_status() {
        let outside = MEM_SIZE as u64 + 0x1000;
        for kind in KINDS {
            let m = mem();
            let (_k, disk) = disk(kind, false);
            let cases: Vec<Case> = vec![
                (
                    "data outside memory",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![
                        desc(HDR, 16, 0),
                        desc(outside, 512, WRITE),
                        desc(ST, 1, WRITE),
                    ],
                    (IOERR, 1),
                ),
                (
                    "data straddles the end of memory",
                    VIRTIO_BLK_T_OUT,
                    0,
                    vec![
                        desc(HDR, 16, 0),
                        desc(MEM_SIZE as u64 - 256, 512, 0),
                        desc(ST, 1, WRITE),
                    ],
                    (IOERR, 1),
                ),
                (
                    "huge length",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![
                        desc(HDR, 16, 0),
                        desc(BUF, u32::MAX - 4096, WRITE),
                        desc(ST, 1, WRITE),
                    ],
                    (IOERR, 1),
                ),
                // Over 2^32 bytes in all: the chain iterator stops early, leaving no status.
                (
                    "chain longer than 4 GiB",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![
                        desc(HDR, 16, 0),
                        desc(BUF, u32::MAX, WRITE),
                        desc(ST, 1, WRITE),
                    ],
                    (0xaa, 0),
                ),
                (
                    "short header",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![desc(HDR, 8, 0), desc(BUF, 512, WRITE), desc(ST, 1, WRITE)],
                    (IOERR, 1),
                ),
                (
                    "writable header",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![
                        desc(HDR, 16, WRITE),
                        desc(BUF, 512, WRITE),
                        desc(ST, 1, WRITE),
                    ],
                    (IOERR, 1),
                ),
                (
                    "read into a device-readable buffer",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![desc(HDR, 16, 0), desc(BUF, 512, 0), desc(ST, 1, WRITE)],
                    (IOERR, 1),
                ),
                (
                    "write from a device-writable buffer",
                    VIRTIO_BLK_T_OUT,
                    0,
                    vec![desc(HDR, 16, 0), desc(BUF, 512, WRITE), desc(ST, 1, WRITE)],
                    (IOERR, 1),
                ),
                (
                    "past the end of the disk",
                    VIRTIO_BLK_T_IN,
                    DISK_SIZE / 512,
                    vec![desc(HDR, 16, 0), desc(BUF, 512, WRITE), desc(ST, 1, WRITE)],
                    (IOERR, 1),
                ),
                (
                    "sector overflows",
                    VIRTIO_BLK_T_OUT,
                    u64::MAX / 2,
                    vec![desc(HDR, 16, 0), desc(BUF, 512, 0), desc(ST, 1, WRITE)],
                    (IOERR, 1),
                ),
                (
                    "partial sector",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![desc(HDR, 16, 0), desc(BUF, 100, WRITE), desc(ST, 1, WRITE)],
                    (IOERR, 1),
                ),
                (
                    "unknown type",
                    77,
                    0,
                    vec![desc(HDR, 16, 0), desc(ST, 1, WRITE)],
                    (UNSUPP, 1),
                ),
                (
                    "unknown type with a device-writable buffer (GET_LIFETIME)",
                    10,
                    0,
                    vec![desc(HDR, 16, 0), desc(BUF, 16, WRITE), desc(ST, 1, WRITE)],
                    (UNSUPP, 1),
                ),
                (
                    "unknown type with a device-readable buffer",
                    77,
                    0,
                    vec![desc(HDR, 16, 0), desc(BUF, 512, 0), desc(ST, 1, WRITE)],
                    (UNSUPP, 1),
                ),
                (
                    "discard with no segments",
                    VIRTIO_BLK_T_DISCARD,
                    0,
                    vec![desc(HDR, 16, 0), desc(ST, 1, WRITE)],
                    (IOERR, 1),
                ),
                (
                    "status not writable",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![desc(HDR, 16, 0), desc(BUF, 512, WRITE), desc(ST, 1, 0)],
                    (0xaa, 0),
                ),
                (
                    "status outside memory",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![
                        desc(HDR, 16, 0),
                        desc(BUF, 512, WRITE),
                        desc(outside, 1, WRITE),
                    ],
                    (0xaa, 0),
                ),
                (
                    "status only",
                    VIRTIO_BLK_T_IN,
                    0,
                    vec![desc(ST, 1, WRITE)],
                    (IOERR, 1),
                ),
            ];
            for (what, t, sector, descs, want) in cases {
                header(&m, HDR, t, sector);
                assert_eq!(run(&m, &disk, &descs), want, "{kind:?}: {what}");
            }
            // Discard segments past the end, or with flags.
            header(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
            m.write_obj(DISK_SIZE / 512, GuestAddress(BUF)).unwrap();
            m.write_obj(1u64, GuestAddress(BUF + 8)).unwrap();
            let d = [desc(HDR, 16, 0), desc(BUF, 16, 0), desc(ST, 1, WRITE)];
            assert_eq!(run(&m, &disk, &d), (IOERR, 1));
            m.write_obj(0u64, GuestAddress(BUF)).unwrap();
            m.write_obj(1u32, GuestAddress(BUF + 8)).unwrap();
            m.write_obj(4u32, GuestAddress(BUF + 12)).unwrap();
            assert_eq!(run(&m, &disk, &d), (UNSUPP, 1));
        }
    }

    #[test]
    fn loops_terminate() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        // Descriptor 0 -> 1 -> 0 -> ... never ends; the chain iterator stops after the
        // queue size. The last descriptor seen is writable: the error status lands there.
        let q = MockSplitQueue::new(&m, 16);
        let descs = [
            linked(HDR, 16, 0, Some(1)),
            linked(BUF, 512, WRITE, Some(0)),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        use virtio_queue::QueueT;
        let chain = queue.pop_descriptor_chain(&m).unwrap();
        assert_eq!(process(&m, chain, &disk, ALL), 1);
        assert_eq!(m.read_obj::<u8>(GuestAddress(BUF + 511)).unwrap(), IOERR);
        // A self-loop on a writable descriptor: the last one seen is writable, so the guest
        // gets an error status in its own buffer.
        let q = MockSplitQueue::new(&m, 16);
        q.add_desc_chains(
            &[
                linked(HDR, 16, 0, Some(1)),
                linked(BUF, 513, WRITE, Some(1)),
            ],
            0,
        )
        .unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        let chain = queue.pop_descriptor_chain(&m).unwrap();
        let used = process(&m, chain, &disk, ALL);
        assert!(used <= 1);
    }

    #[test]
    fn buffers_in_two_regions() {
        // Two adjacent regions, split in the middle of the data area.
        let split = DATA + 0x8000;
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), split as usize),
            (GuestAddress(split), MEM_SIZE - split as usize),
        ])
        .unwrap();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
        let a = fill(&m, split - 0x1000, 512, 4);
        let b = fill(&m, split + 0x1000, 512, 5);
        // One buffer in each region (the lookup changes regions), then the first again.
        let r = run(
            &m,
            &disk,
            &[
                desc(HDR, 16, 0),
                desc(split - 0x1000, 512, 0),
                desc(split + 0x1000, 512, 0),
                desc(split - 0x1000, 512, 0),
                desc(ST, 1, WRITE),
            ],
        );
        assert_eq!(r, (OK, 1));
        let mut got = vec![0; 1536];
        disk.backend().read_at(0, &mut got).unwrap();
        assert_eq!(&got[..512], &a[..]);
        assert_eq!(&got[512..1024], &b[..]);
        assert_eq!(&got[1024..], &a[..]);
        // A buffer across the boundary is refused, before and after a hit in either region.
        for descs in [
            vec![
                desc(HDR, 16, 0),
                desc(split - 256, 512, 0),
                desc(ST, 1, WRITE),
            ],
            vec![
                desc(HDR, 16, 0),
                desc(split + 0x1000, 512, 0),
                desc(split - 256, 512, 0),
                desc(ST, 1, WRITE),
            ],
        ] {
            assert_eq!(run(&m, &disk, &descs), (IOERR, 1));
        }
        // A header across the boundary too.
        header(&m, split - 8, VIRTIO_BLK_T_OUT, 0);
        let d = [
            desc(split - 8, 16, 0),
            desc(BUF, 512, 0),
            desc(ST, 1, WRITE),
        ];
        assert_eq!(run(&m, &disk, &d), (IOERR, 1));
    }

    #[test]
    fn unsupported_when_not_negotiated() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
        m.write_obj(0u64, GuestAddress(BUF)).unwrap();
        m.write_obj(1u64, GuestAddress(BUF + 8)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q
            .build_desc_chain(&[desc(HDR, 16, 0), desc(BUF, 16, 0), desc(ST, 1, WRITE)])
            .unwrap();
        assert_eq!(process(&m, chain, &disk, Negotiated::default()), 1);
        assert_eq!(m.read_obj::<u8>(GuestAddress(ST)).unwrap(), UNSUPP);
    }
}
