//! The user's terminal as a guest's serial console: raw input, so every key (Ctrl-C included)
//! goes to the guest, and the terminal put back as it was on every way out.

use std::sync::Mutex;

/// The settings found before [`raw_stdin`] changed them.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Whether stdin is a terminal this process reads in the foreground (a background job that
/// read it would be stopped by SIGTTIN).
pub fn stdin_is_foreground_terminal() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only look at the descriptor and the process.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Puts stdin's terminal in raw input mode (no line editing, echo or signal keys; output is
/// left as it is, so the guest's lines still end where they should). True if it did.
pub fn raw_stdin() -> bool {
    if !stdin_is_foreground_terminal() {
        return false;
    }
    // SAFETY: termios is plain old data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 and a valid termios.
    if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
        return false;
    }
    let saved = t;
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON);
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    let mut slot = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: fd 0 and a valid termios.
    if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
        return false;
    }
    slot.get_or_insert(saved);
    true
}

/// Puts the terminal back as [`raw_stdin`] found it; does nothing if it was not changed (or
/// was put back already). Safe to call from any thread, before any exit.
pub fn restore() {
    let mut slot = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = slot.take() {
        // SAFETY: fd 0 and the termios tcgetattr gave.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
}

/// Restores the terminal when dropped (also when a panic unwinds).
pub struct RawGuard;

impl Drop for RawGuard {
    fn drop(&mut self) {
        restore();
    }
}
