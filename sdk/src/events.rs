//! Analytics and progress events, returned with the call's outcome.

use serde::Serialize;

use crate::bindings::soma::capsule::events as wit;

/// Emit event `name` with a JSON `payload`.
///
/// Encoding cannot fail for ordinary data; if it does, the event carries
/// `null`. Events past the host's per-call cap are dropped and counted.
pub fn emit<T: Serialize + ?Sized>(name: &str, payload: &T) {
    let payload = serde_json::to_string(payload).unwrap_or_else(|_| "null".to_owned());
    wit::emit(name, &payload);
}

/// Emit a progress event: `done` of `total` steps, with a note.
pub fn progress(done: u64, total: u64, note: &str) {
    emit(
        "progress",
        &serde_json::json!({ "done": done, "total": total, "note": note }),
    );
}
