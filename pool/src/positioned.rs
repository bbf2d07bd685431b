//! Positioned vectored I/O on a file descriptor (`preadv`/`pwritev`) that moves every byte:
//! the one loop the pool's file device and zvol's raw files share.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::RawFd;

/// Most iovecs one `preadv`/`pwritev` takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Which way a transfer goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// `preadv`: into the buffers.
    Read,
    /// `pwritev`: from the buffers.
    Write,
}

/// `bufs` as the `iovec`s they are (for `transfer`).
pub fn iovecs<'a>(bufs: &'a [IoSlice<'_>]) -> &'a [libc::iovec] {
    // SAFETY: `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix (std docs), so a
    // slice of one is a valid slice of the other, for the same lifetime.
    unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len()) }
}

/// `bufs` as the `iovec`s they are (for `transfer`).
pub fn iovecs_mut<'a>(bufs: &'a mut [IoSliceMut<'_>]) -> &'a [libc::iovec] {
    // SAFETY: `IoSliceMut` is guaranteed ABI-compatible with `iovec` on Unix (std docs); the
    // pointers inside were made from exclusive borrows, which `bufs` keeps alive and unused
    // for as long as the returned slice lives.
    unsafe { std::slice::from_raw_parts(bufs.as_mut_ptr().cast::<libc::iovec>(), bufs.len()) }
}

/// Transfers everything `iov` describes, at `offset`, with `preadv`/`pwritev`: retries
/// `EINTR`, continues after short transfers, splits at `IOV_MAX`. On failure returns the
/// error and the bytes already transferred.
///
/// # Safety
///
/// Every iovec must describe memory valid for the whole call: writable and not otherwise
/// accessed for `Dir::Read`, readable for `Dir::Write`. `offset` plus the total length
/// must fit in `off_t`.
pub unsafe fn transfer(
    fd: RawFd,
    iov: &[libc::iovec],
    offset: u64,
    dir: Dir,
) -> Result<(), (io::Error, u64)> {
    let total: u64 = iov.iter().map(|v| v.iov_len as u64).sum();
    let mut done = 0u64;
    let mut first = 0usize;
    let mut skip = 0usize;
    let mut scratch: Vec<libc::iovec> = Vec::new();
    while done < total {
        while first < iov.len() && iov[first].iov_len == skip {
            first += 1;
            skip = 0;
        }
        let end = (first + IOV_MAX).min(iov.len());
        let window: &[libc::iovec] = if skip == 0 {
            &iov[first..end]
        } else {
            scratch.clear();
            scratch.extend_from_slice(&iov[first..end]);
            scratch[0].iov_base = scratch[0].iov_base.cast::<u8>().wrapping_add(skip).cast();
            scratch[0].iov_len -= skip;
            &scratch
        };
        let pos = (offset + done) as libc::off_t;
        let n = match dir {
            // SAFETY: the caller guarantees the buffers are valid and writable; `window`
            // holds at most IOV_MAX entries, each within the caller's buffers.
            Dir::Read => unsafe {
                libc::preadv(fd, window.as_ptr(), window.len() as libc::c_int, pos)
            },
            // SAFETY: the caller guarantees the buffers are valid and readable; `window`
            // holds at most IOV_MAX entries, each within the caller's buffers.
            Dir::Write => unsafe {
                libc::pwritev(fd, window.as_ptr(), window.len() as libc::c_int, pos)
            },
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((e, done));
        }
        if n == 0 {
            let e = match dir {
                Dir::Read => io::Error::new(io::ErrorKind::UnexpectedEof, "unexpected end of file"),
                Dir::Write => {
                    io::Error::new(io::ErrorKind::WriteZero, "the write made no progress")
                }
            };
            return Err((e, done));
        }
        let mut n = n as usize;
        done += n as u64;
        while n > 0 && first < iov.len() {
            let left = iov[first].iov_len - skip;
            if n >= left {
                n -= left;
                first += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Writes all of `bufs` at `offset` (retrying interruptions and short writes).
pub fn pwritev_all(fd: RawFd, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
    // SAFETY: the iovecs come from live shared borrows, readable for the whole call.
    unsafe { transfer(fd, iovecs(bufs), offset, Dir::Write) }.map_err(|(e, _)| e)
}
