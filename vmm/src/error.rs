//! The vmm crate's error type.

/// Errors from building and running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel image could not be loaded.
    #[error("loading the kernel: {0}")]
    KernelLoad(String),
    /// A host file (kernel, initramfs, console) could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and on what.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration asks for something impossible.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The guest stopped in a way it cannot go on from (KVM could not run it, or a vCPU
    /// thread failed): a failure of the run, not of its configuration.
    #[error("the guest cannot run on: {0}")]
    GuestFailed(String),
    /// A virtqueue could not be used (bad addresses or sizes from the driver).
    #[error("virtqueue: {0}")]
    Queue(String),
    /// A virtio-blk request is malformed; the guest gets an error status.
    #[error("bad virtio-blk request: {0}")]
    BadRequest(String),
    /// The guest asked for something this device does not do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A block backend failed.
    #[error(transparent)]
    Backend(#[from] zvol::Error),
}

impl Error {
    /// An [`Error::Kvm`] for `what`.
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }

    /// An [`Error::Io`] for `what`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Result alias for the vmm crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
