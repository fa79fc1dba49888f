//! Console: installing a marketplace listing for the signed-in tenant
//! from its capsule page. The form (`form#install-form`, shown only to a
//! token with the `admin` scope, as `POST /v1/market/installs` needs)
//! states the price and must be accepted (`accept`) before it is sent;
//! `POST /ui/market/{author}/{name}/install` then calls the API's own
//! install handler in-process (pull, author + marketplace signatures
//! verified, pinned for the tenant) and answers a result page
//! (`#install-result`). A refusal is the API's typed error (its status,
//! code and message) as an error page. The CSRF check is the session
//! middleware's, as for every console form.

use std::sync::Arc;

use axum::{
    Extension,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use super::{
    failed,
    layout::{self, Section, Viewer, csrf_field, money},
};
use crate::{
    daemon::{
        Daemon, auth::TokenScope, contract::market::InstalledView, market as api, reply::ApiError,
    },
    market::listing::Price,
};

/// The price in words, for the acceptance box.
fn price_words(price: &Price) -> String {
    match price {
        Price::Free => "free (no marketplace fee)".into(),
        Price::PerCall { micros } => format!("{} per call", money(*micros)),
        Price::PerKiloTokens { micros } => format!("{} per 1,000 LLM tokens", money(*micros)),
        Price::PerEvent { events } => events
            .iter()
            .map(|(name, micros)| format!("{} per `{name}` event", money(*micros)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The install form of `full` (`author/name`) whose newest version is
/// `major`.x, for a viewer with the `admin` scope (nothing otherwise but
/// a hint).
pub(super) fn form(viewer: &Viewer, full: &str, major: u64, price: &Price) -> Markup {
    if !viewer.may(TokenScope::Admin) {
        return html! {
            p.hint #install-scope { "Installing needs a token with the " code { "admin" } " scope (as " code { "POST /v1/market/installs" } ")." }
        };
    }
    html! {
        form #install-form method="post" action=(format!("/ui/market/{full}/install")) {
            (csrf_field(viewer))
            label for="install-range" { "Versions to pin (semver range)" }
            input #install-range type="text" name="range" value=(format!("^{major}")) required spellcheck="false";
            div.check {
                input #install-accept type="checkbox" name="accept" value="1" required;
                label for="install-accept" {
                    "I accept the price: " strong #install-price { (price_words(price)) }
                    ", plus the fuel, time and tokens my tenant's calls use."
                }
            }
            button.primary type="submit" { "Install for my tenant" }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct InstallForm {
    #[serde(default)]
    range: String,
    #[serde(default)]
    accept: String,
}

fn refused(viewer: &Viewer, e: &ApiError) -> Response {
    let field = e
        .field
        .as_deref()
        .map_or(String::new(), |f| format!(" (`{f}`)"));
    layout::error_page(
        Some(viewer),
        e.status,
        &format!("Not installed — {}{field}: {}", e.code, e.message),
    )
}

/// `POST /ui/market/{author}/{name}/install` (scope `admin`).
pub(super) async fn install(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path((author, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if !viewer.may(TokenScope::Admin) {
        return layout::error_page(
            Some(&viewer),
            StatusCode::FORBIDDEN,
            "Installing needs a token with the `admin` scope (as POST /v1/market/installs).",
        );
    }
    let bad = |field: &str, message: &str| {
        layout::error_page(
            Some(&viewer),
            StatusCode::BAD_REQUEST,
            &format!("`{field}`: {message}"),
        )
    };
    let form: InstallForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => return bad("form", &format!("the form cannot be read ({e})")),
    };
    if form.accept != "1" {
        return bad(
            "accept",
            "tick the box accepting the price to install (nothing was installed)",
        );
    }
    let full = format!("{author}/{name}");
    let range = form.range.trim();
    let wanted = if range.is_empty() {
        full.clone()
    } else {
        format!("{full}@{range}")
    };
    let request = json!({ "name": wanted });
    let answer = api::install(
        State(daemon.clone()),
        Extension(viewer.principal.clone()),
        Ok(Bytes::from(request.to_string())),
    )
    .await;
    let response = match answer {
        Ok(r) => r,
        Err(e) => return refused(&viewer, &e),
    };
    let installed: InstalledView = match axum::body::to_bytes(response.into_body(), 1 << 20).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return failed(&viewer, &e),
        },
        Err(e) => return failed(&viewer, &e),
    };
    let pin = &installed.install;
    let body = html! {
        h1 { "Installed " code { (pin.name) } }
        dl.stats #install-result data-version=(pin.version) data-digest=(pin.digest) {
            div { dt { "Version" } dd { (pin.version) } }
            div { dt { "Range" } dd { code { (pin.range) } } }
            div { dt { "Before" } dd #install-previous { @if let Some(p) = &installed.previous { (p) } @else { "not installed" } } }
            div { dt { "Component" } dd { @if installed.cached { "from this node's cache" } @else { "pulled" } } }
        }
        p { "Manifest " code.digest { (pin.digest) } " — author and marketplace signatures verified." }
        p { "Your tenant's runs now call it as " code { (api::MARKET_PREFIX) (pin.name) } "." }
        p {
            a href=(format!("/ui/market/{full}")) { "Back to " (full) }
            " · "
            a href=(format!("/ui/market/{full}#run")) { "Run it" }
        }
    };
    layout::page(&viewer, Section::Market, &format!("Installed {full}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_read_as_words() {
        assert_eq!(price_words(&Price::Free), "free (no marketplace fee)");
        assert_eq!(
            price_words(&Price::PerCall { micros: 2500 }),
            "0.002500 per call"
        );
    }
}
