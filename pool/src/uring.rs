//! Overlapped writes: a vectored write goes to the kernel through the calling thread's own
//! io_uring, the caller works (checksums) while the device transfers, then waits for it. Where
//! io_uring is unavailable (an old kernel, a seccomp filter, a memlock limit) the write runs
//! synchronously after the work; either way the call returns only when the write is done.

use crate::positioned::{iovecs, pwritev_all};
use io_uring::{opcode, types, IoUring};
use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Most iovecs one submission takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

thread_local! {
    /// This thread's ring, made on first use; `None` once making or using one failed.
    static RING: RefCell<Option<IoUring>> = RefCell::new(IoUring::new(2).ok());
}

/// Writes all of `bufs` at `offset` on `fd`, running `work` exactly once while the device
/// transfers (before the write where no ring is usable). Short writes are finished
/// synchronously; errors are the write's own (`EINVAL` for O_DIRECT misalignment included).
pub fn pwritev_overlapped(
    fd: RawFd,
    bufs: &[IoSlice<'_>],
    offset: u64,
    work: &mut dyn FnMut(),
) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let started = (bufs.len() <= IOV_MAX)
        .then(|| {
            RING.try_with(|r| {
                let mut r = r.try_borrow_mut().ok()?;
                let ring = r.as_mut()?;
                match overlap(ring, fd, bufs, offset, work) {
                    Ok(done) => Some(Ok(done)),
                    Err(Failure::Ring) => {
                        // The ring misbehaved before the write was submitted: use none here
                        // again, and write synchronously below.
                        *r = None;
                        None
                    }
                    Err(Failure::Write(e)) => Some(Err(e)),
                }
            })
            .ok()
            .flatten()
        })
        .flatten();
    match started {
        Some(Ok(done)) if done == total => Ok(()),
        Some(Ok(done)) => finish(fd, bufs, offset, done),
        Some(Err(e)) => Err(e),
        None => {
            work();
            pwritev_all(fd, bufs, offset)
        }
    }
}

/// Why an overlapped write did not complete.
enum Failure {
    /// The ring could not take the write; nothing was submitted and `work` has not run.
    Ring,
    /// The write itself failed (`work` has run).
    Write(io::Error),
}

/// Submits the write, runs `work`, waits for the completion: the bytes written.
fn overlap(
    ring: &mut IoUring,
    fd: RawFd,
    bufs: &[IoSlice<'_>],
    offset: u64,
    work: &mut dyn FnMut(),
) -> Result<usize, Failure> {
    let iov = iovecs(bufs);
    let sqe = opcode::Writev::new(types::Fd(fd), iov.as_ptr(), iov.len() as u32)
        .offset(offset)
        .build();
    // SAFETY: the iovecs and the buffers they describe are borrowed for this whole call, and
    // the call does not return (nor unwind) before the kernel has completed this entry.
    if unsafe { ring.submission().push(&sqe) }.is_err() {
        return Err(Failure::Ring);
    }
    loop {
        match ring.submit() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The entry may still sit in the queue: the caller drops the ring (unmapping it
            // unsubmitted) before the buffers can go.
            Err(_) => return Err(Failure::Ring),
        }
    }
    let worked = catch_unwind(AssertUnwindSafe(&mut *work));
    let res = loop {
        if let Some(cqe) = ring.completion().next() {
            break cqe.result();
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Waiting cannot fail once the entry is in flight short of a kernel bug; spin
            // on the completion queue rather than free buffers the kernel may still read.
            Err(_) => std::thread::yield_now(),
        }
    };
    if let Err(panic) = worked {
        resume_unwind(panic);
    }
    if res < 0 {
        return Err(Failure::Write(io::Error::from_raw_os_error(-res)));
    }
    Ok(res as usize)
}

/// Writes what a short overlapped write left, synchronously.
fn finish(fd: RawFd, bufs: &[IoSlice<'_>], offset: u64, mut done: usize) -> io::Result<()> {
    let mut at = offset + done as u64;
    for b in bufs {
        if done >= b.len() {
            done -= b.len();
            continue;
        }
        pwritev_all(fd, &[IoSlice::new(&b[done..])], at)?;
        at += (b.len() - done) as u64;
        done = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    fn file() -> std::fs::File {
        tempfile::tempfile().expect("temp file")
    }

    #[test]
    fn writes_every_byte_and_runs_the_work_once() {
        let f = file();
        let a = vec![1u8; 5000];
        let b = vec![2u8; 3000];
        let mut runs = 0;
        pwritev_overlapped(
            f.as_raw_fd(),
            &[IoSlice::new(&a), IoSlice::new(&b)],
            100,
            &mut || runs += 1,
        )
        .expect("write");
        assert_eq!(runs, 1);
        let mut got = vec![0u8; 8100];
        f.read_exact_at(&mut got, 0).expect("read back");
        assert!(got[..100].iter().all(|&x| x == 0));
        assert!(got[100..5100].iter().all(|&x| x == 1));
        assert!(got[5100..].iter().all(|&x| x == 2));
    }

    #[test]
    fn more_iovecs_than_one_submission_takes_are_written_synchronously() {
        let f = file();
        let blocks: Vec<[u8; 8]> = (0..IOV_MAX as u64 + 10).map(u64::to_le_bytes).collect();
        let iov: Vec<IoSlice<'_>> = blocks.iter().map(|b| IoSlice::new(b)).collect();
        let mut runs = 0;
        pwritev_overlapped(f.as_raw_fd(), &iov, 0, &mut || runs += 1).expect("write");
        assert_eq!(runs, 1);
        let mut last = [0u8; 8];
        f.read_exact_at(&mut last, (IOV_MAX as u64 + 9) * 8)
            .expect("read back");
        assert_eq!(u64::from_le_bytes(last), IOV_MAX as u64 + 9);
    }

    #[test]
    fn a_failed_write_reports_its_error_after_the_work() {
        let f = tempfile::tempfile().expect("temp file");
        let ro = std::fs::File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("reopen");
        let mut runs = 0;
        let e = pwritev_overlapped(ro.as_raw_fd(), &[IoSlice::new(b"x")], 0, &mut || runs += 1)
            .expect_err("a read-only descriptor");
        assert_eq!((runs, e.raw_os_error()), (1, Some(libc::EBADF)));
    }

    #[test]
    fn a_panic_in_the_work_waits_for_the_write_then_unwinds() {
        let f = file();
        let data = vec![9u8; 1 << 20];
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            pwritev_overlapped(f.as_raw_fd(), &[IoSlice::new(&data)], 0, &mut || {
                panic!("work failed")
            })
        }));
        assert!(r.is_err(), "the panic propagates");
        let mut got = vec![0u8; 1 << 20];
        f.read_exact_at(&mut got, 0).expect("read back");
        assert!(
            got.iter().all(|&x| x == 9),
            "the write finished before unwinding"
        );
        // The thread's ring is still usable.
        pwritev_overlapped(f.as_raw_fd(), &[IoSlice::new(b"ok")], 0, &mut || {}).expect("write");
    }
}
