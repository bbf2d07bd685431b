//! Administrative operations as serde request types executed against an open pool. The CLI
//! builds these today; a storage daemon's control API will accept the same types.

use crate::error::Result;
use crate::pool::{DatasetInfo, Pool, PoolInfo};
use crate::scrub::ScrubReport;
use crate::trim::TrimReport;
use std::collections::BTreeMap;

/// One request against an open pool.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a volume.
    CreateVolume {
        /// `POOL/NAME`.
        name: String,
        /// Size in bytes (rounded up to the block size).
        size: u64,
        /// Block size in bytes.
        block_size: u32,
        /// Initial user properties.
        #[serde(default)]
        props: BTreeMap<String, String>,
    },
    /// Resize a volume.
    ResizeVolume {
        /// `POOL/NAME`.
        name: String,
        /// New size in bytes.
        size: u64,
    },
    /// Destroy a dataset.
    Destroy {
        /// `POOL/NAME`.
        name: String,
    },
    /// Set (or, with an empty value, clear) user properties.
    SetProps {
        /// `POOL/NAME`.
        name: String,
        /// Key/value pairs.
        props: Vec<(String, String)>,
    },
    /// Describe datasets.
    List,
    /// Describe the pool.
    Status,
    /// Verify every block.
    Scrub,
    /// Punch free space out of a pool file.
    Trim,
}

/// What a request returns.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Response {
    /// Nothing to report.
    Done,
    /// One dataset.
    Dataset(DatasetInfo),
    /// Several datasets.
    Datasets(Vec<DatasetInfo>),
    /// The pool.
    Pool(PoolInfo),
    /// A scrub's findings.
    Scrub(ScrubReport),
    /// What a trim gave back.
    Trim(TrimReport),
}

impl Request {
    /// Runs the request.
    pub fn execute(&self, pool: &Pool) -> Result<Response> {
        Ok(match self {
            Request::CreateVolume {
                name,
                size,
                block_size,
                props,
            } => Response::Dataset(pool.create_volume(name, *size, *block_size, props)?),
            Request::ResizeVolume { name, size } => {
                Response::Dataset(pool.resize_volume(name, *size)?)
            }
            Request::Destroy { name } => {
                pool.destroy(name)?;
                Response::Done
            }
            Request::SetProps { name, props } => {
                pool.set_props(name, props)?;
                Response::Done
            }
            Request::List => Response::Datasets(pool.datasets()),
            Request::Status => Response::Pool(pool.info()),
            Request::Scrub => Response::Scrub(pool.scrub()?),
            Request::Trim => Response::Trim(pool.trim()?),
        })
    }
}
