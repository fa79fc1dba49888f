//! The console's static files, compiled into the binary (no Node
//! toolchain, nothing to deploy beside `soma`). Each is served at
//! `/ui/static/NAME?v=HASH` with a year of caching: the hash of its bytes
//! changes the URL when the file changes.

use std::sync::OnceLock;

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// (name, content type, bytes). A page script is added here and named in
/// its page's [`super::layout::Extras::scripts`].
const FILES: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
    (
        "runs.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/runs.js"),
    ),
];

fn hashes() -> &'static Vec<String> {
    static HASHES: OnceLock<Vec<String>> = OnceLock::new();
    HASHES.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, _, body)| {
                use sha2::Digest as _;
                hex::encode(&sha2::Sha256::digest(body.as_bytes())[..6])
            })
            .collect()
    })
}

/// The URL of asset `name` (with its content hash).
pub fn url(name: &str) -> String {
    match FILES.iter().position(|(n, _, _)| *n == name) {
        Some(i) => format!("/ui/static/{name}?v={}", hashes()[i]),
        None => format!("/ui/static/{name}"),
    }
}

/// `GET /ui/static/{name}`.
pub(super) async fn serve(Path(name): Path<String>) -> Response {
    let Some((_, kind, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}
