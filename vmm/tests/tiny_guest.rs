//! Tier 2: a tiny purpose-built guest (64-bit machine code, no kernel) on the host's
//! /dev/kvm drives a virtio-blk device through virtio-mmio — feature negotiation, queue
//! setup, ioeventfd kicks — writes a sector, reads it back, compares, prints the verdict on
//! the serial console and powers off through the ACPI sleep register.
//!
//! Skips (saying why) where /dev/kvm cannot be opened.

#![allow(clippy::unwrap_used)] // test helpers

mod common;

use common::Shared;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm::{build_raw, Console, DiskBackend, ExitStatus};
use zvol::{BlockBackend, RawFile, RawFileOptions};

const MMIO: u32 = 0xd000_0000;
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;
const HDR: u64 = 0x10_3000;
const WDATA: u64 = 0x10_4000;
const STATUS: u64 = 0x10_5000;
const RDATA: u64 = 0x10_6000;

/// Emits the guest's machine code.
struct Asm(Vec<u8>);

impl Asm {
    /// mov dword [rdi + reg], v   (rdi = the virtio-mmio window)
    fn reg(&mut self, reg: u32, v: u32) -> &mut Self {
        self.0.extend([0xc7, 0x87]);
        self.0.extend(reg.to_le_bytes());
        self.0.extend(v.to_le_bytes());
        self
    }
    /// mov word [abs32], v
    fn store16(&mut self, addr: u64, v: u16) -> &mut Self {
        self.0.extend([0x66, 0xc7, 0x04, 0x25]);
        self.0.extend((addr as u32).to_le_bytes());
        self.0.extend(v.to_le_bytes());
        self
    }
    /// spin until word [abs32] == v
    fn wait16(&mut self, addr: u64, v: u8) -> &mut Self {
        self.0.extend([0x66, 0x83, 0x3c, 0x25]);
        self.0.extend((addr as u32).to_le_bytes());
        self.0.extend([v, 0x75, 0xf5]); // cmp word [addr], v; jne back
        self
    }
}

fn guest_code() -> Vec<u8> {
    let mut a = Asm(Vec::new());
    a.0.extend([0xbf]); // mov edi, MMIO
    a.0.extend(MMIO.to_le_bytes());
    a.reg(0x70, 1).reg(0x70, 3); // STATUS: ACK, DRIVER
    a.reg(0x24, 1).reg(0x20, 1).reg(0x24, 0).reg(0x20, 0); // features: VERSION_1 only
    a.reg(0x70, 0xb); // FEATURES_OK
    a.reg(0x30, 0).reg(0x38, 8); // QUEUE_SEL 0, QUEUE_NUM 8
    a.reg(0x80, DESC as u32).reg(0x84, 0);
    a.reg(0x90, AVAIL as u32).reg(0x94, 0);
    a.reg(0xa0, USED as u32).reg(0xa4, 0);
    a.reg(0x44, 1).reg(0x70, 0xf); // QUEUE_READY, DRIVER_OK
    a.store16(AVAIL + 2, 1).reg(0x50, 0).wait16(USED + 2, 1); // write request
    a.store16(AVAIL + 2, 2).reg(0x50, 0).wait16(USED + 2, 2); // read request
                                                              // Both status bytes zero?
    a.0.extend([0x66, 0x83, 0x3c, 0x25]);
    a.0.extend((STATUS as u32).to_le_bytes());
    a.0.extend([0x00, 0x75, 0x14]); // jne fail (+20)
                                    // repe cmpsb over 512 bytes of WDATA vs RDATA
    a.0.push(0xbe);
    a.0.extend((WDATA as u32).to_le_bytes());
    a.0.push(0xbf);
    a.0.extend((RDATA as u32).to_le_bytes());
    a.0.extend([0xb9, 0x00, 0x02, 0x00, 0x00, 0xfc, 0xf3, 0xa6]); // mov ecx,512; cld; repe cmpsb
    a.0.extend([0x75, 0x04]); // jne fail
    a.0.extend([0xb0, b'O', 0xeb, 0x02]); // mov al,'O'; jmp out
    a.0.extend([0xb0, b'F']); // fail: mov al,'F'
    a.0.extend([0x66, 0xba, 0xf8, 0x03, 0xee]); // out: mov dx,0x3f8; out dx,al
    a.0.extend([0xb0, b'\n', 0xee]);
    a.0.extend([0xb0, 0x34, 0x66, 0xba, 0x00, 0x06, 0xee]); // ACPI S5: out 0x600, 0x34
    a.0.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    a.0
}

fn desc(mem: &vm_memory::GuestMemoryMmap, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(DESC + i * 16);
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
}

#[test]
fn tiny_guest_writes_and_reads_back_through_virtio_blk() {
    if !common::kvm_usable("tiny_guest (tier 2)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let opts = RawFileOptions {
        read_only: false,
        direct: false,
    };
    drop(RawFile::create(&path, 1 << 20, opts).unwrap());
    let backend: Arc<dyn BlockBackend> = Arc::new(RawFile::open(&path, opts).unwrap());
    let out = Shared::default();
    let vmm = build_raw(
        &guest_code(),
        64 << 20,
        vec![DiskBackend {
            backend: backend.clone(),
            read_only: false,
        }],
        Console::Writer(Box::new(out.clone())),
    )
    .unwrap();
    let mem = vmm.memory();
    // Two chains: write WDATA to sector 1; read sector 1 into RDATA.
    desc(mem, 0, HDR, 16, 1, 1);
    desc(mem, 1, WDATA, 512, 1, 2);
    desc(mem, 2, STATUS, 1, 2, 0);
    desc(mem, 3, HDR + 0x100, 16, 1, 4);
    desc(mem, 4, RDATA, 512, 3, 5);
    desc(mem, 5, STATUS + 1, 1, 2, 0);
    mem.write_obj(1u32, GuestAddress(HDR)).unwrap(); // OUT
    mem.write_obj(1u64, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 0x100)).unwrap(); // IN
    mem.write_obj(1u64, GuestAddress(HDR + 0x108)).unwrap();
    let pattern: Vec<u8> = (0..512u32).map(|i| (i * 13 + 7) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(WDATA)).unwrap();
    mem.write_obj(0xffffu16, GuestAddress(STATUS)).unwrap();
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    mem.write_obj(3u16, GuestAddress(AVAIL + 6)).unwrap();
    let t = std::time::Instant::now();
    let report = vmm.run().unwrap();
    let console = String::from_utf8_lossy(&out.0.lock().unwrap()).to_string();
    eprintln!(
        "tiny guest: {:?} in {:.1} ms, exits total/pio/mmio = {:?}, console {console:?}",
        report.status,
        t.elapsed().as_secs_f64() * 1e3,
        report.exits
    );
    assert_eq!(report.status, ExitStatus::PowerOff);
    assert_eq!(console, "O\n");
    let mut got = vec![0; 512];
    backend.read_at(512, &mut got).unwrap();
    assert_eq!(got, pattern);
}
