//! `soma.lock`: marketplace names pinned to digests, committed next to a
//! DAG spec so every run of it gets the same bytes.
//!
//! ```toml
//! # Written by `soma market install` / `update`; commit it.
//! version = 1
//!
//! [capsules."acme/summarize"]
//! range = "^1"                     # what `update` may move the pin within
//! version = "1.2.0"
//! digest = "sha256:…"              # the manifest digest author + marketplace signed
//! component = "sha256:…"           # the component's digest
//! reference = "registry.example/acme/summarize@sha256:…"
//! ```
//!
//! Where it is: `--lock PATH`, else `soma.lock` in the spec's directory (the
//! resolver's search path), else in the current directory ([`Lockfile::find`]).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::error::MarketError;
use crate::digest::Digest;

/// The lockfile's name.
pub const LOCKFILE: &str = "soma.lock";
/// The format version written.
pub const LOCK_VERSION: u32 = 1;

/// One pinned capsule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The semver range it was installed with (`update` stays within it).
    pub range: String,
    /// The pinned version.
    pub version: String,
    /// The manifest digest (what the signatures are on).
    pub digest: Digest,
    /// The component digest.
    pub component: Digest,
    /// `registry/author/name@sha256:…`.
    pub reference: String,
}

/// A lockfile: `author/name` → [`Pin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// Format version ([`LOCK_VERSION`]).
    pub version: u32,
    /// The pins, by name.
    #[serde(default)]
    pub capsules: BTreeMap<String, Pin>,
}

impl Default for Lockfile {
    fn default() -> Self {
        Self {
            version: LOCK_VERSION,
            capsules: BTreeMap::new(),
        }
    }
}

fn lock_error(
    path: &Path,
    message: impl Into<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> MarketError {
    MarketError::Lock {
        path: path.to_owned(),
        message: message.into(),
        source,
    }
}

impl Lockfile {
    /// Read `path`; a missing file is an empty lockfile. Cost: one file read.
    pub fn load(path: &Path) -> Result<Self, MarketError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(lock_error(path, "cannot read it", Some(e.into()))),
        };
        let lock: Self = toml::from_str(&text).map_err(|e| {
            lock_error(
                path,
                format!(
                    "{}; fix it or delete it and run `soma market install` again",
                    e.message()
                ),
                Some(e.into()),
            )
        })?;
        if lock.version != LOCK_VERSION {
            return Err(lock_error(
                path,
                format!(
                    "format version {} is not {LOCK_VERSION}; this Soma reads version {LOCK_VERSION}",
                    lock.version
                ),
                None,
            ));
        }
        Ok(lock)
    }

    /// Write to `path` atomically (a temporary file renamed over it).
    /// Cost: one small write, fsync and rename.
    pub fn save(&self, path: &Path) -> Result<(), MarketError> {
        let body = toml::to_string_pretty(self)
            .map_err(|e| lock_error(path, "cannot encode it", Some(e.into())))?;
        let text = format!(
            "# Written by `soma market install` / `soma market update`; commit it next to your DAG spec.\n{body}"
        );
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
            lock_error(
                path,
                "cannot create a temporary file beside it",
                Some(e.into()),
            )
        })?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| lock_error(path, "cannot write it", Some(e.into())))?;
        tmp.persist(path)
            .map_err(|e| lock_error(path, "cannot replace it", Some(e.error.into())))?;
        Ok(())
    }

    /// The lockfile to use: the first `soma.lock` that exists in `dirs`,
    /// else `./soma.lock` if it exists. Cost: a `stat` per directory.
    pub fn find(dirs: &[PathBuf]) -> Option<PathBuf> {
        dirs.iter()
            .map(|d| d.join(LOCKFILE))
            .chain(std::iter::once(PathBuf::from(LOCKFILE)))
            .find(|p| p.is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lockfile_round_trips_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOCKFILE);
        assert_eq!(Lockfile::load(&path).expect("missing"), Lockfile::default());
        let mut lock = Lockfile::default();
        let d = Digest::of(b"m");
        lock.capsules.insert(
            "acme/calc".into(),
            Pin {
                range: "^1".into(),
                version: "1.0.0".into(),
                digest: d,
                component: Digest::of(b"c"),
                reference: format!("127.0.0.1:5000/acme/calc@{d}"),
            },
        );
        lock.save(&path).expect("save");
        assert_eq!(Lockfile::load(&path).expect("load"), lock);
        assert_eq!(Lockfile::find(&[dir.path().to_owned()]), Some(path.clone()));
        std::fs::write(&path, "version = 2\n").expect("write");
        let e = Lockfile::load(&path).expect_err("version 2");
        assert!(e.to_string().contains("format version 2"), "{e}");
    }
}
