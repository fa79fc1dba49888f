//! Load: bytes → a [`Capsule`], cached per digest. The one place the wasm
//! core's stages meet: the engine compiles ([`Engine::compile`], with the
//! AOT cache), the capsule module links ([`Capsule::link`]), the call
//! module runs `describe()` under its fixed allowance, and the engine's
//! in-memory cache keeps the result. Above `engine`, `capsule` and `call`,
//! so none of them names another stage above it.

use std::{path::Path, sync::Arc};

use crate::{Capsule, Engine, LoadError, digest::Digest};

impl Engine {
    /// Load the component file at `path`. See [`Engine::load`].
    pub fn load_file(&self, path: &Path) -> Result<Arc<Capsule>, LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
            path: path.to_owned(),
            error,
        })?;
        let origin = path.display().to_string();
        self.load(&bytes, &origin)
    }

    /// Load a component: digest, bound its structure, compile (or take it
    /// from the AOT cache), link, and call `describe()`. Cached per digest,
    /// so loading the same bytes twice costs one hash.
    pub fn load(&self, bytes: &[u8], origin: &str) -> Result<Arc<Capsule>, LoadError> {
        let digest = Digest::of(bytes);
        if let Some(c) = self.cached(&digest) {
            return Ok(c);
        }
        let component = self.compile(digest, bytes)?;
        let linked = Capsule::link(
            self.wasmtime(),
            self.linker(),
            self.linker_async(),
            &component,
        )?;
        let described = self.describe(&linked, origin);
        let capsule = Capsule::new(digest, origin, bytes.len(), component, linked, described)?;
        Ok(self.remember(capsule))
    }
}
