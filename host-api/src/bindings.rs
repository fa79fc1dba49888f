//! Host-side bindings generated from the WIT contract, in every version the
//! host accepts.
//!
//! The root of this module is the current contract, `wit/capsule.wit`
//! (`soma:capsule@0.2.0`): `soma::capsule::*` hold the import traits each
//! capability module implements. [`v0_1`] is the frozen
//! `soma:capsule@0.1.0` (`wit/compat/0.1.0/`), bound only so that capsules
//! built against it keep loading: its interfaces are served by the same
//! per-call states (see `crate::compat`), and its closed `capabilities`
//! record converts into 0.2.0's requests.
//!
//! [`CapsulePre`] / [`Exports`] hide which version a capsule was built
//! against: the runtime calls `describe` and `run` through them and always
//! sees 0.2.0 types.

use wasmtime::{
    AsContextMut,
    component::{InstancePre, Linker},
};

/// `soma:capsule@0.2.0`, the current contract (`wit/capsule.wit`).
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "capsule",
        // WASI HTTP (the `http` capability) is served by wasmtime-wasi-http,
        // whose bindings need store data that is `Send`.
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// `soma:capsule@0.2.0`'s exports again, called through wasmtime's async
/// API (the imports are [`v0_2`]'s, shared through `with`): the path of a
/// capsule that imports `wasi:http/outgoing-handler` — see [`AsyncPre`].
pub mod v0_2_async {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "capsule",
        require_store_data_send: true,
        exports: { default: async },
        with: {
            "soma:capsule": super::v0_2::soma::capsule,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// `soma:capsule@0.1.0`, frozen: what capsules built before the
/// open-ended capability requests import and export.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/0.1.0",
        world: "capsule",
    });
}

pub use v0_2::soma;

use soma::capsule::types::{CapabilityRequest, CapsuleError, CapsuleInfo};

/// Host of the type-only `soma:capsule/types` interface (both versions): it
/// has no functions, but a capsule that uses its types imports it, so it
/// must link.
pub(crate) struct TypesHost;

impl soma::capsule::types::Host for TypesHost {}
impl v0_1::soma::capsule::types::Host for TypesHost {}

struct TypesData;

impl wasmtime::component::HasData for TypesData {
    type Data<'a> = TypesHost;
}

/// Wire the type-only `soma:capsule/types` interface, both versions, into
/// `linker`. Once per engine.
pub fn add_types_to_linker<T: 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    soma::capsule::types::add_to_linker::<T, TypesData>(linker, |_| TypesHost)?;
    v0_1::soma::capsule::types::add_to_linker::<T, TypesData>(linker, |_| TypesHost)
}

/// The contract version a capsule was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `soma:capsule@0.2.0`: open-ended capability requests.
    V0_2,
    /// `soma:capsule@0.1.0`: the closed `capabilities` record.
    V0_1,
}

impl Contract {
    /// The WIT package, e.g. `soma:capsule@0.2.0`.
    pub fn package(self) -> &'static str {
        match self {
            Self::V0_2 => "soma:capsule@0.2.0",
            Self::V0_1 => "soma:capsule@0.1.0",
        }
    }
}

impl serde::Serialize for Contract {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.package())
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.package())
    }
}

/// A capsule's exports, pre-linked, for whichever contract version it was
/// built against. Built once per capsule.
pub enum CapsulePre<T: 'static> {
    /// Built against 0.2.0.
    V0_2(v0_2::CapsulePre<T>),
    /// Built against 0.1.0.
    V0_1(v0_1::CapsulePre<T>),
}

impl<T: 'static> std::fmt::Debug for CapsulePre<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CapsulePre").field(&self.contract()).finish()
    }
}

impl<T: 'static> CapsulePre<T> {
    /// Type-check the exports against the current contract, then against
    /// 0.1.0. On a mismatch with both, the error is the current
    /// contract's (that is what a capsule should be rebuilt against).
    ///
    /// Cost: one or two export type checks. Once per capsule.
    pub fn new(pre: InstancePre<T>) -> wasmtime::Result<Self> {
        match v0_2::CapsulePre::new(pre.clone()) {
            Ok(p) => Ok(Self::V0_2(p)),
            Err(current) => v0_1::CapsulePre::new(pre)
                .map(Self::V0_1)
                .map_err(|_| current),
        }
    }

    /// The contract version the capsule was built against.
    pub fn contract(&self) -> Contract {
        match self {
            Self::V0_2(_) => Contract::V0_2,
            Self::V0_1(_) => Contract::V0_1,
        }
    }

    /// Instantiate in `store`. Per call; the cost is wasmtime's (one
    /// instance from the pool), no conversion.
    pub fn instantiate(&self, store: impl AsContextMut<Data = T>) -> wasmtime::Result<Exports> {
        Ok(match self {
            Self::V0_2(p) => Exports::V0_2(p.instantiate(store)?),
            Self::V0_1(p) => Exports::V0_1(p.instantiate(store)?),
        })
    }
}

/// An instantiated capsule's `describe` and `run`, in 0.2.0 types.
pub enum Exports {
    /// Built against 0.2.0.
    V0_2(v0_2::Capsule),
    /// Built against 0.1.0.
    V0_1(v0_1::Capsule),
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exports")
    }
}

impl Exports {
    /// Call `describe()`; a 0.1.0 manifest is converted (its closed
    /// `capabilities` record becomes requests). Once per capsule.
    pub fn call_describe<S: AsContextMut>(&self, store: S) -> wasmtime::Result<CapsuleInfo> {
        match self {
            Self::V0_2(c) => c.call_describe(store),
            Self::V0_1(c) => c.call_describe(store).map(info_from_v0_1),
        }
    }

    /// Call `run(input)`. Per call: for a 0.1.0 capsule the error record
    /// is moved field by field (no copy of its strings).
    pub fn call_run<S: AsContextMut>(
        &self,
        store: S,
        input: &str,
    ) -> wasmtime::Result<Result<String, CapsuleError>> {
        match self {
            Self::V0_2(c) => c.call_run(store, input),
            Self::V0_1(c) => c.call_run(store, input).map(|r| {
                r.map_err(|e| CapsuleError {
                    code: e.code,
                    message: e.message,
                    retryable: e.retryable,
                })
            }),
        }
    }
}

/// A 0.2.0 capsule pre-linked against the async linker
/// ([`crate::add_to_linker_async`]): `describe` and `run` are futures,
/// driven by the caller's tokio runtime. Built once per capsule, beside
/// its [`CapsulePre`], for capsules that import
/// `wasi:http/outgoing-handler`.
pub struct AsyncPre<T: 'static>(v0_2_async::CapsulePre<T>);

impl<T: 'static> std::fmt::Debug for AsyncPre<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncPre")
    }
}

impl<T: Send + 'static> AsyncPre<T> {
    /// Type-check the exports against the current contract (0.1.0
    /// capsules keep the blocking path).
    pub fn new(pre: InstancePre<T>) -> wasmtime::Result<Self> {
        v0_2_async::CapsulePre::new(pre).map(Self)
    }

    /// Instantiate in `store` (on a fiber). Per call.
    pub async fn instantiate(
        &self,
        store: impl AsContextMut<Data = T>,
    ) -> wasmtime::Result<AsyncExports> {
        self.0.instantiate_async(store).await.map(AsyncExports)
    }
}

/// An instance built by [`AsyncPre::instantiate`].
pub struct AsyncExports(v0_2_async::Capsule);

impl std::fmt::Debug for AsyncExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncExports")
    }
}

impl AsyncExports {
    /// Call `describe()`.
    pub async fn call_describe<S>(&self, store: S) -> wasmtime::Result<CapsuleInfo>
    where
        S: AsContextMut<Data: Send>,
    {
        self.0.call_describe(store).await
    }

    /// Call `run(input)`.
    pub async fn call_run<S>(
        &self,
        store: S,
        input: &str,
    ) -> wasmtime::Result<Result<String, CapsuleError>>
    where
        S: AsContextMut<Data: Send>,
    {
        self.0.call_run(store, input).await
    }
}

/// A 0.1.0 manifest in 0.2.0 form: `kv: true` → `kv`, `llm-models` →
/// `llm` with the models, `dirs` → `dir`, `http-hosts` → `http`.
fn info_from_v0_1(i: v0_1::soma::capsule::types::CapsuleInfo) -> CapsuleInfo {
    use soma::capsule::types::{CapsuleKind, LimitsRequest};
    use v0_1::soma::capsule::types::CapsuleKind as Old;
    let c = i.capabilities;
    let mut capabilities = Vec::new();
    if c.kv {
        capabilities.push(CapabilityRequest {
            name: "kv".into(),
            args: Vec::new(),
        });
    }
    for (name, args) in [
        ("llm", c.llm_models),
        ("http", c.http_hosts),
        ("dir", c.dirs),
    ] {
        if !args.is_empty() {
            capabilities.push(CapabilityRequest {
                name: name.into(),
                args,
            });
        }
    }
    CapsuleInfo {
        name: i.name,
        version: i.version,
        description: i.description,
        kind: match i.kind {
            Old::Worker => CapsuleKind::Worker,
            Old::Planner => CapsuleKind::Planner,
            Old::Gate => CapsuleKind::Gate,
        },
        input_schema: i.input_schema,
        output_schema: i.output_schema,
        capabilities,
        limits: LimitsRequest {
            fuel: i.limits.fuel,
            memory_mb: i.limits.memory_mb,
            timeout_ms: i.limits.timeout_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v0_1::soma::capsule::types as old;

    #[test]
    fn a_v0_1_manifest_converts_into_requests() {
        let info = info_from_v0_1(old::CapsuleInfo {
            name: "n".into(),
            version: "1".into(),
            description: "d".into(),
            kind: old::CapsuleKind::Gate,
            input_schema: "{}".into(),
            output_schema: "{}".into(),
            capabilities: old::Capabilities {
                kv: true,
                llm_models: vec!["a".into(), "b".into()],
                http_hosts: Vec::new(),
                dirs: vec!["/data".into()],
            },
            limits: old::LimitsRequest {
                fuel: Some(7),
                memory_mb: None,
                timeout_ms: Some(9),
            },
        });
        let requests: Vec<(&str, Vec<&str>)> = info
            .capabilities
            .iter()
            .map(|r| (r.name.as_str(), r.args.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            requests,
            [
                ("kv", vec![]),
                ("llm", vec!["a", "b"]),
                ("dir", vec!["/data"])
            ],
            "empty lists make no request"
        );
        assert!(matches!(info.kind, soma::capsule::types::CapsuleKind::Gate));
        assert_eq!(
            (info.limits.fuel, info.limits.timeout_ms),
            (Some(7), Some(9))
        );
        let none = info_from_v0_1(old::CapsuleInfo {
            name: String::new(),
            version: String::new(),
            description: String::new(),
            kind: old::CapsuleKind::Worker,
            input_schema: String::new(),
            output_schema: String::new(),
            capabilities: old::Capabilities {
                kv: false,
                llm_models: Vec::new(),
                http_hosts: Vec::new(),
                dirs: Vec::new(),
            },
            limits: old::LimitsRequest {
                fuel: None,
                memory_mb: None,
                timeout_ms: None,
            },
        });
        assert!(none.capabilities.is_empty());
    }
}
