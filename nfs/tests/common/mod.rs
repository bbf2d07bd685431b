//! What the nfs test crates share.

use pool::{Pool, PoolConfig};
use std::path::Path;
use std::sync::Arc;

/// A 256 MiB pool `tank` in a file in `dir`.
pub fn new_pool(dir: &Path) -> Arc<Pool> {
    Arc::new(
        Pool::create_file(
            &dir.join("p.tarn"),
            "tank",
            256 << 20,
            PoolConfig::default(),
        )
        .expect("creating the pool"),
    )
}
