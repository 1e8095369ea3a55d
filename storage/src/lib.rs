//! payd-storage: typed, versioned tables over an embedded fjall database.
//!
//! The crate knows nothing of payments. It offers three things:
//! - [`Table`]: a typed handle on one fjall keyspace, with keys encoded so that byte
//!   order is their natural order ([`Key`]) and values in a versioned envelope
//!   ([`Record`]: one schema byte, then postcard);
//! - [`Store::read`]: a consistent read snapshot;
//! - [`Store::submit`]: the only way to write. A caller submits a *command* (a closure
//!   that reads and writes through a [`WriteCtx`]); one writer thread applies waiting
//!   commands read-modify-write inside one fjall transaction and commits it with
//!   `PersistMode::SyncData` before any caller hears back (group commit). A command
//!   whose own checks fail is discarded alone; a failed commit poisons the store until
//!   it has been reopened.

mod codec;
mod key;
#[cfg(test)]
mod model_tests;
mod store;

pub use codec::{Record, decode_record, encode_record};
pub use key::{Key, KeyReader};
#[cfg(any(test, feature = "fault-injection"))]
pub use store::FaultPoint;
pub use store::{
    CommitObserver, CommitReport, Migration, ReadView, Store, StoreOptions, StoreStats, Table,
    WriteCtx,
};

/// Everything that can go wrong below the domain.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("storage is unavailable after a failed write; it is being reopened")]
    Unavailable,
    #[error("value in table {table} has schema version {found}, this build reads {expected}")]
    Schema {
        table: &'static str,
        found: u8,
        expected: u8,
    },
    #[error("corrupt value in table {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("corrupt key in table {table}")]
    CorruptKey { table: &'static str },
    #[error(
        "the database was written by a newer payd (storage format {found}); this build reads up to format {supported}"
    )]
    NewerFormat { found: u32, supported: u32 },
    #[error("a storage command panicked; it was discarded")]
    CommandPanicked,
    #[error("the storage writer has stopped")]
    Closed,
}

impl From<fjall::Error> for StorageError {
    fn from(e: fjall::Error) -> Self {
        StorageError::Engine(e.to_string())
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
