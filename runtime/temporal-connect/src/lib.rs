//! [`connect`]: Temporal's [`Connection::connect`] behind a boxed future,
//! in a crate of its own so that the code it instantiates is compiled once.
//!
//! `Connection::connect` builds the client of each Temporal gRPC service
//! as a trait object, which instantiates every RPC of Temporal's API
//! (about 250 methods, each with its encoder, decoder and streaming
//! wrappers). The body of an `async fn` is compiled in the crate that
//! polls it, and release builds do not share generic instances across
//! crates, so a crate awaiting `Connection::connect` compiles all of that
//! itself: about a quarter of the runtime lib's LLVM IR, compiled again
//! for its unit tests and for the `soma` binary. Here a plain function
//! (neither generic nor async) boxes the future, so those instances are
//! compiled in this crate only and callers poll a `dyn Future`.
//! `docs/ci.md` has the figures.

use std::{future::Future, pin::Pin};

pub use temporalio_client::{Connection, ConnectionOptions, errors::ClientConnectError};

/// The future [`connect`] returns.
pub type Connecting =
    Pin<Box<dyn Future<Output = Result<Connection, ClientConnectError>> + Send + 'static>>;

/// [`Connection::connect`]`(options)`, compiled here.
#[must_use = "a future does nothing unless awaited"]
// The one call the root `clippy.toml` disallows everywhere else.
#[allow(clippy::disallowed_methods)]
pub fn connect(options: ConnectionOptions) -> Connecting {
    Box::pin(Connection::connect(options))
}
