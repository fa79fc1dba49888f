//! Host-side bindings generated from `wit/capsule.wit`.
//!
//! [`Capsule`] / [`CapsulePre`] are the typed exports (`describe`, `run`);
//! `soma::capsule::*` hold the import traits each capability module implements.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "capsule",
});

/// Host of the type-only `soma:capsule/types` interface: it has no
/// functions, but a capsule that uses its types imports it, so it must link.
pub(crate) struct TypesHost;

impl soma::capsule::types::Host for TypesHost {}

struct TypesData;

impl wasmtime::component::HasData for TypesData {
    type Data<'a> = TypesHost;
}

/// Wire the type-only `soma:capsule/types` interface into `linker`.
pub fn add_types_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    soma::capsule::types::add_to_linker::<T, TypesData>(linker, |_| TypesHost)
}
