//! One holder per pool: an exclusive `flock` on the pool file or device itself, so a killed
//! holder leaves no stale lock. The holder also takes a POSIX read lock on byte 0 so that a
//! second opener can name it by PID.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Why locking failed.
pub enum LockError {
    /// Someone else holds it (their PID when known).
    Held(Option<i32>),
    /// The lock call itself failed.
    Io(io::Error),
}

/// Takes the pool lock on `file` (released when the file closes).
pub fn lock_exclusive(file: &File) -> Result<(), LockError> {
    let fd = file.as_raw_fd();
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LockError::Held(holder_pid(file)));
        }
        return Err(LockError::Io(err));
    }
    let mut fl = posix_lock(libc::F_RDLCK as libc::c_short);
    // SAFETY: fcntl with a valid flock struct; failure only loses the PID hint.
    unsafe { libc::fcntl(fd, libc::F_SETLK, &mut fl) };
    Ok(())
}

fn posix_lock(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    fl
}

fn holder_pid(file: &File) -> Option<i32> {
    let mut fl = posix_lock(libc::F_WRLCK as libc::c_short);
    // SAFETY: F_GETLK fills the struct we pass.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short && fl.l_pid > 0).then_some(fl.l_pid)
}
