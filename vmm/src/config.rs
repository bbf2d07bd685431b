//! What a user asks for: serde types, converted once (with validation) into live devices.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One disk, as the user names it. The VMM does not open it: the caller turns `source` into a
/// [`zvol::BlockBackend`] and hands it to [`crate::builder::build_linux`] as a
/// [`crate::builder::DiskBackend`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// `POOL/VOL`, or a path (absolute or `./`) to a raw file or block device.
    pub source: String,
    /// Expose the disk read-only (`VIRTIO_BLK_F_RO`).
    #[serde(default)]
    pub read_only: bool,
}

impl DiskConfig {
    /// Parses `SPEC[,ro]`.
    pub fn parse(spec: &str) -> crate::Result<DiskConfig> {
        let mut parts = spec.split(',');
        let source = parts.next().unwrap_or_default().to_string();
        if source.is_empty() {
            return Err(crate::Error::InvalidConfig(format!(
                "empty disk spec {spec:?}"
            )));
        }
        let mut read_only = false;
        for opt in parts {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                _ => {
                    return Err(crate::Error::InvalidConfig(format!(
                        "unknown disk option {opt:?} in {spec:?} (known: ro, rw)"
                    )))
                }
            }
        }
        Ok(DiskConfig { source, read_only })
    }

    /// Whether `source` names a host file or block device rather than a pool volume.
    pub fn is_path(&self) -> bool {
        self.source.starts_with('/') || self.source.starts_with("./")
    }
}

/// A whole VM, as the user asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Linux `bzImage` or ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Initramfs, if any.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (the VMM adds nothing but what its devices need).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs (1..=32).
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    /// Guest RAM in bytes.
    #[serde(default = "default_mem")]
    pub mem_size: u64,
    /// Disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Where the serial console goes: a file, or stdout when `None`.
    #[serde(default)]
    pub console: Option<PathBuf>,
}

fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".into()
}
fn default_cpus() -> u8 {
    1
}
fn default_mem() -> u64 {
    512 << 20
}

/// Largest vCPU count (one MADT entry and one APIC ID each; IDs stay below the IOAPIC's).
pub const MAX_CPUS: u8 = 32;
/// Smallest guest RAM accepted.
pub const MIN_MEM: u64 = 16 << 20;

impl VmConfig {
    /// A VM with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            cpus: default_cpus(),
            mem_size: default_mem(),
            disks: Vec::new(),
            console: None,
        }
    }

    /// Opens the kernel and the initramfs as [`crate::build_linux`] will, so that a missing
    /// or unreadable one is reported before the caller makes anything for the VM (a clone).
    pub fn check_images(&self) -> crate::Result<()> {
        crate::builder::open_image(&self.kernel, "kernel")?;
        if let Some(initrd) = &self.initrd {
            crate::builder::open_image(initrd, "initramfs")?;
        }
        Ok(())
    }

    /// Checks the numbers.
    pub fn validate(&self) -> crate::Result<()> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(crate::Error::InvalidConfig(format!(
                "{} vCPUs: must be 1..={MAX_CPUS}",
                self.cpus
            )));
        }
        if self.mem_size < MIN_MEM {
            return Err(crate::Error::InvalidConfig(format!(
                "{} bytes of memory: at least {MIN_MEM} needed",
                self.mem_size
            )));
        }
        if !self.mem_size.is_multiple_of(1 << 20) {
            return Err(crate::Error::InvalidConfig(format!(
                "{} bytes of memory: give a whole number of MiB (e.g. {}M)",
                self.mem_size,
                self.mem_size >> 20
            )));
        }
        // Guest RAM is mapped lazily, so any size maps; but past the host's memory KVM's
        // bookkeeping alone ate most of it (8T took 26 s and 18 GB to build, on a 23 GB host).
        if let Some(host) = host_memory().filter(|&h| self.mem_size > h) {
            return Err(crate::Error::InvalidConfig(format!(
                "{} MiB of memory: more than this host has ({} MiB); give the guest less memory",
                self.mem_size >> 20,
                host >> 20
            )));
        }
        if self.disks.len() > crate::layout::MAX_VIRTIO_DEVICES {
            return Err(crate::Error::InvalidConfig(format!(
                "{} disks: at most {}",
                self.disks.len(),
                crate::layout::MAX_VIRTIO_DEVICES
            )));
        }
        Ok(())
    }
}

/// The host's physical memory, bytes (`sysconf`), if it says.
fn host_memory() -> Option<u64> {
    // SAFETY: sysconf(3) reads no memory of ours.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (pages, size) = (u64::try_from(pages).ok()?, u64::try_from(size).ok()?);
    pages.checked_mul(size).filter(|&b| b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_beyond_the_host_is_refused() {
        let host = host_memory().expect("sysconf");
        let mut c = VmConfig::new("vmlinuz");
        c.mem_size = (host >> 20 << 20) + (1 << 30);
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("more than this host has"), "{e}");
        c.mem_size = 256 << 20;
        c.validate().unwrap();
    }

    #[test]
    fn disk_spec() {
        let d = DiskConfig::parse("/dev/sdb,ro").unwrap();
        assert!(d.read_only && d.is_path());
        let d = DiskConfig::parse("tank/vol").unwrap();
        assert!(!d.read_only && !d.is_path());
        assert!(DiskConfig::parse("tank/vol,bogus").is_err());
        assert!(DiskConfig::parse("").is_err());
    }
}
