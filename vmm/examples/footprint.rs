//! VMM memory footprint (issue 5, "Speed"; target <= 4 MiB): runs a tiny guest with `MIB`
//! MiB of RAM (first argument, default 256) and one virtio-blk disk on a raw file in
//! `/var/tmp`. The guest writes a sector through the disk (so the device's queue thread and
//! workers are running) and then spins on a mailbox word; meanwhile this process reads its
//! own `/proc/self/smaps`, sums `Private_Clean + Private_Dirty` of every mapping except guest
//! memory, prints it, and opens the mailbox so that the guest powers off.
//!
//! `cargo run --release -p vmm --example footprint [MIB]` on a host with a usable /dev/kvm.

#![allow(clippy::unwrap_used)] // an example: fail loudly

use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm::{build_raw, Console, DiskBackend};
use zvol::{BlockBackend, RawFile, RawFileOptions};

const MMIO: u32 = 0xd000_0000;
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;
const HDR: u64 = 0x10_3000;
const DATA: u64 = 0x10_4000;
const STATUS: u64 = 0x10_5000;
const MAILBOX: u64 = 0x10_6000;

/// The guest: sets up the device (VERSION_1 only) and a queue of 8, submits the one chain the
/// host prepared, waits for it, spins until the mailbox reads 1, then ACPI S5.
fn guest_code() -> Vec<u8> {
    let mut c = vec![0xbf]; // mov edi, MMIO
    c.extend(MMIO.to_le_bytes());
    let reg = |c: &mut Vec<u8>, reg: u32, v: u32| {
        c.extend([0xc7, 0x87]); // mov dword [rdi + reg], v
        c.extend(reg.to_le_bytes());
        c.extend(v.to_le_bytes());
    };
    for (r, v) in [
        (0x70, 1), // STATUS: ACKNOWLEDGE
        (0x70, 3), // DRIVER
        (0x24, 1), // DRIVER_FEATURES_SEL 1
        (0x20, 1), // VERSION_1
        (0x24, 0),
        (0x20, 0),
        (0x70, 0xb), // FEATURES_OK
        (0x30, 0),   // QUEUE_SEL
        (0x38, 8),   // QUEUE_NUM
        (0x80, DESC as u32),
        (0x84, 0),
        (0x90, AVAIL as u32),
        (0x94, 0),
        (0xa0, USED as u32),
        (0xa4, 0),
        (0x44, 1),   // QUEUE_READY
        (0x70, 0xf), // DRIVER_OK
    ] {
        reg(&mut c, r, v);
    }
    let wait16 = |c: &mut Vec<u8>, addr: u64, v: u8| {
        c.extend([0x66, 0x83, 0x3c, 0x25]); // cmp word [addr], v; jne back
        c.extend((addr as u32).to_le_bytes());
        c.extend([v, 0x75, 0xf5]);
    };
    c.extend([0x66, 0xc7, 0x04, 0x25]); // mov word [AVAIL + 2], 1
    c.extend(((AVAIL + 2) as u32).to_le_bytes());
    c.extend(1u16.to_le_bytes());
    reg(&mut c, 0x50, 0); // QUEUE_NOTIFY
    wait16(&mut c, USED + 2, 1);
    wait16(&mut c, MAILBOX, 1);
    c.extend([0xb0, 0x34, 0x66, 0xba, 0x00, 0x06, 0xee]); // ACPI S5: out 0x600, 0x34
    c.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    c
}

fn desc(mem: &GuestMemoryMmap, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let at = DESC + i * 16;
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at + 14)).unwrap();
}

/// Private kB of one mapping in smaps.
struct Mapping {
    name: String,
    start: u64,
    end: u64,
    private_kb: u64,
}

fn smaps() -> Vec<Mapping> {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((s, e)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) {
                let name = f.nth(4).unwrap_or("[anon]").to_string();
                maps.push(Mapping {
                    name,
                    start,
                    end,
                    private_kb: 0,
                });
                continue;
            }
        }
        if first == "Private_Clean:" || first == "Private_Dirty:" {
            let kb: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some(m) = maps.last_mut() {
                m.private_kb += kb;
            }
        }
    }
    maps
}

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(256);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = dir.path().join("disk.img");
    let opts = RawFileOptions {
        read_only: false,
        direct: false,
    };
    drop(RawFile::create(&path, 64 << 20, opts).unwrap());
    let backend: Arc<dyn BlockBackend> = Arc::new(RawFile::open(&path, opts).unwrap());
    let vmm = build_raw(
        &guest_code(),
        mib << 20,
        vec![DiskBackend {
            backend,
            read_only: false,
        }],
        Console::Stdout,
    )
    .unwrap();
    let mem = vmm.memory().clone();
    // One chain: write DATA to sector 1.
    desc(&mem, 0, HDR, 16, 1, 1);
    desc(&mem, 1, DATA, 512, 1, 2);
    desc(&mem, 2, STATUS, 1, 2, 0);
    mem.write_obj(1u32, GuestAddress(HDR)).unwrap(); // VIRTIO_BLK_T_OUT
    mem.write_obj(1u64, GuestAddress(HDR + 8)).unwrap();
    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();

    let guest: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| {
            let start = r.as_ptr() as u64;
            (start, start + r.len())
        })
        .collect();
    let measurer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != 1 {
            assert!(
                Instant::now() < deadline,
                "the guest's request never completed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        std::thread::sleep(Duration::from_millis(200));
        let maps = smaps();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        mem.write_obj(1u16, GuestAddress(MAILBOX)).unwrap();
        (maps, threads)
    });
    let report = vmm.run().unwrap();
    let (maps, threads) = measurer.join().unwrap();

    let is_guest = |m: &Mapping| guest.iter().any(|&(s, e)| m.start < e && s < m.end);
    let (mut guest_kb, mut anon_kb, mut file_kb) = (0, 0, 0);
    let mut vmm_maps: Vec<&Mapping> = Vec::new();
    for m in &maps {
        if is_guest(m) {
            guest_kb += m.private_kb;
        } else {
            if m.name.starts_with('/') {
                file_kb += m.private_kb;
            } else {
                anon_kb += m.private_kb;
            }
            vmm_maps.push(m);
        }
    }
    vmm_maps.sort_by_key(|m| std::cmp::Reverse(m.private_kb));
    println!(
        "footprint: {mib} MiB guest, 1 virtio-blk disk (raw file), {threads} threads, guest {:?}",
        report.status
    );
    println!("largest private mappings outside guest memory:");
    for m in vmm_maps.iter().take(8) {
        println!(
            "  {:>6} kB  {:x}-{:x} {}",
            m.private_kb, m.start, m.end, m.name
        );
    }
    let total = anon_kb + file_kb;
    println!("guest memory private:          {guest_kb:>6} kB (excluded)");
    println!("VMM private, anonymous:        {anon_kb:>6} kB");
    println!("VMM private, file-backed:      {file_kb:>6} kB (its own code and libraries)");
    println!(
        "VMM private outside guest RAM: {total:>6} kB = {:.2} MiB  (target <= 4 MiB: {})",
        total as f64 / 1024.0,
        if total <= 4096 { "met" } else { "MISSED" }
    );
}
