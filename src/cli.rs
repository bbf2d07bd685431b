//! The command line: clap types only. Each group's behaviour lives in `commands/`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Parses a human size (`64M`, `1.5G`, `4096`) for clap.
fn size_arg(s: &str) -> Result<u64, String> {
    zvol::parse_size(s).map_err(|e| e.to_string())
}

/// Parses a block size: a human size that fits in 32 bits.
fn block_size_arg(s: &str) -> Result<u32, String> {
    let v = size_arg(s)?;
    u32::try_from(v).map_err(|_| format!("block size '{s}' is too large"))
}

/// Tarn: pools, volumes and (later) VMs on one host.
#[derive(Debug, Parser)]
#[command(name = "tarn", version, about, propagate_version = true)]
#[command(
    after_help = "Pools are remembered under $TARN_HOME (default /var/lib/tarn). \
Logging goes to stderr; set TARN_LOG (e.g. TARN_LOG=debug) to see more.\n\
Exit status: 0 on success, 1 when a command fails, 2 for malformed input (usage, names, sizes)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands (dataset verbs are top-level, as in zfs(8)).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, import, inspect, scrub and destroy pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Create, resize, import and export volumes.
    #[command(subcommand)]
    Vol(VolCommand),
    /// List datasets of every imported pool, or of one.
    List(ListArgs),
    /// Destroy a dataset and free its space.
    Destroy(DestroyArgs),
    /// Show dataset properties.
    Get(GetArgs),
    /// Set dataset properties (user properties, also on snapshots; volsize, refreservation).
    Set(SetArgs),
    /// Run virtual machines whose disks are volumes or raw files.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Export pools over NFSv3.
    #[command(subcommand)]
    Nfs(NfsCommand),
    /// Take snapshots `POOL/VOL@SNAP`, all at once (one txg, so they are consistent).
    Snapshot(SnapshotArgs),
    /// Create a writable volume from a snapshot, sharing every block.
    Clone(CloneArgs),
    /// Rename a volume within its pool (its snapshots follow it; clones of them keep them), or
    /// a snapshot within its volume.
    Rename(RenameArgs),
    /// Roll a volume back to a snapshot, discarding later changes.
    Rollback(RollbackArgs),
    /// Make a clone independent of its origin (it takes over the origin's older snapshots).
    Promote(PromoteArgs),
    /// Put a hold on snapshots: they cannot be destroyed until it is released.
    Hold(HoldArgs),
    /// Release a hold on snapshots.
    Release(HoldArgs),
    /// Show the byte ranges that changed since a snapshot.
    Diff(DiffArgs),
    /// Write a snapshot as a stream (full, incremental with -i, a package of every snapshot
    /// with -I or -R; -n: only its size) to stdout or a file.
    Send(SendArgs),
    /// Create a volume (or new snapshots of one) from a send stream on stdin or a file.
    #[command(alias = "receive")]
    Recv(RecvArgs),
}

/// `tarn pool ...`
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool in a new file (or on a block device) and import it.
    Create(PoolCreateArgs),
    /// Remember the pool in a file or block device so that commands can use it by name.
    Import(PoolImportArgs),
    /// Forget an imported pool (the pool itself is left as it is).
    Export(PoolNameArgs),
    /// List imported pools with their size and health.
    List(JsonArgs),
    /// Show a pool's size, space, txg, format version and errors.
    Status(PoolStatusArgs),
    /// Read and verify every allocated block; exit non-zero if any is damaged.
    Scrub(PoolStatusArgs),
    /// Give free space back to the file system under a pool file (punch holes), as
    /// `zpool trim`; freed space is otherwise kept and reused, which is faster.
    Trim(PoolStatusArgs),
    /// Destroy a pool: wipe its labels and uberblocks (a pool file is removed).
    Destroy(PoolNameArgs),
}

/// `tarn pool create`
#[derive(Debug, Args)]
pub struct PoolCreateArgs {
    /// Pool name (letters, digits, `_ . : -`; starts with a letter).
    pub name: String,
    /// Path of the new pool file, or an existing block device.
    pub path: PathBuf,
    /// Size of the new pool file (e.g. 10G); a block device's own size is used.
    #[arg(long, short = 's', value_parser = size_arg, allow_hyphen_values = true)]
    pub size: Option<u64>,
    /// Overwrite a block device that already holds a tarn pool.
    #[arg(long, short = 'f')]
    pub force: bool,
}

/// `tarn pool import`
#[derive(Debug, Args)]
pub struct PoolImportArgs {
    /// Pool file or block device.
    pub path: PathBuf,
}

/// A pool name.
#[derive(Debug, Args)]
pub struct PoolNameArgs {
    /// Pool name.
    pub name: String,
}

/// A pool name and an output format.
#[derive(Debug, Args)]
pub struct PoolStatusArgs {
    /// Pool name.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Only an output format.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Scripted mode: no header, tab-separated columns.
    #[arg(short = 'H')]
    pub scripted: bool,
    /// Exact numbers (bytes) instead of human sizes.
    #[arg(short = 'p')]
    pub parsable: bool,
}

/// `tarn list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// A pool, or a dataset (`POOL/NAME`: it and the datasets below it); all pools if absent.
    pub target: Option<String>,
    /// Dataset types to show: volume, filesystem, snapshot or all (comma-separated); default
    /// volume,filesystem, or snapshot when the target is a snapshot.
    #[arg(short = 't', long = "type")]
    pub types: Option<String>,
    /// Properties to show as columns (comma-separated), e.g. name,volsize,used,creation,com.example:owner.
    #[arg(short = 'o', long = "props")]
    pub props: Option<String>,
    /// Output format flags.
    #[command(flatten)]
    pub fmt: JsonArgs,
}

/// `tarn destroy`
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Dataset, `POOL/NAME` or `POOL/NAME@SNAP`.
    pub dataset: String,
    /// Destroy the volume's snapshots too (refused while they have clones).
    #[arg(short = 'r')]
    pub recursive: bool,
    /// Destroy snapshots and every clone of them, recursively.
    #[arg(short = 'R', conflicts_with = "recursive")]
    pub dependents: bool,
}

/// `tarn snapshot`
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Snapshots to take, `POOL/VOL@SNAP` (all in one pool).
    #[arg(required = true)]
    pub snapshots: Vec<String>,
}

/// `tarn clone`
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Origin snapshot, `POOL/VOL@SNAP`.
    pub snapshot: String,
    /// New volume, `POOL/NAME`.
    pub name: String,
    /// User properties of the clone, `KEY=VALUE` (repeatable).
    #[arg(long = "prop", short = 'o')]
    pub props: Vec<String>,
}

/// `tarn rename`
#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The volume, `POOL/NAME`, or snapshot, `POOL/NAME@SNAP`.
    pub from: String,
    /// Its new name: `POOL/NEW` (the same pool) for a volume; `POOL/NAME@NEW` or `@NEW` for a
    /// snapshot.
    pub to: String,
}

/// `tarn rollback`
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Snapshot to roll back to, `POOL/VOL@SNAP`.
    pub snapshot: String,
    /// Destroy newer snapshots first (refused while they have clones).
    #[arg(short = 'r')]
    pub recursive: bool,
    /// Destroy newer snapshots and their clones first.
    #[arg(short = 'R', conflicts_with = "recursive")]
    pub dependents: bool,
}

/// `tarn promote`
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Clone, `POOL/NAME`.
    pub clone: String,
}

/// `tarn hold` / `tarn release`
#[derive(Debug, Args)]
pub struct HoldArgs {
    /// Hold tag.
    pub tag: String,
    /// Snapshots, `POOL/VOL@SNAP`.
    #[arg(required = true)]
    pub snapshots: Vec<String>,
}

/// `tarn diff`
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Older snapshot, `POOL/VOL@A`.
    pub from: String,
    /// Later snapshot of the same volume, `POOL/VOL@B`; the live volume if absent.
    pub to: Option<String>,
    /// Output format flags.
    #[command(flatten)]
    pub fmt: JsonArgs,
}

/// `tarn send`
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Snapshot to send, `POOL/VOL@SNAP`.
    pub snapshot: String,
    /// Send only the changes since this older snapshot (`@OLDER` or `POOL/VOL@OLDER`).
    #[arg(short = 'i', conflicts_with_all = ["intermediates", "replicate"])]
    pub incremental: Option<String>,
    /// Send the changes since this older snapshot through every snapshot between, one
    /// incremental stream each, as one package (`recv` lands them all).
    #[arg(short = 'I', conflicts_with = "replicate")]
    pub intermediates: Option<String>,
    /// Send every snapshot of the volume up to SNAPSHOT: a full stream of the oldest, then
    /// incremental ones, as one package (`recv` recreates the volume with its snapshots).
    #[arg(short = 'R')]
    pub replicate: bool,
    /// Write nothing: print the size the stream would have (exact; no data is read).
    #[arg(short = 'n', conflicts_with = "file")]
    pub dry_run: bool,
    /// Write the stream to this file instead of stdout.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
}

/// `tarn recv`
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Target volume `POOL/NAME` (or `POOL/NAME@SNAP` to name the snapshot of a lone
    /// stream; a package from `send -I` or `-R` keeps its snapshots' names).
    pub name: String,
    /// For an incremental stream, discard changes made to the target since its base snapshot,
    /// and destroy its snapshots newer than the base (refused if one has clones or holds). For
    /// a package of streams, this applies to its first stream.
    #[arg(short = 'F')]
    pub force: bool,
    /// Read the stream from this file instead of stdin.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Print what was received.
    #[arg(short = 'v')]
    pub verbose: bool,
}

/// `tarn get`
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Property names (comma-separated), or `all`.
    pub props: String,
    /// Datasets, `POOL/NAME`.
    #[arg(required = true)]
    pub datasets: Vec<String>,
    /// Output format flags.
    #[command(flatten)]
    pub fmt: JsonArgs,
}

/// `tarn set`
#[derive(Debug, Args)]
pub struct SetArgs {
    /// `KEY=VALUE` pairs (an empty value removes a user property).
    #[arg(required = true, num_args = 1..)]
    pub assignments: Vec<String>,
    /// Dataset, `POOL/NAME` (or a snapshot, `POOL/NAME@SNAP`, for user properties).
    pub dataset: String,
}

/// `tarn vol ...`
#[derive(Debug, Subcommand)]
pub enum VolCommand {
    /// Create an empty volume: thin, or with --thick its whole size reserved.
    Create(VolCreateArgs),
    /// Grow (or, with --shrink, shrink) a volume.
    Resize(VolResizeArgs),
    /// Copy a raw image (file, block device, FIFO or `-` for stdin) into a volume.
    Import(VolImportArgs),
    /// Copy a volume out as a raw image (sparse where the volume reads zeroes).
    Export(VolExportArgs),
}

/// `tarn vol create`
#[derive(Debug, Args)]
pub struct VolCreateArgs {
    /// Volume, `POOL/NAME`.
    pub name: String,
    /// Size (e.g. 10G); rounded up to the block size.
    #[arg(long, short = 's', value_parser = size_arg, allow_hyphen_values = true)]
    pub size: u64,
    /// Block size, a power of two from 4K to 128K.
    #[arg(long, short = 'b', value_parser = block_size_arg, allow_hyphen_values = true,
          default_value_t = zvol::DEFAULT_BLOCK_SIZE)]
    pub block_size: u32,
    /// Initial user properties, `KEY=VALUE` (repeatable), and `refreservation=SIZE|auto`.
    #[arg(long = "prop", short = 'o')]
    pub props: Vec<String>,
    /// Guarantee the volume its whole size (`refreservation=auto`, as a ZFS volume created
    /// without `-s`): refused unless the pool can hold it; its writes never fail for space
    /// that other volumes took. Volumes are thin otherwise.
    #[arg(long)]
    pub thick: bool,
}

/// `tarn vol resize`
#[derive(Debug, Args)]
pub struct VolResizeArgs {
    /// Volume, `POOL/NAME`.
    pub name: String,
    /// New size; rounded up to the block size.
    #[arg(long, short = 's', value_parser = size_arg, allow_hyphen_values = true)]
    pub size: u64,
    /// Allow a smaller size (the data past it is discarded).
    #[arg(long)]
    pub shrink: bool,
}

/// `tarn vol import`
#[derive(Debug, Args)]
pub struct VolImportArgs {
    /// Raw image: a file, block device, FIFO, `-` for stdin, or an image another host serves,
    /// `nfs://HOST:PORT/POOL/VOL` (`tarn nfs serve`).
    pub file: PathBuf,
    /// Volume, `POOL/NAME`; created (sized to the file) if it does not exist.
    pub name: String,
    /// Block size when the volume is created (default as for `tarn vol create`).
    #[arg(long, short = 'b', value_parser = block_size_arg, allow_hyphen_values = true)]
    pub block_size: Option<u32>,
}

/// `tarn vol export`
#[derive(Debug, Args)]
pub struct VolExportArgs {
    /// Volume, `POOL/NAME`.
    pub name: String,
    /// Output: a file (replaced atomically), a block device, or `-` for stdout.
    pub file: PathBuf,
}

/// `tarn nfs ...`
#[derive(Debug, Subcommand)]
pub enum NfsCommand {
    /// Serve a pool over NFSv3 (MOUNT and portmapper on the same TCP port) until SIGINT/SIGTERM.
    ///
    /// Volumes are files holding their raw image, nested dataset names are directories.
    /// Clients mount `/POOL`, e.g. `nfs://HOST/POOL?version=3&nfsport=PORT&mountport=PORT`.
    Serve(NfsServeArgs),
}

/// `tarn nfs serve`
#[derive(Debug, Args)]
pub struct NfsServeArgs {
    /// Pool name.
    pub pool: String,
    /// Address (or host name) and port to listen on (port 0 picks a free one; the first line
    /// printed says which).
    #[arg(long, default_value = "127.0.0.1:2049", value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,
    /// Refuse every change.
    #[arg(long)]
    pub read_only: bool,
    /// Accept connections only from these addresses or CIDR ranges (repeatable); default: all.
    #[arg(long = "allow", value_parser = clap::value_parser!(nfs::Cidr))]
    pub allow: Vec<nfs::Cidr>,
    /// Make every WRITE durable before replying (FILE_SYNC), even unstable ones.
    ///
    /// By default an unstable WRITE is answered once its data is in the pool's open
    /// transaction group and COMMIT makes it durable; a restart changes the write verifier so
    /// clients resend. Use --sync for clients that ignore the verifier (libnfs 4.0's nfs-cp):
    /// slower, but no acknowledged write is ever lost.
    #[arg(long)]
    pub sync: bool,
    /// Connections served at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// Connections one client address may hold at once; more from it are closed as soon as
    /// they are accepted.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_per_client: u32,
    /// Seconds a connection may send no request before it is closed (clients reconnect).
    #[arg(long, default_value_t = 360, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,
}

/// `tarn vm ...`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a Linux kernel; exits 0 when the guest powers off, 10 when it reboots. SIGINT,
    /// SIGTERM or SIGHUP stops the guest (as if its power were cut: writes the VMM completed
    /// are kept), cleans up as at a power-off and exits 128 + the signal; a second one exits
    /// at once.
    Run(VmRunArgs),
}

/// `tarn vm run`
#[derive(Debug, Args)]
pub struct VmRunArgs {
    /// Linux bzImage or ELF vmlinux.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initramfs.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    pub cmdline: String,
    /// Number of vCPUs (1 to 32).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(vmm::config::MAX_CPUS)))]
    pub cpus: u8,
    /// Guest memory (e.g. 512M).
    #[arg(long, value_parser = size_arg, default_value = "512M")]
    pub mem: u64,
    /// A disk, `SPEC[,ro]` (repeatable, in vda, vdb... order): an absolute or `./` path is a
    /// raw file or block device, `nfs://HOST:PORT/POOL/VOL` an image another host serves
    /// (`tarn nfs serve`), anything else `POOL/VOL`.
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// Write the serial console to this file instead of stdout. Without it the guest also
    /// reads stdin: a terminal is put in raw mode (Ctrl-C goes to the guest; Ctrl-] stops it).
    #[arg(long)]
    pub console: Option<PathBuf>,
    /// Provision from an image: clone this snapshot (`POOL/VOL@SNAP`) and boot with the clone
    /// as the first disk.
    #[arg(long = "clone-from")]
    pub clone_from: Option<String>,
    /// Name of the clone, below the snapshot's pool (default: a generated `vm-…` name, printed).
    #[arg(long, requires = "clone_from")]
    pub name: Option<String>,
    /// Destroy the clone after the guest exits.
    #[arg(long, requires = "clone_from")]
    pub rm: bool,
}

/// `--listen`: `ADDRESS:PORT` or `HOST:PORT` (the host name's first IPv4 address, else its
/// first address: `localhost` is 127.0.0.1, as NFS clients mostly expect).
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s}: not ADDRESS:PORT or HOST:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s}: the host name has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn set_takes_pairs_then_dataset() {
        let cli = Cli::try_parse_from(["tarn", "set", "a=1", "b=2", "tank/v"]).expect("parses");
        match cli.command {
            Command::Set(s) => {
                assert_eq!(s.assignments, ["a=1", "b=2"]);
                assert_eq!(s.dataset, "tank/v");
            }
            other => panic!("{other:?}"),
        }
    }
}
