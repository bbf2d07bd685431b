//! Imported pools, remembered under `$TARN_HOME/pools/NAME.json` (default `/var/lib/tarn`).
//!
//! One small JSON file per pool: its name, device path and GUID (so that a path that now holds
//! a different pool is refused), plus the last scrub's summary. Files are replaced atomically;
//! a new entry is linked into place so two racing imports of one name cannot both win.

use crate::error::{CliError, Result};
use pool::{Pool, PoolConfig};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the registry lives when `$TARN_HOME` is unset.
pub const DEFAULT_HOME: &str = "/var/lib/tarn";

/// The last scrub's outcome, shown by `tarn pool status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ScrubSummary {
    /// When it finished, seconds since the Unix epoch.
    pub finished: u64,
    /// Blocks verified.
    pub blocks: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Problems found.
    pub errors: u64,
}

/// One remembered pool.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PoolEntry {
    /// Pool name.
    pub name: String,
    /// Absolute path of the pool file or device.
    pub path: PathBuf,
    /// The pool's permanent identity.
    pub guid: u64,
    /// When it was imported (or created), seconds since the Unix epoch.
    #[serde(default)]
    pub imported: u64,
    /// The last scrub, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrub: Option<ScrubSummary>,
}

/// The registry directory.
pub struct Registry {
    home: PathBuf,
}

/// Short commands commit explicitly; no background sync thread.
pub fn short_config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    }
}

impl Registry {
    /// The registry at `$TARN_HOME` (or the default).
    pub fn from_env() -> Registry {
        let home = std::env::var_os("TARN_HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_HOME));
        Registry { home }
    }

    fn dir(&self) -> PathBuf {
        self.home.join("pools")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.json"))
    }

    /// The entry for `name`, if the pool is imported.
    pub fn get(&self, name: &str) -> Result<Option<PoolEntry>> {
        if pool::names::check_pool_name(name).is_err() {
            return Ok(None);
        }
        let path = self.file(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CliError::io(
                    format!("reading pool registry entry {}", path.display()),
                    e,
                ))
            }
        };
        let entry: PoolEntry = serde_json::from_str(&text).map_err(|e| {
            CliError::DamagedEntry(format!(
                "pool registry entry {} is damaged ({e}); `tarn pool export {name}` forgets it, \
                 then import the pool again",
                path.display()
            ))
        })?;
        Ok(Some(entry))
    }

    /// The entry for `name`, or an error telling how to import it.
    pub fn require(&self, name: &str) -> Result<PoolEntry> {
        pool::names::check_pool_name(name)?;
        self.get(name)?.ok_or_else(|| {
            CliError::Failed(format!(
                "pool {name} is not imported (see `tarn pool list`; import it with `tarn pool import PATH`)"
            ))
        })
    }

    /// Every entry, by name.
    pub fn list(&self) -> Result<Vec<PoolEntry>> {
        let dir = self.dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(CliError::io(
                    format!("reading the pool registry {}", dir.display()),
                    e,
                ))
            }
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| {
                CliError::io(format!("reading the pool registry {}", dir.display()), e)
            })?;
            let fname = ent.file_name();
            let Some(name) = fname.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            // One damaged entry must not hide the others (nor block `pool export` of it).
            match self.get(name) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => {}
                Err(e) => say!("tarn: warning: {}", e.one_line()),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn write_tmp(&self, entry: &PoolEntry) -> Result<PathBuf> {
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(|e| {
            CliError::io(
                format!(
                    "creating the pool registry {} (set TARN_HOME to use another directory)",
                    dir.display()
                ),
                e,
            )
        })?;
        let tmp = dir.join(format!(".{}.json.tmp.{}", entry.name, std::process::id()));
        let json = serde_json::to_vec_pretty(entry)
            .map_err(|e| CliError::Failed(format!("encoding the registry entry: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            CliError::io(format!("writing pool registry entry {}", tmp.display()), e)
        })?;
        Ok(tmp)
    }

    /// Checks that an entry for `entry` can be added (the registry writable, the name short
    /// enough for its files) by writing its temporary file and removing it: what `add` would
    /// do first. Creating a pool on a device calls this before formatting it, so that a
    /// registry that refuses the entry leaves the device as it was.
    pub fn check_addable(&self, entry: &PoolEntry) -> Result<()> {
        let tmp = self.write_tmp(entry)?;
        let _ = fs::remove_file(&tmp);
        if self.file(&entry.name).exists() {
            return Err(CliError::Failed(format!(
                "a pool named {} is already imported",
                entry.name
            )));
        }
        Ok(())
    }

    /// Adds `entry`; fails if a pool of its name is already imported.
    pub fn add(&self, entry: &PoolEntry) -> Result<()> {
        let tmp = self.write_tmp(entry)?;
        let dst = self.file(&entry.name);
        let linked = fs::hard_link(&tmp, &dst);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.dir());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(CliError::Failed(
                format!("a pool named {} is already imported", entry.name),
            )),
            Err(e) => Err(CliError::io(
                format!("writing pool registry entry {}", dst.display()),
                e,
            )),
        }
    }

    /// Replaces an existing entry.
    pub fn update(&self, entry: &PoolEntry) -> Result<()> {
        let tmp = self.write_tmp(entry)?;
        let dst = self.file(&entry.name);
        fs::rename(&tmp, &dst).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            CliError::io(format!("writing pool registry entry {}", dst.display()), e)
        })?;
        sync_dir(&self.dir());
        Ok(())
    }

    /// Forgets a pool.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.file(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CliError::io(
                format!("removing pool registry entry {}", path.display()),
                e,
            )),
        }
    }

    /// Opens an imported pool by name (locking it for this process) and checks that its path
    /// still holds the pool that was imported.
    pub fn open(&self, name: &str) -> Result<(Pool, PoolEntry)> {
        let entry = self.require(name)?;
        let pool = open_entry(&entry)?;
        Ok((pool, entry))
    }
}

/// Opens the pool an entry names for a short command, checking name and GUID.
pub fn open_entry(entry: &PoolEntry) -> Result<Pool> {
    open_entry_with(entry, short_config())
}

/// Opens the pool an entry names with `config`, checking name and GUID.
pub fn open_entry_with(entry: &PoolEntry, config: PoolConfig) -> Result<Pool> {
    let pool = match Pool::open_path(&entry.path, config) {
        Ok(pool) => pool,
        // The file moved or went away: say which pool, and how to point tarn at it again.
        Err(pool::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::Failed(format!(
                "pool {} was imported from {}, which no longer exists; if it moved, run `tarn \
                 pool export {}` and `tarn pool import NEWPATH`",
                entry.name,
                entry.path.display(),
                entry.name
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if pool.guid() != entry.guid || pool.name() != entry.name {
        return Err(CliError::Failed(format!(
            "{} now holds pool {} (guid {}), not the imported pool {} (guid {}); run `tarn pool export {}` and import the right device",
            entry.path.display(),
            pool.name(),
            pool.guid(),
            entry.name,
            entry.guid,
            entry.name
        )));
    }
    Ok(pool)
}

/// Makes a directory's entries durable (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
