//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) for a hardware-reduced x86 machine: the
//! DSDT declares each virtio-mmio device (`_HID "LNRO0005"`) with its window and GSI, so a
//! stock kernel whose virtio_mmio driver cannot take devices from the command line finds them.

use crate::error::{Error, Result};
use crate::layout;
use acpi_tables::{aml, fadt, gas, madt, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const OEM_ID: [u8; 6] = *b"TARN  ";
const OEM_TABLE: [u8; 8] = *b"TARNVMM ";

/// A virtio-mmio device as ACPI declares it.
#[derive(Clone, Copy, Debug)]
pub struct MmioDeviceInfo {
    /// Window base.
    pub addr: u64,
    /// Window length.
    pub len: u64,
    /// GSI.
    pub irq: u32,
}

/// The DSDT's AML body: `_S5_` at the root, and one `VRxx` device per virtio-mmio window
/// in `\_SB_`.
pub fn dsdt_aml(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut out = Vec::new();
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&layout::ACPI_S5_TYPE]),
    )
    .to_aml_bytes(&mut out);
    let mut devs = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let name = format!("VR{i:02X}");
        let uid = i as u32;
        let mem = aml::Memory32Fixed::new(true, d.addr as u32, d.len as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.irq);
        let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut devs);
    }
    // COM1, so that the kernel maps its IRQ: a hardware-reduced machine has no legacy PIC,
    // so ISA IRQs exist only where ACPI declares a device using them (the legacy 8250 probe
    // alone finds the port but cannot request IRQ 4, and ttyS0 then fails every write).
    let port = layout::SERIAL_PORT;
    let io = aml::IO::new(port, port, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, layout::SERIAL_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u32),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut devs);
    aml::Scope::new("\\_SB_".into(), vec![&RawAml(&devs)]).to_aml_bytes(&mut out);
    out
}

/// FADT `IAPC_BOOT_ARCH`: no VGA.
const IAPC_NO_VGA: u16 = 1 << 2;
/// FADT `IAPC_BOOT_ARCH`: no CMOS RTC.
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// Appends an interrupt source override for the serial IRQ (ISA IRQ 4 -> GSI 4, edge, active
/// high) to a serialised MADT and fixes its length and checksum.
///
/// A hardware-reduced ACPI machine has no legacy PIC, so the kernel sets up no ISA IRQ
/// mapping by itself; this entry states COM1's (as cloud-hypervisor's MADT does). It is not
/// enough alone: the kernel allocates IRQ 4 only for a device ACPI declares (`COM1` in the
/// DSDT); without that, ttyS0 cannot get its IRQ, /dev/console fails every write and init's
/// output is lost while kernel messages (polled out) still appear. acpi_tables 0.2 has no
/// type for this entry.
fn with_serial_override(mut madt: Vec<u8>) -> Vec<u8> {
    let irq = layout::SERIAL_IRQ as u8;
    madt.extend_from_slice(&[2, 10, 0, irq]); // type, length, bus (ISA), source IRQ
    madt.extend_from_slice(&layout::SERIAL_IRQ.to_le_bytes()); // GSI
    madt.extend_from_slice(&0u16.to_le_bytes()); // flags: conforms to the bus
    let len = madt.len() as u32;
    madt[4..8].copy_from_slice(&len.to_le_bytes());
    madt[9] = 0;
    let sum = madt.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    madt[9] = sum.wrapping_neg();
    madt
}

/// Pre-serialised AML.
struct RawAml<'a>(&'a [u8]);

impl Aml for RawAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.0);
    }
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Writes all tables into guest memory at [`layout::ACPI_START`]; returns the RSDP address.
pub fn create_tables(mem: &GuestMemoryMmap, cpus: u8, devices: &[MmioDeviceInfo]) -> Result<u64> {
    let rsdp_addr = layout::ACPI_START;
    let mut next = rsdp_addr + 64;
    let mut place = |data: &[u8]| -> Result<u64> {
        let at = next;
        if at + data.len() as u64 > layout::ACPI_END {
            return Err(Error::InvalidConfig("ACPI tables do not fit".into()));
        }
        mem.write_slice(data, GuestAddress(at))
            .map_err(|e| Error::Memory(format!("writing ACPI tables: {e}")))?;
        next = (at + data.len() as u64 + 15) & !15;
        Ok(at)
    };

    // DSDT
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    dsdt.append_slice(&dsdt_aml(devices));
    let dsdt_addr = place(dsdt.as_slice())?;

    // FADT: hardware-reduced, sleep/reset through one I/O port.
    let port = u64::from(layout::ACPI_PM_PORT);
    let mut f = fadt::FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .dsdt_64(dsdt_addr)
        .flag(fadt::Flags::HwReducedAcpi)
        .flag(fadt::Flags::ResetRegSup)
        .flag(fadt::Flags::PwrButton)
        .flag(fadt::Flags::SlpButton);
    let io = |w| {
        gas::GAS::new(
            gas::AddressSpace::SystemIo,
            w,
            0,
            gas::AccessSize::ByteAccess,
            port,
        )
    };
    f.reset_reg = io(8);
    f.reset_value = layout::ACPI_RESET_VALUE;
    f.sleep_control_reg = io(8);
    f.sleep_status_reg = io(8);
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"TARNVMM\0").into();
    // No CMOS RTC (else the kernel's rtc_cmos probe polls ports 0x70/0x71 for seconds), no
    // VGA; the 8042 bit stays clear (no PS/2 controller).
    f.iapc_boot_arch = (IAPC_NO_CMOS_RTC | IAPC_NO_VGA).into();
    let fadt_addr = place(&bytes(&f.finalize()))?;

    // MADT
    let mut m = madt::MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        madt::LocalInterruptController::Address(layout::LAPIC_ADDR as u32),
    );
    for i in 0..cpus {
        m.add_structure(madt::ProcessorLocalApic::new(
            i,
            i,
            madt::EnabledStatus::Enabled,
        ));
    }
    m.add_structure(madt::IoApic::new(cpus, layout::IOAPIC_ADDR as u32, 0));
    let madt = with_serial_override(bytes(&m));
    let madt_addr = place(&madt)?;

    let mut x = XSDT::new(OEM_ID, OEM_TABLE, 1);
    x.add_entry(fadt_addr);
    x.add_entry(madt_addr);
    let xsdt_addr = place(&bytes(&x))?;

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    mem.write_slice(&bytes(&rsdp), GuestAddress(rsdp_addr))
        .map_err(|e| Error::Memory(format!("writing the RSDP: {e}")))?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_checksum_and_declare_devices() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let devs = [
            MmioDeviceInfo {
                addr: layout::virtio_mmio_addr(0),
                len: 0x1000,
                irq: 5,
            },
            MmioDeviceInfo {
                addr: layout::virtio_mmio_addr(1),
                len: 0x1000,
                irq: 6,
            },
        ];
        let rsdp = create_tables(&mem, 2, &devs).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let read_table = |a: u64| {
            let mut h = [0u8; 8];
            mem.read_slice(&mut h, GuestAddress(a)).unwrap();
            let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0; len];
            mem.read_slice(&mut t, GuestAddress(a)).unwrap();
            assert_eq!(
                sum(&t),
                0,
                "checksum of {}",
                String::from_utf8_lossy(&t[..4])
            );
            t
        };
        let x = read_table(xsdt);
        let fadt = read_table(u64::from_le_bytes(x[36..44].try_into().unwrap()));
        assert_eq!(&fadt[..4], b"FACP");
        let madt = read_table(u64::from_le_bytes(x[44..52].try_into().unwrap()));
        assert_eq!(&madt[..4], b"APIC");
        // The serial IRQ's interrupt source override is the last entry.
        assert_eq!(&madt[madt.len() - 10..madt.len() - 6], &[2, 10, 0, 4]);
        let boot_arch = u16::from_le_bytes(fadt[109..111].try_into().unwrap());
        assert_eq!(boot_arch & IAPC_NO_CMOS_RTC, IAPC_NO_CMOS_RTC);
        let dsdt = read_table(u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!(&dsdt[..4], b"DSDT");
        let body = &dsdt[36..];
        let find = |pat: &[u8]| body.windows(pat.len()).filter(|w| *w == pat).count();
        assert_eq!(find(b"LNRO0005"), 2);
        assert_eq!(find(b"_S5_"), 1);
        assert_eq!(find(b"VR01"), 1);
    }
}
