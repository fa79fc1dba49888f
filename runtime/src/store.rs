//! The node's data directory: one redb database and the AOT cache.
//!
//! Layout under `--data` (default `$SOMA_DATA`, else
//! `$XDG_DATA_HOME/soma`, else `~/.local/share/soma`):
//!
//! ```text
//! soma.redb          kv, and (later) blobs index, runs, ledger, budgets
//! aot/<digest>-<engine fingerprint>.cwasm
//! ```

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use soma_host_api::storage::LazyDatabase;

/// The data directory of one Soma node.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    db: Arc<LazyDatabase>,
}

impl DataDir {
    /// A data directory rooted at `root`. Nothing is created until used.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let db = Arc::new(LazyDatabase::new(root.join("soma.redb")));
        Self { root, db }
    }

    /// The default location: `$SOMA_DATA`, `$XDG_DATA_HOME/soma`, or
    /// `~/.local/share/soma`; `./.soma` if none of those can be found.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("SOMA_DATA") {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(p).join("soma");
        }
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(".local/share/soma");
        }
        PathBuf::from(".soma")
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of compiled (AOT) components.
    pub fn aot_dir(&self) -> PathBuf {
        self.root.join("aot")
    }

    /// The node's database, opened on first use.
    pub fn database(&self) -> &Arc<LazyDatabase> {
        &self.db
    }
}
