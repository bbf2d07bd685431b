//! A list of caller buffers (guest memory, typically) addressed as one byte range, so volume
//! I/O can move bytes straight between them and blocks without gathering first.

use smallvec::SmallVec;
use std::io::{IoSlice, IoSliceMut};

/// Where each buffer starts in the logical range: on the stack for the few buffers a request
/// usually has (no allocation on the I/O path).
type Starts = SmallVec<[usize; 8]>;

fn starts(lens: impl Iterator<Item = usize>) -> Starts {
    let mut at = 0;
    lens.map(|l| {
        let s = at;
        at += l;
        s
    })
    .collect()
}

/// Locates logical byte `at`: (segment, offset in it). `at` must be below the total length.
fn find(starts: &[usize], at: usize) -> (usize, usize) {
    let i = starts.partition_point(|&s| s <= at) - 1;
    (i, at - starts[i])
}

/// Buffers to read from.
pub(crate) struct Iov<'a, 'b> {
    bufs: &'a [IoSlice<'b>],
    starts: Starts,
    len: usize,
}

impl<'a, 'b> Iov<'a, 'b> {
    pub(crate) fn new(bufs: &'a [IoSlice<'b>]) -> Self {
        Iov {
            starts: starts(bufs.iter().map(|b| b.len())),
            len: bufs.iter().map(|b| b.len()).sum(),
            bufs,
        }
    }

    /// Total bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `n` bytes at `at`, if they lie in one buffer.
    pub(crate) fn contiguous(&self, at: usize, n: usize) -> Option<&[u8]> {
        let (i, off) = find(&self.starts, at);
        self.bufs[i].get(off..off + n)
    }

    /// Copies bytes `at..at + dst.len()` into `dst`.
    pub(crate) fn copy_out(&self, mut at: usize, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let (i, off) = find(&self.starts, at);
            let src = &self.bufs[i][off..];
            let n = src.len().min(dst.len());
            dst[..n].copy_from_slice(&src[..n]);
            dst = &mut dst[n..];
            at += n;
        }
    }
}

/// Buffers to read into.
pub(crate) struct IovMut<'a, 'b> {
    bufs: &'a mut [IoSliceMut<'b>],
    starts: Starts,
    len: usize,
}

impl<'a, 'b> IovMut<'a, 'b> {
    pub(crate) fn new(bufs: &'a mut [IoSliceMut<'b>]) -> Self {
        let len = bufs.iter().map(|b| b.len()).sum();
        IovMut {
            starts: starts(bufs.iter().map(|b| b.len())),
            len,
            bufs,
        }
    }

    /// Total bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `n` bytes at `at`, if they lie in one buffer.
    pub(crate) fn contiguous(&mut self, at: usize, n: usize) -> Option<&mut [u8]> {
        let (i, off) = find(&self.starts, at);
        self.bufs[i].get_mut(off..off + n)
    }

    /// Copies `src` to bytes `at..at + src.len()`.
    pub(crate) fn copy_in(&mut self, mut at: usize, mut src: &[u8]) {
        while !src.is_empty() {
            let (i, off) = find(&self.starts, at);
            let dst = &mut self.bufs[i][off..];
            let n = dst.len().min(src.len());
            dst[..n].copy_from_slice(&src[..n]);
            src = &src[n..];
            at += n;
        }
    }

    /// Zeroes bytes `at..at + n`.
    pub(crate) fn zero(&mut self, mut at: usize, mut n: usize) {
        while n > 0 {
            let (i, off) = find(&self.starts, at);
            let dst = &mut self.bufs[i][off..];
            let k = dst.len().min(n);
            dst[..k].fill(0);
            n -= k;
            at += k;
        }
    }
}

/// Copies bytes `at..at + dst.len()` of `bufs`, seen as one buffer, into `dst`.
pub fn gather(bufs: &[IoSlice<'_>], at: usize, dst: &mut [u8]) {
    if !dst.is_empty() {
        Iov::new(bufs).copy_out(at, dst);
    }
}

/// Copies `src` into `bufs`, seen as one buffer, starting `at` bytes in.
pub fn scatter(bufs: &mut [IoSliceMut<'_>], at: usize, src: &[u8]) {
    if !src.is_empty() {
        IovMut::new(bufs).copy_in(at, src);
    }
}

/// A heap buffer aligned to 4 KiB with a length up to its capacity. Whole blocks written from
/// it can go to a file-backed pool with O_DIRECT, skipping the page-cache copy.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap.max(1), Self::ALIGN)
            .unwrap_or_else(|_| std::alloc::Layout::new::<u8>())
    }

    /// A zero-filled buffer of `cap` bytes (its length, too).
    pub fn new(cap: usize) -> Self {
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: cap }
    }

    /// Sets the length (at most the capacity); bytes past the old length read as they were
    /// last written, or zero.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.cap);
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers() {
        let mut b = AlignedBuf::new(3 << 20);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert!(b.iter().all(|&x| x == 0));
        b.set_len(10);
        b[9] = 7;
        assert_eq!((b.len(), b.capacity(), b[9]), (10, 3 << 20, 7));
    }

    #[test]
    fn spans_segments() {
        let (a, b, c) = ([1u8, 2, 3], [], [4u8, 5]);
        let bufs = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let iov = Iov::new(&bufs);
        assert_eq!(iov.len(), 5);
        let mut out = [0u8; 4];
        iov.copy_out(1, &mut out);
        assert_eq!(out, [2, 3, 4, 5]);
        assert_eq!(iov.contiguous(3, 2), Some(&c[..]));
        assert_eq!(iov.contiguous(2, 2), None);

        let (mut x, mut y) = ([9u8; 3], [9u8; 2]);
        let mut mbufs = [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)];
        let mut m = IovMut::new(&mut mbufs);
        m.copy_in(2, &[7, 8]);
        m.zero(0, 1);
        assert!(m.contiguous(1, 3).is_none());
        drop(m);
        assert_eq!((x, y), ([0, 9, 7], [8, 9]));
    }
}
