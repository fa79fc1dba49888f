//! [`Capsule`]: a component that is compiled, linked against the host and
//! has described itself. Built once per digest by
//! [`Engine::load`](crate::Engine::load) (in [`crate::load`], which drives
//! compile → [`Capsule::link`] → `describe()` → [`Capsule::new`]) and
//! shared by every call. This module names neither the engine nor the
//! call: it is handed the wasmtime engine, the linker and what `describe()`
//! returned.

use std::{path::PathBuf, sync::Arc};

use serde::Serialize;
use soma_host_api::{
    Wants,
    bindings::{
        AsyncPre, CapsulePre, Contract,
        soma::capsule::types::{CapsuleInfo, LimitsRequest},
    },
};
use wasmtime::component::{Component, Linker};

use crate::{digest::Digest, failure::Failure, host::Host, validate::Invalid};

mod kind;
pub use kind::CapsuleKind;

/// Why a component could not be loaded. Every variant except `Read` is an
/// *invalid component* for the CLI, API and ledger.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read. (The I/O error is in the message, not a
    /// `#[source]`, so a chain printer shows it once.)
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Not a well-formed, bounded component. (Not a `#[source]`: the
    /// message already holds it, and a chain printer would print it twice.)
    #[error("invalid component: {0}")]
    Invalid(Invalid),
    /// A valid component of another world (no `describe`/`run` exports).
    #[error(
        "invalid component: it does not implement the soma:capsule world — missing export(s) {missing:?}; \
         it exports {exports:?}. Build it against wit/capsule.wit (soma-sdk)"
    )]
    WrongWorld {
        /// Exports the capsule world needs and the component lacks.
        missing: Vec<String>,
        /// What the component does export.
        exports: Vec<String>,
    },
    /// An export has the right name but the wrong type (wasmtime's
    /// explanation is the source).
    #[error("invalid component: its exports do not match the soma:capsule world")]
    ExportMismatch(#[source] wasmtime::Error),
    /// Imports something the host does not provide (or with another type).
    #[error(
        "invalid component: unknown import `{name}` — the host provides {} only ({cause})",
        soma_host_api::provided()
    )]
    UnknownImport {
        /// The import's name.
        name: String,
        /// wasmtime's explanation.
        cause: String,
    },
    /// `describe()` failed.
    #[error("invalid component: describe() failed: {0}")]
    Describe(Failure),
    /// `describe()` returned something unusable.
    #[error("invalid component: describe() returned {0}")]
    BadManifest(String),
    /// `describe()` returned a schema that is not JSON (the parse error is
    /// the source).
    #[error("invalid component: describe() returned a {field} that is not JSON")]
    BadSchema {
        /// `input-schema` or `output-schema`.
        field: &'static str,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

impl From<Invalid> for LoadError {
    fn from(e: Invalid) -> Self {
        Self::Invalid(e)
    }
}

/// What a capsule says about itself (`describe()`), in host types.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Description.
    pub description: String,
    /// What the capsule is: serialized (`soma inspect --json`, the OCI
    /// annotation) as `worker`, `planner` or `gate`.
    pub kind: CapsuleKind,
    /// JSON Schema of the input.
    pub input_schema: serde_json::Value,
    /// JSON Schema of the output.
    pub output_schema: serde_json::Value,
    /// The contract version it was built against (`soma:capsule@0.2.0`, …).
    pub contract: Contract,
    /// What it asks for, per capability (serialized as `wants_kv`,
    /// `wants_llm_models`, `wants_dirs`, `wants_other`).
    #[serde(flatten)]
    pub wants: Wants,
    /// Limits the capsule asks for (they can only lower the operator's).
    #[serde(serialize_with = "serialize_limits")]
    pub limits: LimitsRequest,
}

fn serialize_limits<S: serde::Serializer>(l: &LimitsRequest, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({ "fuel": l.fuel, "memory_mb": l.memory_mb, "timeout_ms": l.timeout_ms })
        .serialize(s)
}

impl Manifest {
    /// Worker, planner or gate (the same as [`Manifest::kind`]). Free.
    pub fn capsule_kind(&self) -> CapsuleKind {
        self.kind
    }

    fn from_info(info: CapsuleInfo, contract: Contract) -> Result<Self, LoadError> {
        let schema = |field: &'static str, text: &str| {
            serde_json::from_str(text).map_err(|source| LoadError::BadSchema { field, source })
        };
        if info.name.trim().is_empty() {
            return Err(LoadError::BadManifest("an empty name".into()));
        }
        Ok(Self {
            input_schema: schema("input-schema", &info.input_schema)?,
            output_schema: schema("output-schema", &info.output_schema)?,
            name: info.name,
            version: info.version,
            description: info.description,
            kind: info.kind.into(),
            contract,
            wants: Wants::from_requests(info.capabilities),
            limits: info.limits,
        })
    }
}

/// A loaded capsule. Immutable and shared (`Arc<Capsule>`) by every call.
pub struct Capsule {
    digest: Digest,
    origin: String,
    size: usize,
    component: Component,
    pub(crate) linked: Linked,
    manifest: Manifest,
    /// Interned name for logs.
    pub(crate) name: Arc<str>,
    /// Interned `sha256:<hex>` for the ledger.
    pub(crate) digest_text: Arc<str>,
}

impl std::fmt::Debug for Capsule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capsule")
            .field("name", &self.manifest.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// A capsule linked for calls: the blocking `pre` every capsule has and,
/// for a 0.2.0 capsule that imports `wasi:http/outgoing-handler`, the same
/// exports linked against the async linker (`io`), which a call on a plain
/// thread takes so that its requests run on the call's own thread.
#[derive(Debug)]
pub(crate) struct Linked {
    pub(crate) pre: CapsulePre<Host>,
    pub(crate) io: Option<AsyncPre<Host>>,
}

/// The import that puts a capsule on the async path.
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@";

/// The export names the capsule world requires.
const REQUIRED_EXPORTS: [&str; 2] = ["describe", "run"];

impl Capsule {
    /// Check that `component` implements the capsule world and link it
    /// against the host's `linker`. Once per digest; the caller then calls
    /// `describe()` on the result and hands it to [`Capsule::new`].
    pub(crate) fn link(
        engine: &wasmtime::Engine,
        linker: &Linker<Host>,
        linker_async: &Linker<Host>,
        component: &Component,
    ) -> Result<Linked, LoadError> {
        let exports = export_names(engine, component);
        let missing: Vec<String> = REQUIRED_EXPORTS
            .iter()
            .filter(|r| !exports.iter().any(|e| e == *r))
            .map(|r| (*r).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::WrongWorld { missing, exports });
        }
        let pre = linker.instantiate_pre(component).map_err(import_error)?;
        let pre = CapsulePre::new(pre).map_err(LoadError::ExportMismatch)?;
        let wants_io = pre.contract() == Contract::V0_2
            && component
                .component_type()
                .imports(engine)
                .any(|(name, _)| name.starts_with(OUTGOING_HANDLER));
        let io = if wants_io {
            // The same imports resolve in both linkers, so this can only
            // fail where the blocking link did.
            let io = linker_async
                .instantiate_pre(component)
                .map_err(import_error)?;
            Some(AsyncPre::new(io).map_err(LoadError::ExportMismatch)?)
        } else {
            None
        };
        Ok(Linked { pre, io })
    }

    /// The capsule `pre` is, given what its `describe()` returned (`Err`:
    /// the failed call). Once per digest; cheap.
    pub(crate) fn new(
        digest: Digest,
        origin: &str,
        size: usize,
        component: Component,
        linked: Linked,
        described: Result<CapsuleInfo, Failure>,
    ) -> Result<Self, LoadError> {
        let info = described.map_err(LoadError::Describe)?;
        let manifest = Manifest::from_info(info, linked.pre.contract())?;
        Ok(Self {
            digest,
            origin: origin.to_owned(),
            size,
            component,
            linked,
            // The name is the capsule's to choose: escaped for log lines.
            name: soma_host_api::log::escape(&manifest.name).as_ref().into(),
            digest_text: digest.to_string().into(),
            manifest,
        })
    }

    /// The content digest of the component bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Where it was loaded from (a path or a reference).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// What `describe()` returned.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The component's import names (`engine`: the one it was compiled
    /// with, [`Engine::wasmtime`](crate::Engine::wasmtime)).
    pub fn imports(&self, engine: &wasmtime::Engine) -> Vec<String> {
        self.component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// The component's export names (`engine` as for [`Capsule::imports`]).
    pub fn exports(&self, engine: &wasmtime::Engine) -> Vec<String> {
        export_names(engine, &self.component)
    }
}

fn export_names(engine: &wasmtime::Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// wasmtime reports a failed link as "component imports <kind> `<name>`, but
/// a matching implementation was not found in the linker" with the cause
/// below it; keep the name and the cause.
fn import_error(e: wasmtime::Error) -> LoadError {
    let top = e.to_string();
    let name = top
        .split('`')
        .nth(1)
        .map_or_else(|| "?".to_owned(), str::to_owned);
    let cause = e.root_cause().to_string();
    LoadError::UnknownImport { name, cause }
}
