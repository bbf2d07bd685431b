//! The CPUID a vCPU shows its guest: the host-supported leaves, with the hypervisor bit, the
//! vCPU's APIC ID wherever the guest reads it, and one consistent topology: `cpus` cores of
//! one thread each, in one package. The host's own topology leaves describe the host, not the
//! VM (Linux then finds vCPUs sharing APIC IDs, or SMT siblings that are not there), so they
//! are rewritten, as Firecracker and Cloud Hypervisor normalise them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Extended topology enumeration (Intel; AMD since Zen 2), and its v2.
const EXT_TOPOLOGY: [u32; 2] = [0xb, 0x1f];
/// AMD's TOPOEXT feature bit (leaf 0x8000_0001 ECX): leaf 0x8000_001E describes the topology.
const AMD_TOPOEXT: u32 = 1 << 22;
/// Leaf 0xB/0x1F level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits of an APIC ID that number `cpus` cores.
fn core_bits(cpus: u8) -> u32 {
    u32::from(cpus).next_power_of_two().trailing_zeros()
}

/// Rewrites the host-supported `cpuid` for vCPU `id` of `cpus`.
pub fn patch(cpuid: &mut CpuId, id: u8, cpus: u8) {
    let (id32, n) = (u32::from(id), u32::from(cpus));
    let shift = core_bits(cpus);
    let mut ext_topology = Vec::new();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // APIC ID, logical processors per package, HTT (more than one of them).
                e.ebx = (e.ebx & 0x0000_ffff) | (id32 << 24) | (n.min(255) << 16);
                e.edx = if cpus > 1 {
                    e.edx | 1 << 28
                } else {
                    e.edx & !(1 << 28)
                };
                e.ecx |= 1 << 31; // hypervisor
            }
            4 => {
                // Deterministic cache parameters: cores per package, and the threads sharing
                // each cache: one for a core's own L1 and L2, all of them for the L3.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | ((n - 1).min(63) << 26);
            }
            f if EXT_TOPOLOGY.contains(&f) => {
                ext_topology.push(f);
                let (eax, ebx, level) = match e.index {
                    0 => (0, 1, LEVEL_SMT),
                    1 => (shift, n, LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level << 8) | (e.index & 0xff);
                e.edx = id32;
            }
            0x8000_0001 => e.ecx &= !AMD_TOPOEXT,
            0x8000_0008 => {
                // AMD: ApicIdCoreIdSize and NC (cores in the package, minus one).
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (n - 1);
            }
            0x8000_001e => {
                e.eax = id32;
                e.ebx = 0;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    // A host that lists only subleaf 0 of a topology leaf gets the core level too.
    for f in ext_topology {
        let has = |i: u32| {
            cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == f && e.index == i)
        };
        if has(0) && !has(1) {
            let core = kvm_cpuid_entry2 {
                function: f,
                index: 1,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: n,
                ecx: (LEVEL_CORE << 8) | 1,
                edx: id32,
                ..Default::default()
            };
            if cpuid.push(core).is_err() {
                tracing::debug!(leaf = f, "no room for the core level of a topology leaf");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ecx,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .expect("leaf")
    }

    #[test]
    fn every_vcpu_gets_its_apic_id_and_one_topology() {
        // What this AMD host's KVM reports: TOPOEXT on, leaf 0xB subleaf 0 all zeros, leaf
        // 0x8000_001E all zeros, a host L3 shared by 16 threads.
        let host = [
            entry(1, 0, 0, 0),
            entry(4, 3, 3 << 5 | 15 << 14 | 7 << 26, 0),
            entry(0xb, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0x0040_0393),
            entry(0x8000_0008, 0, 0, 0x7007),
            entry(0x8000_001e, 0, 0, 0),
        ];
        for (id, cpus) in [(0u8, 1u8), (2, 3), (31, 32)] {
            let mut c = CpuId::from_entries(&host).expect("cpuid");
            patch(&mut c, id, cpus);
            let l1 = find(&c, 1, 0);
            assert_eq!(
                (l1.ebx >> 24, (l1.ebx >> 16) & 0xff),
                (id.into(), cpus.into())
            );
            assert_eq!(l1.edx >> 28 & 1, u32::from(cpus > 1));
            let (smt, core) = (find(&c, 0xb, 0), find(&c, 0xb, 1));
            assert_eq!(
                (smt.eax, smt.ebx, smt.ecx >> 8 & 0xff, smt.edx),
                (0, 1, 1, id.into())
            );
            assert_eq!(core.ebx, u32::from(cpus));
            assert_eq!(core.ecx >> 8 & 0xff, 2);
            assert!(1 << core.eax >= u32::from(cpus), "core shift {}", core.eax);
            assert_eq!(find(&c, 0x8000_0001, 0).ecx & AMD_TOPOEXT, 0);
            assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xff, u32::from(cpus) - 1);
            assert_eq!(find(&c, 0x8000_001e, 0).eax, u32::from(id));
            let l3 = find(&c, 4, 3);
            assert_eq!((l3.eax >> 14) & 0xfff, u32::from(cpus) - 1);
            assert_eq!(l3.eax >> 26, u32::from(cpus) - 1);
            assert_eq!(l3.eax & 0x3fff, 3 << 5, "cache type and level kept");
        }
    }
}
