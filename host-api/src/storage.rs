//! The node's redb database, opened lazily on first use.
//!
//! Opening a redb file takes a file lock and reads its header; most calls
//! never touch durable state, so the runtime hands capabilities a
//! [`LazyDatabase`] and the file is opened only when one needs it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the Soma database at {path}: {message} (is another soma process using this --data directory?)"
)]
pub struct OpenError {
    /// The database file.
    pub path: PathBuf,
    /// What redb said.
    pub message: String,
}

/// A redb database opened on first [`LazyDatabase::get`].
#[derive(Debug)]
pub struct LazyDatabase {
    path: PathBuf,
    db: Mutex<Option<Arc<redb::Database>>>,
}

impl LazyDatabase {
    /// A handle for the database file at `path`; nothing is opened yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            db: Mutex::new(None),
        }
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, opening (and creating) it on first use.
    ///
    /// Cost: the first call creates parent directories and opens the file
    /// (disk I/O); later calls take an uncontended mutex.
    pub fn get(&self) -> Result<Arc<redb::Database>, OpenError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let err = |message: String| OpenError {
            path: self.path.clone(),
            message,
        };
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        let db = Arc::new(redb::Database::create(&self.path).map_err(|e| err(e.to_string()))?);
        *slot = Some(db.clone());
        Ok(db)
    }
}
