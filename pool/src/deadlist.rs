//! Deadlists: blocks a dataset stopped referencing that an older snapshot still references.
//!
//! When a volume replaces a block born at or before its latest snapshot (or its origin), the
//! block is not freed but appended to the volume's deadlist. Taking a snapshot hands the deadlist
//! to the snapshot and starts an empty one; destroying a snapshot frees the entries of the next
//! dataset's deadlist born after the previous snapshot and merges the rest (OpenZFS's scheme).
//! On disk a deadlist is a chain of immutable blocks, newest first, so appending never rewrites.

use crate::error::Result;
use crate::phys::{
    decode_deadlist_block, encode_deadlist_block, BlockPtr, DeadEntry, DEADLIST_WRITE_ENTRIES,
};

/// A deadlist: a persisted chain plus entries not yet written.
#[derive(Default)]
pub(crate) struct Deadlist {
    /// Newest persisted block (hole when nothing is persisted).
    pub head: BlockPtr,
    /// Entries in the persisted chain.
    pub count: u64,
    /// Entries appended since the last commit.
    pub pending: Vec<DeadEntry>,
}

impl Deadlist {
    /// A deadlist as recorded in a dataset entry.
    pub fn persisted(head: BlockPtr, count: u64) -> Self {
        Deadlist {
            head,
            count,
            pending: Vec::new(),
        }
    }

    /// A deadlist of entries, all still to be written.
    pub fn from_entries(entries: Vec<DeadEntry>) -> Self {
        Deadlist {
            pending: entries,
            ..Default::default()
        }
    }

    /// Appends an entry.
    pub fn push(&mut self, ptr: BlockPtr, level: u8) {
        self.pending.push(DeadEntry { ptr, level });
    }

    /// Writes pending entries as new chain blocks. `write` places a block.
    pub fn persist(&mut self, mut write: impl FnMut(&[u8]) -> Result<BlockPtr>) -> Result<()> {
        for chunk in std::mem::take(&mut self.pending).chunks(DEADLIST_WRITE_ENTRIES) {
            self.head = write(&encode_deadlist_block(&self.head, chunk))?;
            self.count = self.count.saturating_add(chunk.len() as u64);
        }
        Ok(())
    }

    /// Every entry (persisted and pending) and every chain block. `read` fetches and verifies a
    /// block of the pointer's length.
    pub fn load(
        &self,
        mut read: impl FnMut(&BlockPtr) -> Result<Vec<u8>>,
    ) -> Result<(Vec<DeadEntry>, Vec<BlockPtr>)> {
        let mut entries = self.pending.clone();
        let mut blocks = Vec::new();
        let mut at = self.head;
        while !at.is_hole() {
            let (prev, mut e) = decode_deadlist_block(&read(&at)?)?;
            blocks.push(at);
            entries.append(&mut e);
            at = prev;
            if blocks.len() as u64 > self.count.saturating_add(1) {
                return Err(crate::Error::Corrupt(
                    "a deadlist chain is longer than its count (a loop?)".into(),
                ));
            }
        }
        Ok((entries, blocks))
    }
}
