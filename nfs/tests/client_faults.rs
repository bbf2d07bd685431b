//! `NfsDisk` against a faulty or hostile NFSv3 server: a scripted fake (std threads,
//! hand-written XDR) that can crash and restart (losing unstable data, changing its write
//! verifier), go away for a while, answer JUKEBOX, split replies into record fragments, claim
//! a gigantic reply, stall a WRITE, or answer UNSTABLE to a FILE_SYNC write. Each test says
//! what the disk did before its fix.
#![allow(clippy::unwrap_used, missing_docs)]

use nfs::{NfsDisk, NfsOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zvol::BlockBackend;

/// What the fake server holds and how it misbehaves (set by the tests as they go).
#[derive(Default)]
pub struct State {
    pub data: Vec<u8>,
    pub durable: Vec<u8>,
    pub verf: u64,
    pub unstable_on_filesync: bool,
    pub jukebox_reads: u32,
    pub fragment_replies: bool,
    pub read_delay_ms: u64,
    pub commits: u32,
    pub writes: u32,
    pub filesync_writes: u32,
    pub conns_opened: u32,
    pub silent: bool,
    pub wtmax: u32,
    pub huge_read_reply: usize,
    pub delay_next_write_ms: u64,
    pub commits_fail: bool,
    pub commit_delay_ms: u64,
    /// Answers FILE_SYNC to every WRITE (as `tarn nfs serve --sync`).
    pub filesync_all: bool,
    /// The next READ takes its data at once and replies this much later.
    pub hold_next_read_ms: u64,
    /// READs left unanswered.
    pub silent_reads: u32,
}

/// A fake NFSv3 server (MOUNT, GETATTR, LOOKUP, FSINFO, READ, WRITE, COMMIT on one file) on a
/// loopback port.
pub struct Fake {
    pub st: Arc<Mutex<State>>,
    pub port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Cur<'a>(&'a [u8]);
impl Cur<'_> {
    fn u32(&mut self) -> u32 {
        let v = u32::from_be_bytes(self.0[..4].try_into().unwrap());
        self.0 = &self.0[4..];
        v
    }
    fn u64(&mut self) -> u64 {
        ((self.u32() as u64) << 32) | self.u32() as u64
    }
    fn opaque(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        let v = self.0[..n].to_vec();
        self.0 = &self.0[n.div_ceil(4) * 4..];
        v
    }
}

#[derive(Default)]
struct W(Vec<u8>);
impl W {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn opaque(&mut self, d: &[u8]) -> &mut Self {
        self.u32(d.len() as u32);
        self.0.extend_from_slice(d);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
}

fn fattr(w: &mut W, size: u64) {
    w.u32(1).u32(0o644).u32(1).u32(0).u32(0).u64(size).u64(size);
    w.u32(0).u32(0).u64(7).u64(42);
    for _ in 0..6 {
        w.u32(0);
    }
}

fn handle(st: &Arc<Mutex<State>>, msg: &[u8]) -> Option<Vec<u8>> {
    let mut c = Cur(msg);
    let xid = c.u32();
    let _mtype = c.u32();
    let _rpcvers = c.u32();
    let prog = c.u32();
    let _vers = c.u32();
    let proc_ = c.u32();
    let _ = c.u32();
    let _ = c.opaque();
    let _ = c.u32();
    let _ = c.opaque();
    let mut w = W::default();
    w.u32(xid).u32(1).u32(0).u32(0).u32(0).u32(0);
    if st.lock().unwrap().silent {
        return None;
    }
    match (prog, proc_) {
        (100005, 1) => {
            w.u32(0).opaque(b"ROOTFH00").u32(1).u32(1);
        }
        (100003, 0) => {}
        (100003, 1) => {
            let size = st.lock().unwrap().data.len() as u64;
            w.u32(0);
            fattr(&mut w, size);
        }
        (100003, 3) => {
            w.u32(0).opaque(b"FILEFH00").u32(0).u32(0);
        }
        (100003, 19) => {
            let wtmax = st.lock().unwrap().wtmax;
            w.u32(0).u32(0);
            w.u32(1 << 20)
                .u32(1 << 20)
                .u32(1)
                .u32(wtmax)
                .u32(wtmax)
                .u32(1)
                .u32(4096);
            w.u64(u64::MAX).u32(0).u32(1).u32(0x1b);
        }
        (100003, 6) => {
            let _fh = c.opaque();
            let off = c.u64() as usize;
            let count = c.u32() as usize;
            let delay = st.lock().unwrap().read_delay_ms;
            std::thread::sleep(Duration::from_millis(delay));
            let mut s = st.lock().unwrap();
            if s.silent_reads > 0 {
                s.silent_reads -= 1;
                return None;
            }
            let hold = std::mem::take(&mut s.hold_next_read_ms);
            if s.jukebox_reads > 0 {
                s.jukebox_reads -= 1;
                w.u32(10008).u32(0);
            } else {
                let end = (off + count).min(s.data.len());
                let d = s.data[off.min(end)..end].to_vec();
                w.u32(0)
                    .u32(0)
                    .u32(d.len() as u32)
                    .u32((end == s.data.len()) as u32)
                    .opaque(&d);
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(hold));
        }
        (100003, 7) => {
            let _fh = c.opaque();
            let off = c.u64() as usize;
            let _count = c.u32();
            let stable = c.u32();
            let d = c.opaque();
            let delay = std::mem::take(&mut st.lock().unwrap().delay_next_write_ms);
            std::thread::sleep(Duration::from_millis(delay));
            let mut s = st.lock().unwrap();
            s.writes += 1;
            s.data[off..off + d.len()].copy_from_slice(&d);
            let committed = if stable == 2 || s.filesync_all {
                s.filesync_writes += 1;
                if s.unstable_on_filesync {
                    0 // faulty: not made durable, answered UNSTABLE
                } else {
                    s.durable[off..off + d.len()].copy_from_slice(&d);
                    2
                }
            } else {
                0
            };
            w.u32(0)
                .u32(0)
                .u32(0)
                .u32(d.len() as u32)
                .u32(committed)
                .u64(s.verf);
        }
        (100003, 21) => {
            let delay = st.lock().unwrap().commit_delay_ms;
            std::thread::sleep(Duration::from_millis(delay));
            let mut s = st.lock().unwrap();
            s.commits += 1;
            if s.commits_fail {
                w.u32(5).u32(0).u32(0); // NFS3ERR_IO, no attributes either side
            } else {
                s.durable = s.data.clone();
                w.u32(0).u32(0).u32(0).u64(s.verf);
            }
        }
        _ => panic!("fake server: unexpected prog {prog} proc {proc_}"),
    }
    Some(w.0)
}

fn serve_conn(st: Arc<Mutex<State>>, mut s: TcpStream) {
    loop {
        let mut h = [0u8; 4];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        let len = (u32::from_be_bytes(h) & 0x7fff_ffff) as usize;
        let mut msg = vec![0u8; len];
        if s.read_exact(&mut msg).is_err() {
            return;
        }
        let huge = st.lock().unwrap().huge_read_reply;
        if huge > 0 && msg.len() > 24 && u32::from_be_bytes(msg[20..24].try_into().unwrap()) == 6 {
            // A reply record claiming `huge` bytes, then that many bytes of junk.
            let _ = s.write_all(&(huge as u32 | 0x8000_0000).to_be_bytes());
            let junk = vec![0xffu8; 1 << 20];
            for _ in 0..huge >> 20 {
                if s.write_all(&junk).is_err() {
                    return;
                }
            }
            continue;
        }
        let Some(body) = handle(&st, &msg) else {
            continue;
        };
        let mut out = Vec::new();
        if st.lock().unwrap().fragment_replies && body.len() > 8 {
            // Two record fragments (RFC 5531 section 11): legal record marking.
            let (a, b) = body.split_at(8);
            out.extend_from_slice(&(a.len() as u32).to_be_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(&(b.len() as u32 | 0x8000_0000).to_be_bytes());
            out.extend_from_slice(b);
        } else {
            out.extend_from_slice(&(body.len() as u32 | 0x8000_0000).to_be_bytes());
            out.extend_from_slice(&body);
        }
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

impl Fake {
    pub fn start(size: usize) -> Fake {
        let st = Arc::new(Mutex::new(State {
            data: vec![0; size],
            durable: vec![0; size],
            verf: 1,
            wtmax: 1 << 20,
            ..State::default()
        }));
        Self::listen(st, 0)
    }

    fn listen(st: Arc<Mutex<State>>, port: u16) -> Fake {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (st2, stop2, conns2) = (st.clone(), stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        conns2.lock().unwrap().push(s.try_clone().unwrap());
                        st2.lock().unwrap().conns_opened += 1;
                        let st3 = st2.clone();
                        std::thread::spawn(move || serve_conn(st3, s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Fake {
            st,
            port,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("nfs://127.0.0.1:{}/export/file", self.port)
    }

    /// Closes the listener and every connection, as a process exit would.
    pub fn stop(mut self) -> Arc<Mutex<State>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.st.clone()
    }

    /// A crash and restart: unstable data lost, new verifier, connections closed, same port.
    pub fn crash_restart(self) -> Fake {
        let port = self.port;
        let st = self.stop();
        {
            let mut s = st.lock().unwrap();
            s.data = s.durable.clone();
            s.verf += 1;
        }
        Self::listen(st, port)
    }
}

/// A server that answers UNSTABLE to a FILE_SYNC resend (which RFC 1813 forbids) has not
/// made the data durable: the flush fails instead of returning Ok (it returned Ok, the data
/// not on stable storage).
#[test]
fn a_resend_answered_unstable_fails_the_flush() {
    let srv = Fake::start(1 << 20);
    srv.st.lock().unwrap().unstable_on_filesync = true;
    let disk = NfsDisk::connect(&srv.url(), false).unwrap();
    disk.write_at(0, b"hello").unwrap();
    let srv = srv.crash_restart();
    let err = disk.flush().expect_err("a flush whose data is not durable");
    assert!(err.to_string().contains("UNSTABLE"), "{err}");
    assert_ne!(&srv.st.lock().unwrap().durable[..5], b"hello");
}

/// After a crash that lost unstable writes, a read returns what the guest wrote, not the old
/// bytes (it returned the old bytes until the guest's next flush).
#[test]
fn a_read_after_a_crash_returns_the_lost_write() {
    let srv = Fake::start(1 << 20);
    let disk = NfsDisk::connect(&srv.url(), false).unwrap();
    disk.write_at(100, b"new data").unwrap();
    let srv = srv.crash_restart();
    let mut back = [0u8; 8];
    disk.read_at(100, &mut back).unwrap();
    assert_eq!(&back, b"new data");
    assert_eq!(
        &srv.st.lock().unwrap().durable[100..108],
        b"new data",
        "resent"
    );
}

/// A server down for a second (a restart) is waited for (the request failed after 0.6 s).
#[test]
fn a_server_back_within_the_retry_window_is_waited_for() {
    let srv = Fake::start(1 << 20);
    let port = srv.port;
    let disk = NfsDisk::connect(&srv.url(), false).unwrap();
    let st = srv.stop();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        Fake::listen(st, port)
    });
    let mut b = [0u8; 8];
    let r = disk.read_at(0, &mut b);
    let _srv = back.join().unwrap();
    r.unwrap();
}

/// After a restart every pooled connection is dead: the request replaces them and succeeds
/// (each try took one, and three dead ones failed the request with the server up).
#[test]
fn idle_connections_the_server_closed_are_replaced() {
    let srv = Fake::start(8 << 20);
    srv.st.lock().unwrap().read_delay_ms = 300;
    let disk = Arc::new(NfsDisk::connect(&srv.url(), false).unwrap());
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let d = disk.clone();
            std::thread::spawn(move || {
                let mut b = vec![0u8; 4096];
                d.read_at(i * 4096, &mut b).unwrap();
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let srv = srv.crash_restart();
    srv.st.lock().unwrap().read_delay_ms = 0;
    let t = Instant::now();
    let mut b = [0u8; 8];
    disk.read_at(0, &mut b).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "no pauses: {:?}",
        t.elapsed()
    );
}

/// NFS3ERR_JUKEBOX ("try again later") is retried (it failed the request).
#[test]
fn jukebox_is_retried() {
    let srv = Fake::start(1 << 20);
    let disk = NfsDisk::connect(&srv.url(), false).unwrap();
    srv.st.lock().unwrap().data[..4].copy_from_slice(b"data");
    srv.st.lock().unwrap().jukebox_reads = 2;
    let mut b = [0u8; 4];
    disk.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"data");
}

/// A reply in several record fragments (legal record marking) is joined (it was refused).
#[test]
fn a_fragmented_reply_is_joined() {
    let srv = Fake::start(1 << 20);
    let disk = NfsDisk::connect(&srv.url(), false).unwrap();
    srv.st.lock().unwrap().data[10..14].copy_from_slice(b"frag");
    srv.st.lock().unwrap().fragment_replies = true;
    let mut b = [0u8; 4];
    disk.read_at(10, &mut b).unwrap();
    assert_eq!(&b, b"frag");
    disk.write_at(20, b"more").unwrap();
    disk.flush().unwrap();
}

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A reply record claiming 1 GiB is refused before anything is allocated for it (the 1 GiB
/// was allocated and read whole before it was found to be garbage).
#[test]
fn a_gigantic_reply_record_is_refused() {
    let srv = Fake::start(1 << 20);
    let disk = NfsDisk::connect(&srv.url(), false).unwrap();
    srv.st.lock().unwrap().huge_read_reply = 1 << 30;
    let before = vm_hwm_kib();
    let mut b = [0u8; 512];
    let err = disk
        .read_at(0, &mut b)
        .expect_err("a 1 GiB reply to a 512-byte READ");
    let grew = vm_hwm_kib() - before;
    assert!(grew < 64 << 10, "peak memory grew by {} MiB", grew >> 10);
    assert!(
        format!("{err:?}").contains("more than any reply holds"),
        "{err:?}"
    );
}

/// A portmapper that accepts connections and never answers fails the connect in seconds (it
/// waited forever). Needs root for port 111 of 127.0.0.2.
#[test]
fn a_silent_portmapper_fails_the_connect() {
    let Ok(l) = TcpListener::bind("127.0.0.2:111") else {
        eprintln!("SKIP a_silent_portmapper_fails_the_connect: cannot listen on 127.0.0.2:111 (not root?)");
        return;
    };
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.push(s); // read nothing, answer nothing
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = NfsDisk::connect("nfs://127.0.0.2/export/file", false).map(|_| ());
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("connect still waiting after 30 s");
    let err = r.expect_err("no portmapper answer");
    assert!(err.to_string().contains("portmapper"), "{err}");
}

/// A WRITE the server leaves unanswered past the timeout is not sent again, and the disk takes
/// no more writes: the server may still carry it out. (It was resent, the guest wrote newer
/// bytes over it, and the stalled first WRITE then landed over those.)
#[test]
fn an_unanswered_write_is_not_resent_and_stops_writes() {
    let srv = Fake::start(1 << 20);
    let options = NfsOptions {
        rpc_timeout: Duration::from_secs(1),
        ..NfsOptions::default()
    };
    let disk = NfsDisk::connect_with(&srv.url(), false, options).unwrap();
    srv.st.lock().unwrap().delay_next_write_ms = 3000;
    let err = disk.write_at(0, b"first").expect_err("no reply in time");
    assert!(err.to_string().contains("reopen"), "{err}");
    let err = disk
        .write_at(0, b"NEWER")
        .expect_err("no writes after that");
    assert!(err.to_string().contains("reopen"), "{err}");
    assert!(disk.flush().is_err(), "nor a flush");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(srv.st.lock().unwrap().writes, 1, "the WRITE went out once");
    let mut b = [0u8; 5];
    disk.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"first", "reads go on");
}

/// With every COMMIT failing, the copies kept for a resend stay bounded: past twice
/// `REPLAY_MAX` a write is refused before it goes out (each failed flush put its copies back,
/// and they grew with every write).
#[test]
fn kept_copies_stay_bounded_while_commits_fail() {
    let srv = Fake::start(4 << 20);
    srv.st.lock().unwrap().commits_fail = true;
    let disk = NfsDisk::connect(&srv.url(), false).unwrap();
    let chunk = vec![0x5au8; 4 << 20];
    for _ in 0..48 {
        let _ = disk.write_at(0, &chunk);
    }
    let sent = srv.st.lock().unwrap().writes as usize * (1 << 20);
    let bound = 2 * nfs::REPLAY_MAX + chunk.len();
    assert!(
        sent <= bound + (1 << 20),
        "{} MiB went out and was kept",
        sent >> 20
    );
    assert!(
        disk.write_at(0, &chunk).is_err(),
        "writes fail while COMMITs do"
    );
}

/// A read while a flush's COMMIT is out, after a crash that lost a kept write, waits for the
/// flush to resend it and returns it (it returned the old bytes: the flush had taken the
/// copies, so the read saw nothing kept).
#[test]
fn a_read_during_a_flush_after_a_crash_returns_the_lost_write() {
    let srv = Fake::start(1 << 20);
    let disk = Arc::new(NfsDisk::connect(&srv.url(), false).unwrap());
    disk.write_at(100, b"new data").unwrap();
    let srv = srv.crash_restart();
    srv.st.lock().unwrap().commit_delay_ms = 1500;
    let d = disk.clone();
    let flusher = std::thread::spawn(move || d.flush());
    std::thread::sleep(Duration::from_millis(500));
    let mut back = [0u8; 8];
    disk.read_at(100, &mut back).unwrap();
    flusher.join().unwrap().unwrap();
    assert_eq!(&back, b"new data");
}

/// Two readers after a crash: the one whose READ was answered before the resend, but came
/// back after another reader had checked, still returns the lost write (it returned the old
/// bytes: the failure counted as checked by then).
#[test]
fn a_slow_reader_after_a_crash_returns_the_lost_write() {
    let srv = Fake::start(1 << 20);
    let disk = Arc::new(NfsDisk::connect(&srv.url(), false).unwrap());
    disk.write_at(100, b"new data").unwrap();
    let srv = srv.crash_restart();
    srv.st.lock().unwrap().hold_next_read_ms = 1500;
    let d = disk.clone();
    let slow = std::thread::spawn(move || {
        let mut b = [0u8; 8];
        d.read_at(100, &mut b).map(|_| b)
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut fast = [0u8; 8];
    disk.read_at(100, &mut fast).unwrap();
    assert_eq!(&fast, b"new data");
    assert_eq!(&slow.join().unwrap().unwrap(), b"new data");
}

/// A write answered FILE_SYNC while a flush's COMMIT is out is not overwritten when that
/// flush finds the verifier changed and resends its older copy (it was).
#[test]
fn a_stable_write_during_a_flush_is_not_overwritten_by_its_resend() {
    let srv = Fake::start(1 << 20);
    let disk = Arc::new(NfsDisk::connect(&srv.url(), false).unwrap());
    disk.write_at(0, b"old!").unwrap();
    let srv = srv.crash_restart();
    {
        let mut s = srv.st.lock().unwrap();
        s.commit_delay_ms = 1500;
        s.filesync_all = true;
    }
    let d = disk.clone();
    let flusher = std::thread::spawn(move || d.flush());
    std::thread::sleep(Duration::from_millis(500));
    disk.write_at(0, b"NEW!").unwrap();
    flusher.join().unwrap().unwrap();
    assert_eq!(&srv.st.lock().unwrap().durable[..4], b"NEW!");
    let mut back = [0u8; 4];
    disk.read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"NEW!");
}

/// After an abandoned WRITE, reads go on also where writes are kept, as long as the server
/// did not lose them (every read failed: the check flushed, which the disk refuses).
#[test]
fn reads_go_on_after_an_abandoned_write_with_writes_kept() {
    let srv = Fake::start(1 << 20);
    let options = NfsOptions {
        rpc_timeout: Duration::from_secs(1),
        ..NfsOptions::default()
    };
    let disk = NfsDisk::connect_with(&srv.url(), false, options).unwrap();
    disk.write_at(0, b"kept").unwrap();
    srv.st.lock().unwrap().delay_next_write_ms = 3000;
    disk.write_at(4096, b"stalled")
        .expect_err("no reply in time");
    std::thread::sleep(Duration::from_secs(3));
    let mut b = [0u8; 4];
    disk.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"kept");
    // Lost by a crash, they can no longer be resent: reads say so.
    let _srv = srv.crash_restart();
    let err = disk
        .read_at(0, &mut b)
        .expect_err("the server lost a kept write");
    assert!(err.to_string().contains("reopen"), "{err}");
}

/// A READ left unanswered is sent once more even when the timeout is longer than the retry
/// window (as with the defaults, 60 s against 30 s: it never was).
#[test]
fn an_unanswered_read_is_sent_again() {
    let srv = Fake::start(1 << 20);
    let options = NfsOptions {
        rpc_timeout: Duration::from_secs(2),
        retry_window: Duration::from_secs(1),
    };
    let disk = NfsDisk::connect_with(&srv.url(), false, options).unwrap();
    srv.st.lock().unwrap().data[..4].copy_from_slice(b"read");
    srv.st.lock().unwrap().silent_reads = 1;
    let mut b = [0u8; 4];
    disk.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"read");
}
