//! The web console's core in a real headless Chromium (WebDriver through
//! Debian's `chromedriver`, see `soma_tests::browser`): sign-in through
//! the form, a wrong token, a form whose CSRF field a script removed,
//! sign-out (and that back / reload do not bring a signed-in page back),
//! the security headers on every kind of answer, no CSP violation in the
//! browser's log, the skip link for keyboard users, and no sideways
//! scrolling at phone width. Screenshots go to
//! `target/console-screenshots/`.

use std::path::Path;

use soma_tests::{
    browser::{Browser, Key, Viewport},
    console_seed::Seeded,
    daemon::{self as harness, DaemonProcess as Daemon},
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// A daemon over a fresh data directory and an `acme` token (run, read).
fn daemon() -> (tempfile::TempDir, Daemon, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = harness::token(bin(), dir.path(), "acme", "run,read");
    let d = Daemon::start(bin(), dir.path(), "", "");
    (dir, d, token)
}

/// Whether the page shown is a signed-in one (the frame's sign-out form
/// and tenant name).
fn signed_in(b: &Browser) -> bool {
    b.exists("form.signout") || b.exists("span.who")
}

#[test]
fn sign_in_wrong_token_csrf_refusal_and_sign_out_in_a_real_browser() {
    let (_dir, d, token) = daemon();
    let mut b = Browser::start(&d.url);

    // Signed out, a console page sends the browser to the sign-in form,
    // keeping where it was going.
    b.goto("/ui/");
    let path = b.wait_for_path("the sign-in page", |p| p.starts_with("/ui/login"));
    assert!(path.contains("next="), "{path}");
    b.wait_for("label[for=token]");
    b.screenshot("login");

    // A wrong token: the sign-in page again, with the error.
    b.submit_login("soma_not-a-token");
    let error = b.text(".error-message");
    assert!(
        error.contains("unknown, revoked or expired"),
        "wrong-token message: {error}"
    );
    assert!(b.path().starts_with("/ui/login"), "{}", b.path());
    assert!(!signed_in(&b));
    assert_eq!(b.cookie("soma_session"), None);
    b.screenshot("login-error");

    // The right token through the real form: a console page, signed in.
    b.sign_in(&token);
    let landed = b.path();
    assert!(
        landed.starts_with("/ui/") && !landed.starts_with("/ui/login"),
        "landed on {landed}"
    );
    assert_eq!(b.text("span.who"), "acme");
    let session = b.cookie("soma_session").expect("session cookie");
    assert!(!session.is_empty());
    // HttpOnly: the page's scripts cannot read it.
    let visible = b.script("return document.cookie;", vec![]);
    assert!(
        !visible
            .as_str()
            .unwrap_or_default()
            .contains("soma_session"),
        "the session cookie is readable by scripts: {visible}"
    );
    b.screenshot("signed-in");

    // A state-changing form with its CSRF field removed by a script in
    // the page: the 403 page, and the session is untouched.
    let removed = b.script(
        "const f = document.querySelector('form.signout input[name=csrf]');\
         if (!f) return false; f.remove(); return true;",
        vec![],
    );
    assert_eq!(
        removed,
        serde_json::Value::Bool(true),
        "no csrf field to remove"
    );
    b.click("form.signout button[type=submit]");
    b.wait_until("the 403 page", |b| b.source().contains("403"));
    assert!(b.text("h1").starts_with("403"), "{}", b.text("h1"));
    assert!(
        b.text(".error-message").contains("CSRF"),
        "{}",
        b.text(".error-message")
    );
    b.screenshot("csrf-refused");
    assert_eq!(b.cookie("soma_session").as_deref(), Some(session.as_str()));
    b.goto("/ui/");
    b.wait_for("form.signout");
    assert!(signed_in(&b), "the refused form signed the browser out");

    // Sign out with the real form: the sign-in page, the cookie gone.
    b.click("form.signout button[type=submit]");
    b.wait_for_path("the sign-in page", |p| p.starts_with("/ui/login"));
    assert_eq!(b.cookie("soma_session"), None);
    // Back does not bring a signed-in page back (pages are no-store, the
    // session is gone on the server), nor does reloading it.
    b.back();
    b.wait_until("a signed-out page after back", |b| !signed_in(b));
    b.reload();
    b.wait_until("a signed-out page after reload", |b| !signed_in(b));
    // The old cookie is dead on the server too: replaying it is refused.
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let replay = client
        .get(format!("{}/ui/", d.url))
        .header("cookie", format!("soma_session={session}"))
        .send()
        .expect("replay");
    assert!(replay.status().is_redirection(), "{}", replay.status());
    let to = replay
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(to.starts_with("/ui/login"), "replayed cookie went to {to}");
    // And a console page asked for now is the sign-in form.
    b.goto("/ui/");
    b.wait_for_path("the sign-in page", |p| p.starts_with("/ui/login"));
    b.wait_for("#token");
}

#[test]
fn every_answer_has_the_csp_no_violations_skip_link_and_phone_width() {
    let (_dir, d, token) = daemon();

    // Every kind of /ui answer carries the security headers: a page, a
    // redirect, an error page, a form refusal, a static file.
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let css = {
        let login = client
            .get(format!("{}/ui/login", d.url))
            .send()
            .expect("login page")
            .text()
            .expect("body");
        let start = login
            .find("/ui/static/console.css")
            .expect("stylesheet link");
        let end = login[start..].find('"').map_or(login.len(), |e| start + e);
        login[start..end].replace("&amp;", "&")
    };
    let answers = [
        ("GET", "/ui/login", 200),
        ("GET", "/ui", 303),
        ("GET", "/ui/", 303),
        ("GET", "/ui/no-such-page", 404),
        ("GET", css.as_str(), 200),
        ("POST", "/ui/login", 403),
        ("POST", "/ui/logout", 401),
    ];
    for (method, path, status) in answers {
        let r = client
            .request(method.parse().expect("method"), format!("{}{path}", d.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(if method == "POST" { "token=x" } else { "" })
            .send()
            .expect("request");
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no Content-Security-Policy"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{method} {path}: CSP {csp}");
        }
        assert_eq!(
            h.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{method} {path}"
        );
        // Not `no-referrer`: with it the browser's form posts carry
        // `Origin: null` and the origin check refuses every one.
        assert_eq!(
            h.get("referrer-policy").map(|v| v.as_bytes()),
            Some(&b"same-origin"[..]),
            "{method} {path}"
        );
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
    }

    // In the browser: the pages load without one CSP violation (no inline
    // script or style slipped in), signed out and signed in.
    let mut b = Browser::start(&d.url);
    b.goto("/ui/login");
    b.wait_for("#token");
    b.sign_in(&token);
    b.goto("/ui/no-such-page");
    b.wait_for("h1");
    let log = b.console_log();
    let violations: Vec<_> = log.iter().filter(|e| e.is_csp_violation()).collect();
    assert!(violations.is_empty(), "CSP violations: {violations:#?}");
    let script_errors: Vec<_> = log
        .iter()
        .filter(|e| e.level == "SEVERE" && e.source == "javascript")
        .collect();
    assert!(
        script_errors.is_empty(),
        "script errors: {script_errors:#?}"
    );
    // The log really reports violations: an inline script injected now is
    // refused by the policy and shows up.
    b.script(
        "const s = document.createElement('script');\
         s.textContent = 'window.__inline = 1';\
         document.body.appendChild(s); return null;",
        vec![],
    );
    b.wait_until("the injected inline script's CSP report", |b| {
        b.console_log().iter().any(|e| e.is_csp_violation())
    });
    assert_eq!(
        b.script("return window.__inline === undefined;", vec![]),
        serde_json::Value::Bool(true),
        "an inline script ran despite the CSP"
    );

    // Keyboard: the first Tab reaches the skip link, and following it puts
    // the focus on the page's main content.
    b.goto("/ui/no-such-page");
    b.wait_for("main#main");
    b.press(Key::Tab);
    assert_eq!(b.focused(), "a.skip", "the first Tab stop");
    b.screenshot("skip-link");
    b.press(Key::Enter);
    b.wait_until("the focus on main", |b| b.focused() == "main#main");

    // Phone width: the 404 page (and the sign-in page) fit, no sideways
    // scroll.
    b.set_viewport(Viewport::Phone);
    b.goto("/ui/no-such-page");
    b.wait_for("h1");
    assert_eq!(
        b.script("return window.innerWidth;", vec![]),
        serde_json::json!(390),
        "the phone viewport"
    );
    assert!(
        !b.scrolls_horizontally(),
        "the 404 page scrolls sideways at 390 px"
    );
    b.screenshot("not-found");
    b.set_viewport(Viewport::Desktop);
    assert!(
        !b.scrolls_horizontally(),
        "the 404 page scrolls sideways at 1280 px"
    );
}

/// The acceptance test's data (`soma_tests::console_seed`): made through
/// the API, and what the pages will be checked against holds.
#[test]
fn the_acceptance_seed_makes_runs_a_priced_capsule_and_ledger_history() {
    use soma_tests::console_seed::{self, CAPSULE, PAID_CALLS, PRICE_MICROS};
    let s = console_seed::seed(bin());
    let d = &s.daemon;
    let (st, v) = d.get(&format!("/v1/runs/{}", s.kamachiq_run), &s.buyer);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "succeeded", "{v}");
    let (st, v) = d.get(&format!("/v1/runs/{}", s.failed_run), &s.buyer);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v.to_string().contains("out-of-fuel"), "{v}");
    // Tenant isolation the pages must copy: the other tenant's run is a
    // 404 for the buyer, and the buyer's for the other tenant.
    assert_eq!(d.get(&format!("/v1/runs/{}", s.other_run), &s.buyer).0, 404);
    assert_eq!(
        d.get(&format!("/v1/runs/{}", s.failed_run), &s.other).0,
        404
    );
    // The capsule is found, priced, and its cost card counts the calls.
    let (st, v) = d.get("/v1/market/search?q=summarize", &s.buyer);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hits"][0]["listing"], CAPSULE, "{v}");
    let (st, v) = d.get(&format!("/v1/market/listings/{CAPSULE}"), &s.buyer);
    assert_eq!(st, 200, "{v}");
    let card = &v["versions"][0]["cost_card"];
    assert_eq!(card["calls"].as_u64(), Some(PAID_CALLS as u64), "{v}");
    // The ledger holds the fees and the LLM tokens of the buyer's runs.
    let (st, entries) = d.get("/v1/ledger?limit=100000", &s.buyer);
    assert_eq!(st, 200, "{entries}");
    let entries = entries.as_array().expect("entries").clone();
    let fees: Vec<_> = entries
        .iter()
        .filter(|e| e["kind"] == "marketplace-fee")
        .collect();
    assert_eq!(fees.len(), PAID_CALLS, "{fees:?}");
    assert!(
        fees.iter()
            .all(|e| e["cost_micros"].as_u64() == Some(PRICE_MICROS))
    );
    let kamachiq_tokens = entries
        .iter()
        .filter(|e| e["run"] == s.kamachiq_run.as_str() && e["model"].is_string())
        .count();
    assert!(
        kamachiq_tokens > 0,
        "the KAMACHIQ run's LLM calls were charged"
    );
    let total: u64 = entries
        .iter()
        .filter_map(|e| e["cost_micros"].as_u64())
        .sum();
    // `soma bill` (the daemon stopped: it owns the database) agrees with
    // the API's ledger for the month: what `#month-total` must show.
    let data = s.data();
    let month = console_seed::this_month();
    let Seeded { daemon, .. } = s;
    assert!(daemon.stop().success());
    let bill = console_seed::soma_bill(bin(), &data, "buyer", &month);
    assert_eq!(bill["total_micros"].as_u64(), Some(total), "{bill}");
    assert!(total >= PAID_CALLS as u64 * PRICE_MICROS, "{bill}");
}

/// The bench's bulk data (`soma_tests::console_bulk`): the copied runs and
/// the published listings read back through the daemon like real ones.
#[test]
fn bulk_seeded_runs_and_listings_read_like_real_ones() {
    use soma_runtime::{dag::journal::Journal, store::DataDir};
    use soma_tests::console_bulk::{self, VIEWER};
    let dir = tempfile::tempdir().expect("tempdir");
    let bulk = console_bulk::seed(bin(), dir.path(), 40, 25);
    assert_eq!((bulk.runs, bulk.listings), (40, 25));
    let runs = Journal::new(DataDir::new(dir.path()).database().clone())
        .runs()
        .expect("runs");
    assert_eq!(runs.len(), 40);
    let mine: Vec<_> = runs.iter().filter(|r| r.tenant == VIEWER).collect();
    let failed = runs
        .iter()
        .filter(|r| r.status == soma_runtime::dag::status::RunPhase::Failed)
        .count();
    assert!(mine.len() >= 20 && mine.len() < 40, "{} of 40", mine.len());
    assert!(failed >= 4, "{failed} failed");
    let theirs = runs
        .iter()
        .find(|r| r.tenant != VIEWER)
        .expect("another tenant's");
    let d = Daemon::start(bin(), dir.path(), "", "");
    for r in mine.iter().take(6) {
        let (s, v) = d.get(&format!("/v1/runs/{}", r.run), &bulk.token);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], r.status.to_string(), "{v}");
        assert_eq!(v["tenant"], VIEWER, "{v}");
    }
    assert_eq!(
        d.get(&format!("/v1/runs/{}", theirs.run), &bulk.token).0,
        404
    );
    let (s, v) = d.get("/v1/market/search?limit=1", &bulk.token);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["total"].as_u64(), Some(25), "{v}");
    let (s, v) = d.get(
        &format!("/v1/market/listings/{}", bulk.listing),
        &bulk.token,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["versions"][0]["state"], "published", "{v}");
}
