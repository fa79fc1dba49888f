//! The page frame every console page shares (head, navigation, sign-out,
//! skip link), the HTML error page, and small formatting helpers. Pages
//! are rendered on the server with `maud` (escaping by construction: a
//! capsule's or a tenant's text can never become markup).

use std::sync::Arc;

use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, html};

use super::{assets, session::Session};
use crate::daemon::auth::{Principal, TokenScope};

/// Who is looking: the signed-in token and its session. Every page
/// handler gets one (the session middleware puts it in the request).
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token that signed in, as the API would see it.
    pub principal: Principal,
    /// The browser's session (its CSRF token).
    pub session: Arc<Session>,
}

impl Viewer {
    /// The tenant whose data the pages show.
    pub fn tenant(&self) -> &str {
        &self.principal.tenant
    }

    /// Whether it may act with `scope` (as the API decides).
    pub fn may(&self, scope: TokenScope) -> bool {
        self.principal.may(scope)
    }

    /// Whether it sees `tenant`'s data (its own, or any for an operator).
    pub fn sees(&self, tenant: &str) -> bool {
        self.principal.sees_tenant(tenant)
    }
}

/// The navigation's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The marketplace catalog and capsule pages.
    Market,
    /// Runs and run pages.
    Runs,
    /// The ledger, budgets, the bill and the forecast.
    Costs,
    /// The four dashboards over the analytics store.
    Analytics,
    /// An author's submissions, earnings and payouts.
    Author,
    /// Health and load (operator only).
    Operations,
}

impl Section {
    const ALL: [(Self, &'static str, &'static str); 6] = [
        (Self::Market, "/ui/market", "Marketplace"),
        (Self::Runs, "/ui/runs", "Runs"),
        (Self::Costs, "/ui/costs", "Costs"),
        (Self::Analytics, "/ui/analytics", "Analytics"),
        (Self::Author, "/ui/author", "Author"),
        (Self::Operations, "/ui/ops", "Operations"),
    ];
}

/// A page's parts beyond its body.
#[derive(Debug, Default)]
pub struct Extras {
    /// Page scripts (names in [`assets`]), loaded `defer` after
    /// `console.js`. What a script needs from the server goes in `data-*`
    /// attributes of the page's own markup (inline scripts are refused by
    /// the Content-Security-Policy).
    pub scripts: &'static [&'static str],
}

/// A whole page: 200, `text/html`.
pub fn page(viewer: &Viewer, section: Section, title: &str, body: Markup) -> Response {
    page_with(viewer, section, title, Extras::default(), body)
}

/// A whole page with scripts or data attributes.
pub fn page_with(
    viewer: &Viewer,
    section: Section,
    title: &str,
    extras: Extras,
    body: Markup,
) -> Response {
    let markup = frame(Some(viewer), Some(section), title, &extras, body);
    Html(markup.into_string()).into_response()
}

fn frame(
    viewer: Option<&Viewer>,
    section: Option<Section>,
    title: &str,
    extras: &Extras,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Soma" }
                link rel="stylesheet" href=(assets::url("console.css"));
                script src=(assets::url("console.js")) defer {}
                @for script in extras.scripts {
                    script src=(assets::url(script)) defer {}
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "Soma" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Sections" {
                            ul {
                                @for (s, href, label) in Section::ALL {
                                    @if s != Section::Operations || viewer.principal.is_operator() {
                                        li {
                                            a href=(href) aria-current=[(section == Some(s)).then_some("page")] { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/ui/logout" {
                            (csrf_field(viewer))
                            span.who title="tenant" { (viewer.tenant()) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    (body)
                }
            }
        }
    }
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.session.csrf()); }
}

/// An HTML error page with `status` (a 404 looks the same whether the
/// thing is missing or belongs to another tenant).
pub fn error_page(viewer: Option<&Viewer>, status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (status.as_u16()) " · " (title) }
        p.error-message { (message) }
        p { a href="/ui/" { "Back to the console" } }
    };
    let markup = frame(viewer, None, title, &Extras::default(), body);
    (status, Html(markup.into_string())).into_response()
}

/// `1234567` micro-units → `1.234567`.
pub fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Unix ms → `2026-11-29 12:03:04 UTC` (or `—` for 0).
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "—".into(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(money(1_234_567), "1.234567");
        assert_eq!(time(0), "—");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    }
}
