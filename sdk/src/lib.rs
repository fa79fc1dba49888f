//! The Soma capsule SDK.
//!
//! A capsule is a WebAssembly component implementing the `soma:capsule` world
//! (see `wit/capsule.wit`). With this crate a capsule is a type implementing
//! [`Capsule`] plus one [`capsule!`] line:
//!
//! ```ignore
//! use soma_sdk::{Capsule, Error, Info, json};
//!
//! struct Greeter;
//!
//! impl Capsule for Greeter {
//!     fn info() -> Info {
//!         Info::worker("greeter", env!("CARGO_PKG_VERSION")).description("Says hello")
//!     }
//!     fn run(input: &str) -> Result<String, Error> {
//!         #[derive(serde::Deserialize)]
//!         struct In { name: String }
//!         let input: In = json::parse(input)?;
//!         json::output(&format!("hello, {}", input.name))
//!     }
//! }
//!
//! soma_sdk::capsule!(Greeter);
//! ```
//!
//! Build it with `soma build` (or `cargo build --release --target wasm32-wasip2`).
//! Host capabilities are in [`log`], [`kv`], [`llm`], [`events`], [`http`] and [`secrets`]; each call
//! is checked against the grants the operator gave the capsule.

pub mod events;
pub mod http;
pub mod json;
pub mod kv;
pub mod llm;
pub mod log;
pub mod secrets;

mod info;

pub use info::Info;

/// Raw bindings generated from `wit/capsule.wit` (`soma:capsule@0.2.0`) by
/// `wit-bindgen`.
///
/// Most capsules never touch these directly; they are public for capsules
/// that want the exact WIT types.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all
)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "capsule",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_capsule_world",
        default_bindings_module: "soma_sdk::bindings",
        // wasi:http (the `http` capability) and the wasi:io/clocks types it
        // uses; a capsule that makes no request does not import them.
        generate_all,
    });
}

pub use bindings::soma::capsule::types::{
    CapabilityRequest, CapsuleError, CapsuleInfo, CapsuleKind, LimitsRequest,
};

/// A task capsule: describes itself and turns one input into one output.
pub trait Capsule {
    /// What the capsule is: name, version, kind, schemas, wanted capabilities
    /// and limits. Called once when the host loads the capsule.
    fn info() -> Info;

    /// Run on one input (usually JSON; see [`json::parse`]) and return the
    /// output (usually JSON; see [`json::output`]).
    fn run(input: &str) -> Result<String, Error>;
}

/// An error a capsule reports from [`Capsule::run`].
///
/// The host shows it to the caller as a `capsule-error` failure with this
/// code and message, distinct from traps and host-enforced limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Machine-readable code, e.g. `bad-input`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Whether the same input may succeed if retried.
    pub retryable: bool,
}

impl Error {
    /// A non-retryable error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }

    /// The input could not be understood.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new("bad-input", message)
    }

    /// Mark the error as retryable (a transient failure).
    #[must_use]
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for CapsuleError {
    fn from(e: Error) -> Self {
        CapsuleError {
            code: e.code,
            message: e.message,
            retryable: e.retryable,
        }
    }
}

/// Export a [`Capsule`] implementation as the component's `describe` and `run`.
///
/// Use it exactly once per capsule crate, at the crate root.
#[macro_export]
macro_rules! capsule {
    ($ty:ty) => {
        #[doc(hidden)]
        struct __SomaCapsuleExport;

        impl $crate::bindings::Guest for __SomaCapsuleExport {
            fn describe() -> $crate::CapsuleInfo {
                <$ty as $crate::Capsule>::info().into()
            }

            fn run(input: ::std::string::String) -> ::std::result::Result<::std::string::String, $crate::CapsuleError> {
                <$ty as $crate::Capsule>::run(&input).map_err(::std::convert::Into::into)
            }
        }

        $crate::bindings::__export_capsule_world!(__SomaCapsuleExport with_types_in $crate::bindings);
    };
}
