//! The key-value store: the capsule's own namespace and the run's blackboard.
//!
//! Writes made during a call become durable atomically when the call
//! succeeds and are discarded when it fails.

use crate::bindings::soma::capsule::kv as wit;
pub use crate::bindings::soma::capsule::kv::{KvError, Scope};
use serde::{Serialize, de::DeserializeOwned};

impl From<KvError> for crate::Error {
    fn from(e: KvError) -> Self {
        let retryable = matches!(e, KvError::Unavailable(_));
        let err = crate::Error::new("kv", e.to_string());
        if retryable { err.retryable() } else { err }
    }
}

/// Read `key`; `None` if unset.
pub fn get(scope: Scope, key: &str) -> Result<Option<Vec<u8>>, KvError> {
    wit::get(scope, key)
}

/// Set `key` to `value`.
pub fn set(scope: Scope, key: &str, value: &[u8]) -> Result<(), KvError> {
    wit::set(scope, key, value)
}

/// Delete `key`; returns whether it existed.
pub fn delete(scope: Scope, key: &str) -> Result<bool, KvError> {
    wit::delete(scope, key)
}

/// Keys starting with `prefix`, in byte order, at most `limit`.
pub fn list_keys(scope: Scope, prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
    wit::list_keys(scope, prefix, limit)
}

/// Read `key` and decode it as JSON.
pub fn get_json<T: DeserializeOwned>(scope: Scope, key: &str) -> Result<Option<T>, crate::Error> {
    match get(scope, key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            crate::Error::new(
                "kv-decode",
                format!("value of {key:?} is not valid JSON: {e}"),
            )
        }),
    }
}

/// Encode `value` as JSON and store it at `key`.
pub fn set_json<T: Serialize + ?Sized>(
    scope: Scope,
    key: &str,
    value: &T,
) -> Result<(), crate::Error> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| crate::Error::new("kv-encode", format!("could not encode {key:?}: {e}")))?;
    Ok(set(scope, key, &bytes)?)
}
