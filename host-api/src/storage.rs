//! The node's redb database, opened lazily on first use.
//!
//! Opening a redb file takes a file lock and reads its header; most calls
//! never touch durable state, so the runtime hands capabilities a
//! [`LazyDatabase`] and the file is opened only when one needs it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Why the database could not be opened — named by its real cause, so the
/// message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the database's lock.
    #[error(
        "cannot open the Soma database at {path}: another process has it open (a `soma daemon`, \
         or a `soma dag run` driving a run, on the same --data directory); stop it, send the \
         command to it with --server, or use another --data directory"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a (readable) redb database.
    #[error(
        "cannot open the Soma database at {path}: the file is not a Soma database or is \
         corrupted ({detail}); restore it from a backup, or move it away to start an empty one"
    )]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// What redb found.
        detail: String,
    },
    /// The file or its directory may not be read or written by this user.
    #[error(
        "cannot open the Soma database at {path}: permission denied ({source}); run as the user \
         that owns the --data directory or fix its permissions"
    )]
    Permission {
        /// The file (or directory) refused.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Any other I/O failure (disk full, read-only file system, …).
    #[error("cannot open the Soma database at {path}: {source}")]
    Io {
        /// The file (or directory) involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Any other redb failure.
    #[error("cannot open the Soma database at {path}: {detail}")]
    Other {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        detail: String,
    },
}

impl OpenError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        let path = path.to_owned();
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            Self::Permission { path, source }
        } else {
            Self::Io { path, source }
        }
    }

    fn of(path: &Path, e: redb::DatabaseError) -> Self {
        use redb::{DatabaseError as D, StorageError as S};
        let path_buf = path.to_owned();
        match e {
            D::DatabaseAlreadyOpen | D::LockProtocolMismatch => Self::Locked { path: path_buf },
            D::Storage(S::Io(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
                Self::NotADatabase {
                    path: path_buf,
                    detail: io.to_string(),
                }
            }
            D::Storage(S::Io(io)) => Self::io(path, io),
            D::Storage(S::Corrupted(detail)) => Self::NotADatabase {
                path: path_buf,
                detail,
            },
            D::UpgradeRequired(v) => Self::NotADatabase {
                path: path_buf,
                detail: format!("an old redb file format (v{v}) that needs an upgrade"),
            },
            other => Self::Other {
                path: path_buf,
                detail: other.to_string(),
            },
        }
    }
}

/// redb's magic number: a file that does not start with it was never
/// initialised by redb (redb writes it last, after the header is durable).
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// One redb page: the header region. A file without the magic whose bytes
/// past this are all zero holds nothing but a header redb never finished.
const HEADER_REGION: u64 = 4096;

/// Largest never-initialised file recognised as such (redb resizes a new
/// file to its initial layout, ~1 MiB, before writing the magic).
const MAX_UNINITIALISED: u64 = 64 << 20;

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
    /// Creating is atomic: a new database is initialised in a temporary
    /// file beside it and linked into place only once complete, so a crash
    /// (even `kill -9`) never leaves a half-created database at the path.
    /// A file left half-created by an older version — no redb magic
    /// number, nothing past its header page — provably holds no data: it is
    /// moved aside (never deleted) and a new database is created.
    ///
    /// Cost: the first call creates parent directories and opens the file
    /// (disk I/O; creating a new database costs one more fsync'd file);
    /// later calls take an uncontended mutex.
    pub fn get(&self) -> Result<Arc<redb::Database>, OpenError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(open_or_create(&self.path)?);
        *slot = Some(db.clone());
        Ok(db)
    }
}

fn open_or_create(path: &Path) -> Result<redb::Database, OpenError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| OpenError::io(parent, e))?;
    }
    // Two rounds at most: a stale half-created file is moved aside once,
    // and another process may win the race to create the file.
    for _ in 0..3 {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_atomically(path)?;
            }
            Err(e) => return Err(OpenError::io(path, e)),
            Ok(meta) => {
                if never_initialised(path).map_err(|e| OpenError::io(path, e))? {
                    if meta.len() == 0 {
                        // Empty: nothing to keep.
                        match std::fs::remove_file(path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(OpenError::io(path, e)),
                        }
                    } else {
                        move_aside(path)?;
                    }
                    continue;
                }
                return redb::Database::create(path).map_err(|e| OpenError::of(path, e));
            }
        }
    }
    redb::Database::create(path).map_err(|e| OpenError::of(path, e))
}

/// Initialise a database in a temporary file in the same directory, close
/// it, and hard-link it to `path` unless something is there already.
fn create_atomically(path: &Path) -> Result<(), OpenError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    remove_stale_temporaries(path, dir);
    let name = path
        .file_name()
        .map_or_else(|| "soma.redb".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.creating-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let created = redb::Database::create(&tmp).map_err(|e| OpenError::of(&tmp, e));
    let result = created.and_then(|db| {
        drop(db);
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(OpenError::io(path, e)),
        }
    });
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Temporaries of creations killed before they finished (their process is gone).
fn remove_stale_temporaries(path: &Path, dir: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.creating-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
        });
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether the file at `path` was provably never initialised by redb: empty,
/// or without redb's magic number and with nothing but zeros past its
/// header page (and not larger than a new database's initial layout).
fn never_initialised(path: &Path) -> std::io::Result<bool> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut magic = [0u8; REDB_MAGIC.len()];
    let mut read = 0;
    while read < magic.len() {
        match file.read(&mut magic[read..])? {
            0 => break,
            n => read += n,
        }
    }
    if read == magic.len() && magic == REDB_MAGIC {
        return Ok(false);
    }
    if len > MAX_UNINITIALISED {
        return Ok(false);
    }
    if len <= HEADER_REGION {
        return Ok(true);
    }
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    let past_header = usize::try_from(HEADER_REGION)
        .unwrap_or(usize::MAX)
        .saturating_sub(read);
    Ok(rest
        .get(past_header..)
        .is_none_or(|tail| tail.iter().all(|b| *b == 0)))
}

/// Move a never-initialised file aside (kept, in case), logging why.
fn move_aside(path: &Path) -> Result<(), OpenError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".uninitialised-{stamp}-{}", std::process::id()));
    let aside = PathBuf::from(aside);
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                "the database file was never initialised (a crash while it was created); \
                 moved it aside and creating a new one"
            );
            Ok(())
        }
        // Someone else moved it already.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OpenError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_in(dir: &Path) -> LazyDatabase {
        LazyDatabase::new(dir.join("soma.redb"))
    }

    fn write_and_read(db: &LazyDatabase) {
        const T: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("t");
        let db = db.get().expect("open");
        let w = db.begin_write().expect("write");
        w.open_table(T)
            .expect("table")
            .insert("k", 7)
            .expect("insert");
        w.commit().expect("commit");
    }

    #[test]
    fn a_fresh_directory_gets_a_database_and_no_temporaries() {
        let dir = tempfile::tempdir().expect("tmp");
        write_and_read(&db_in(dir.path()));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["soma.redb"]);
    }

    #[test]
    fn half_created_files_are_recreated_and_kept_aside() {
        for content in [Vec::new(), vec![0u8; 100], {
            // A header page without the magic, then zeros (redb killed
            // between its resize and its magic write).
            let mut v = vec![0u8; 1 << 20];
            v[9..64].fill(0x5a);
            v
        }] {
            let dir = tempfile::tempdir().expect("tmp");
            std::fs::write(dir.path().join("soma.redb"), &content).expect("write");
            write_and_read(&db_in(dir.path()));
            let kept = std::fs::read_dir(dir.path())
                .expect("ls")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().contains("uninitialised"))
                })
                .count();
            assert_eq!(
                kept,
                usize::from(!content.is_empty()),
                "non-empty files are moved aside"
            );
        }
    }

    #[test]
    fn real_data_is_never_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("soma.redb");
        // No magic, but data past the header page: not provably empty.
        let mut v = vec![0u8; 1 << 20];
        v[500_000] = 1;
        std::fs::write(&path, &v).expect("write");
        let err = db_in(dir.path()).get().expect_err("must not open");
        assert!(matches!(err, OpenError::NotADatabase { .. }), "{err}");
        assert!(err.to_string().contains("not a Soma database"), "{err}");
        assert!(!err.to_string().contains("another soma process"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), v);
    }

    #[test]
    fn a_held_lock_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = db_in(dir.path());
        write_and_read(&first);
        let err = db_in(dir.path()).get().expect_err("locked");
        assert!(matches!(err, OpenError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains("another process has it open"),
            "{err}"
        );
    }
}
