//! Secrets the operator or the caller's tenant granted this capsule.
//!
//! Name every secret the capsule reads in `describe()`
//! ([`crate::Info::wants_secret`]); the host hands out a secret only if it
//! was asked for, is granted to this capsule and the DAG node allows it.
//! Whatever the call then emits — output, error, logs, events,
//! stdout/stderr, kv values — has each value it read replaced by
//! `[REDACTED:name]`, so use a secret (e.g. in a request header), do not
//! return it.

use crate::bindings::soma::capsule::secrets as wit;
pub use crate::bindings::soma::capsule::secrets::SecretError;

impl From<SecretError> for crate::Error {
    fn from(e: SecretError) -> Self {
        let retryable = matches!(e, SecretError::Unavailable(_));
        let err = crate::Error::new("secret", e.to_string());
        if retryable { err.retryable() } else { err }
    }
}

/// Read secret `name`. `denied` if it is not granted (never a trap),
/// `not-found` if nobody defines it, `unavailable` if the host cannot read
/// or decrypt it.
pub fn get(name: &str) -> Result<String, SecretError> {
    wit::get(name)
}
