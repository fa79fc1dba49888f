//! The console's manners, in a real headless Chromium over the seeded data
//! (`soma_tests::console_seed`): every main page at phone width (390×844)
//! and at 1280 px has no horizontal overflow and a label for every form
//! field; the keyboard alone (Tab) reaches sign-in, the catalog's search,
//! the capsule's run-it button and a live run's cancel button; a live run
//! page keeps its graph box and node boxes in place while a node changes
//! state and the run ends (no layout shift); and the capsule page's
//! install button installs for the signed-in tenant (price accepted
//! first), refuses without the acceptance, and is absent and refused for
//! a token without the `admin` scope.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use soma_tests::{
    browser::{Browser, Key, Viewport},
    console_seed::{self, CAPSULE},
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// Form fields (not hidden, not buttons) without a label: `label[for]`,
/// an enclosing `label`, or `aria-label`/`aria-labelledby`.
const UNLABELLED: &str = "return Array.from(document.querySelectorAll('input, select, textarea'))\
    .filter(e => e.type !== 'hidden' && e.type !== 'submit' && e.type !== 'button')\
    .filter(e => !(e.id && document.querySelector('label[for=\"' + e.id + '\"]'))\
        && !e.closest('label') && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))\
    .map(e => e.outerHTML.slice(0, 120));";

fn check_page(b: &mut Browser, path: &str, ready: &str) {
    for viewport in [Viewport::Phone, Viewport::Desktop] {
        b.set_viewport(viewport);
        b.goto(path);
        b.wait_for(ready);
        let overflow = b.script(
            "const d = document.documentElement; return [d.scrollWidth, window.innerWidth];",
            vec![],
        );
        let (scroll, inner) = (overflow[0].as_u64(), overflow[1].as_u64());
        if scroll > inner {
            let wide = b.script(
                "return Array.from(document.querySelectorAll('body *'))\
                   .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)\
                   .slice(0, 8).map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' +\
                     Math.round(e.getBoundingClientRect().right) + ': ' + (e.textContent || '').slice(0, 60));",
                vec![],
            );
            panic!(
                "{path} at {}: scrollWidth {scroll:?} > innerWidth {inner:?}; too wide: {wide:#}",
                viewport.name()
            );
        }
        let unlabelled = b.script(UNLABELLED, vec![]);
        assert_eq!(
            unlabelled,
            Value::Array(Vec::new()),
            "{path}: form fields without a label"
        );
    }
}

/// Press Tab until `pred` (a script returning a boolean about
/// `document.activeElement`) holds; at most `max` presses.
fn tab_to(b: &Browser, what: &str, pred: &str, max: usize) {
    for _ in 0..max {
        if b.script(
            &format!("const e = document.activeElement; return !!({pred});"),
            vec![],
        ) == Value::Bool(true)
        {
            return;
        }
        b.press(Key::Tab);
    }
    panic!("Tab never reached {what} (focus on {})", b.focused());
}

/// The page's `h1` text (empty while there is none).
fn h1(b: &Browser) -> String {
    b.script(
        "const h = document.querySelector('h1'); return h ? h.textContent : '';",
        vec![],
    )
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// `[x, y, width, height]` of the elements `css` matches, rounded.
fn rects(b: &Browser, css: &str) -> Vec<Vec<i64>> {
    let v = b.script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => {\
           const r = e.getBoundingClientRect();\
           return [r.x, r.y + window.scrollY, r.width, r.height].map(Math.round); });",
        vec![json!(css)],
    );
    serde_json::from_value(v).expect("rects")
}

#[test]
fn pages_fit_phones_have_labels_keyboard_paths_no_layout_shift_and_install() {
    let seeded = console_seed::seed(bin());
    let d = &seeded.daemon;

    // --- Keyboard only: sign in.
    let mut b = Browser::start(&d.url);
    b.timeout = Duration::from_secs(30);
    b.goto("/ui/login");
    b.wait_for("input#token");
    tab_to(&b, "the token field", "e.id === 'token'", 10);
    b.fill("input#token", &seeded.buyer);
    b.press(Key::Enter);
    b.wait_for_path("signed in", |p| p.starts_with("/ui/") && p != "/ui/login");
    assert_eq!(b.text("span.who"), "buyer");
    // The search box and the run-it button.
    b.goto("/ui/market");
    b.wait_for("input#q");
    tab_to(&b, "the search box", "e.id === 'q'", 40);
    b.goto(&format!("/ui/market/{CAPSULE}"));
    b.wait_for("form#run-form");
    tab_to(
        &b,
        "the run-it button",
        "e.type === 'submit' && e.closest('#run-form')",
        80,
    );

    // --- Every main page, phone and desktop: no overflow, every field labelled.
    let pages = [
        ("/ui/market".to_owned(), "input#q"),
        ("/ui/market?q=summarize".to_owned(), "article.listing"),
        (format!("/ui/market/{CAPSULE}"), "#cost-card"),
        ("/ui/runs".to_owned(), "table#runs"),
        ("/ui/runs?failed=1".to_owned(), "table#runs"),
        ("/ui/runs/new".to_owned(), "form#new-run"),
        (format!("/ui/runs/{}", seeded.kamachiq_run), "#graph svg"),
        (format!("/ui/runs/{}", seeded.failed_run), "#run-status"),
        ("/ui/costs".to_owned(), "#month-total"),
        ("/ui/analytics/tenant?range=week".to_owned(), "#spend"),
        ("/ui/analytics/capsule".to_owned(), "#cost-cards"),
        ("/ui/author".to_owned(), "#submissions"),
    ];
    for (path, ready) in &pages {
        check_page(&mut b, path, ready);
    }

    // --- A live run: Tab reaches Cancel; the page keeps its boxes while a
    // node changes state and the run ends.
    // `spin` loops until its 12 s deadline: long enough that the Tab walk
    // reaches Cancel while it runs on a loaded 2-core CI machine (4 s was
    // not, and the cancel form was gone before the walk got there).
    let spec = json!({
        "name": "spins",
        "capsules": {"l": "hostile-loop", "e": "echo"},
        "nodes": [
            {"id": "spin", "capsule": "l", "timeout_ms": 12000, "retries": {"max": 0}},
            {"id": "after", "capsule": "e", "needs": ["spin"]},
        ],
    });
    let (s, v) = d.post("/v1/runs", &seeded.buyer, &json!({ "dag": spec }));
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    b.set_viewport(Viewport::Desktop);
    b.goto(&format!("/ui/runs/{run}"));
    b.wait_for("#graph svg g.node[data-node=spin]");
    b.wait_until("spin running", |b| {
        b.data("#graph g.node[data-node=spin]", "status").as_deref() == Some("running")
    });
    tab_to(
        &b,
        "the cancel button",
        "e.type === 'submit' && e.closest('#cancel-form')",
        60,
    );
    let graph_before = rects(&b, "#graph");
    let nodes_before = rects(&b, "#graph g.node rect");
    let heading_before = rects(&b, "#timeline-h");
    assert!(!nodes_before.is_empty());
    b.wait_until("spin failed, live", |b| {
        b.data("#graph g.node[data-node=spin]", "status").as_deref() == Some("failed")
    });
    b.wait_until("the run's end swapped in", |b| {
        b.data("#graph", "live").as_deref() == Some("0")
    });
    assert_eq!(
        b.data("#run-status", "status").as_deref(),
        Some("failed"),
        "the run failed fast"
    );
    assert!(!b.exists("#cancel-form"), "the cancel form is gone");
    assert_eq!(
        rects(&b, "#graph"),
        graph_before,
        "the graph box did not move"
    );
    assert_eq!(
        rects(&b, "#graph g.node rect"),
        nodes_before,
        "the node boxes kept their place and size"
    );
    assert_eq!(
        rects(&b, "#timeline-h"),
        heading_before,
        "what follows the graph did not move"
    );

    // --- Install from the capsule page: price shown, accepted, installed.
    b.goto(&format!("/ui/market/{CAPSULE}"));
    b.wait_for("form#install-form");
    assert!(
        b.text("#install-price").contains("per call"),
        "{}",
        b.text("#install-price")
    );
    // Without the acceptance (the browser's `required` removed): refused, nothing installed.
    b.script(
        "document.querySelector('#install-accept').removeAttribute('required'); return null;",
        vec![],
    );
    b.click("form#install-form button[type=submit]");
    b.wait_until("the 400 page", |b| h1(b).starts_with("400"));
    assert!(
        b.text(".error-message").contains("accept"),
        "{}",
        b.text(".error-message")
    );
    b.goto(&format!("/ui/market/{CAPSULE}"));
    b.wait_for("form#install-form");
    b.click("#install-accept");
    b.click("form#install-form button[type=submit]");
    b.wait_for("#install-result");
    let version = b.data("#install-result", "version").expect("version");
    let (s, installs) = d.get("/v1/market/installs", &seeded.buyer);
    assert_eq!(s, 200, "{installs}");
    let pinned = installs
        .as_array()
        .expect("installs")
        .iter()
        .find(|i| i["name"] == CAPSULE)
        .unwrap_or_else(|| panic!("installed: {installs}"));
    assert_eq!(pinned["version"].as_str(), Some(version.as_str()));
    assert_eq!(
        b.data("#install-result", "digest").as_deref(),
        pinned["digest"].as_str()
    );
    b.screenshot("installed");
    // A bad range: the API's typed error, rendered.
    b.goto(&format!("/ui/market/{CAPSULE}"));
    b.wait_for("form#install-form");
    b.fill("#install-range", "^99");
    b.click("#install-accept");
    b.click("form#install-form button[type=submit]");
    b.wait_until("the refusal page", |b| h1(b).starts_with("404"));
    assert!(
        b.text(".error-message").contains("Not installed"),
        "{}",
        b.text(".error-message")
    );
    drop(b);

    // --- Without `admin`: no form, and the POST is refused.
    let other = Browser::start(&d.url);
    other.sign_in(&seeded.other);
    other.goto(&format!("/ui/market/{CAPSULE}"));
    other.wait_for("#install");
    assert!(
        !other.exists("form#install-form"),
        "no install form without admin"
    );
    assert!(other.exists("#install-scope"));
    other.script(
        "const f = document.createElement('form'); f.method = 'post';\
         f.action = '/ui/market/' + arguments[0] + '/install';\
         const c = document.createElement('input'); c.type = 'hidden'; c.name = 'csrf';\
         c.value = document.querySelector('input[name=csrf]').value; f.append(c);\
         const a = document.createElement('input'); a.type = 'hidden'; a.name = 'accept';\
         a.value = '1'; f.append(a); document.body.append(f); f.submit(); return null;",
        vec![json!(CAPSULE)],
    );
    other.wait_until("the 403 page", |b| h1(b).starts_with("403"));

    // --- The operator's pages.
    let mut ops = Browser::start(&d.url);
    ops.sign_in(&seeded.ops);
    check_page(&mut ops, "/ui/ops", "#recent-errors");
    check_page(&mut ops, "/ui/ops/reviews", "#review-count");
    check_page(&mut ops, "/ui/analytics/platform", "#latency");
    check_page(&mut ops, "/ui/analytics/admin", "#outbox");
}
