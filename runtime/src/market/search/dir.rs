//! The index directory: one JSON file per listing (every published version
//! the store gave), written whole by rename, so a reader never sees half a
//! listing and a writer rewrites only what changed.
//!
//! ```text
//! <dir>/format.json                  {"format": "soma-market-search", "version": 1}
//! <dir>/.lock                        the writer's lock (flock, held while open)
//! <dir>/listings/<sha256(id)>.json   {"listing": "acme/summarize", "versions": [SearchDoc, …]}
//! ```
//!
//! The inverted index itself is not stored: opening rebuilds it from the
//! listing files (the bench reports what that costs at 10,000 listings).
//! File names are hashes, so no listing id reaches a path.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{SearchDoc, SearchError};

/// The format this build writes and reads.
const FORMAT: u32 = 1;
const FORMAT_NAME: &str = "soma-market-search";

#[derive(Debug, Serialize, Deserialize)]
struct FormatFile {
    format: String,
    version: u32,
}

#[derive(Debug, Serialize)]
struct ListingOut<'a> {
    listing: &'a str,
    versions: Vec<&'a SearchDoc>,
}

/// A listing file as read: its `listing` field is for people (each
/// version carries the id).
#[derive(Debug, Deserialize)]
struct ListingIn {
    versions: Vec<SearchDoc>,
}

/// An index directory opened for writing (holds the lock until dropped).
#[derive(Debug)]
pub(crate) struct IndexDir {
    root: PathBuf,
    _lock: File,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SearchError {
    let path = path.to_owned();
    move |source| SearchError::Io { what, path, source }
}

impl IndexDir {
    /// Creates the directory if needed, takes the writer lock, and reads
    /// every listing.
    pub(crate) fn open_writer(root: &Path) -> Result<(Self, Vec<Vec<SearchDoc>>), SearchError> {
        fs::create_dir_all(root.join("listings"))
            .map_err(io("creating the index directory", root))?;
        let lock_path = root.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening the lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(SearchError::Locked {
                    dir: root.to_owned(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", &lock_path)(e)),
        }
        let format = root.join("format.json");
        if !format.exists() {
            let text = serde_json::to_vec(&FormatFile {
                format: FORMAT_NAME.to_owned(),
                version: FORMAT,
            })
            .map_err(|e| io("writing the format file", &format)(e.into()))?;
            write_atomic(&format, &text, true)?;
        }
        let listings = Self::read(root)?;
        Ok((
            Self {
                root: root.to_owned(),
                _lock: lock,
            },
            listings,
        ))
    }

    /// Reads every listing of the index at `root` (no lock: each file is
    /// whole, old or new).
    pub(crate) fn read(root: &Path) -> Result<Vec<Vec<SearchDoc>>, SearchError> {
        let format_path = root.join("format.json");
        let text = match fs::read(&format_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SearchError::NoIndex {
                    dir: root.to_owned(),
                });
            }
            Err(e) => return Err(io("reading the format file", &format_path)(e)),
        };
        let format: FormatFile =
            serde_json::from_slice(&text).map_err(|source| SearchError::Corrupt {
                path: format_path.clone(),
                source,
            })?;
        if format.format != FORMAT_NAME || format.version != FORMAT {
            return Err(SearchError::Format {
                dir: root.to_owned(),
                found: format!("{} {}", format.format, format.version),
                expected: FORMAT,
            });
        }
        let dir = root.join("listings");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing the index", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("listing the index", &dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue; // a writer's temporary file
            }
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                // Removed by a writer since the directory was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("reading a listing", &path)(e)),
            };
            let listing: ListingIn = serde_json::from_slice(&bytes)
                .map_err(|source| SearchError::Corrupt { path, source })?;
            out.push(listing.versions);
        }
        Ok(out)
    }

    /// Writes one listing's file (or removes it if it has no versions),
    /// fsync'd.
    pub(crate) fn write_listing(
        &self,
        listing: &str,
        versions: Vec<&SearchDoc>,
    ) -> Result<(), SearchError> {
        if versions.is_empty() {
            return self.remove_listing(listing);
        }
        let path = self.path_of(listing);
        write_atomic(&path, &encode(listing, versions, &path)?, true)
    }

    /// Removes one listing's file.
    pub(crate) fn remove_listing(&self, listing: &str) -> Result<(), SearchError> {
        let path = self.path_of(listing);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing a listing", &path)(e)),
        }
    }

    /// Rewrites every listing file and removes the files of listings not
    /// in `all`; one filesystem sync at the end instead of one per file.
    pub(crate) fn replace_all<'a>(
        &self,
        all: impl Iterator<Item = (&'a str, Vec<&'a SearchDoc>)>,
    ) -> Result<(), SearchError> {
        let mut keep = std::collections::HashSet::new();
        for (listing, versions) in all {
            let path = self.path_of(listing);
            write_atomic(&path, &encode(listing, versions, &path)?, false)?;
            keep.insert(path);
        }
        let dir = self.root.join("listings");
        for entry in fs::read_dir(&dir).map_err(io("listing the index", &dir))? {
            let path = entry.map_err(io("listing the index", &dir))?.path();
            if !keep.contains(&path) {
                fs::remove_file(&path).map_err(io("removing a listing", &path))?;
            }
        }
        sync_filesystem(&dir)
    }

    fn path_of(&self, listing: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(listing.as_bytes()));
        self.root.join("listings").join(format!("{hash}.json"))
    }
}

fn encode(listing: &str, versions: Vec<&SearchDoc>, path: &Path) -> Result<Vec<u8>, SearchError> {
    serde_json::to_vec(&ListingOut { listing, versions }).map_err(|source| SearchError::Corrupt {
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename; with `sync`, fsyncs the file and the directory.
fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> Result<(), SearchError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io("creating a temporary file", &tmp))?;
    file.write_all(bytes)
        .map_err(io("writing a temporary file", &tmp))?;
    if sync {
        file.sync_all()
            .map_err(io("syncing a temporary file", &tmp))?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(io("renaming a temporary file", path))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SearchError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the directory", dir))
}

/// Flushes the filesystem holding `dir` (one `syncfs` for a whole rebuild).
fn sync_filesystem(dir: &Path) -> Result<(), SearchError> {
    use std::os::fd::AsRawFd as _;
    let d = File::open(dir).map_err(io("opening the directory", dir))?;
    // SAFETY: `d` is an open file descriptor for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io("syncing the filesystem", dir)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
