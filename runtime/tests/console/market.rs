//! The console's marketplace pages and author console against a real
//! `soma daemon`, a real `docker-registry` and real keys, fetched with a
//! real HTTP client signed in through the login form (cookie + CSRF), with
//! two tenants: `tenant-a` authors `acme/calc` (priced per call, its
//! README hostile), `acme/adder` (free) and an unpublished `acme/draft`;
//! `tenant-b` buys `acme/calc` and authors an unpublished `beta/tool`.
//!
//! Proved here: search and facets filter the catalog; the capsule page's
//! cost card holds the numbers `GET /v1/market/listings` answers; the
//! run-it form refuses schema-invalid input naming the field, refuses a
//! token without `run`, and runs valid input as the tenant (charged the
//! listing's fee in the ledger); unpublished versions and author pages
//! show only the viewer's tenant's things (another's is the 404 page); the
//! README's script, script URLs and event handlers come out inert; the
//! operator's review actions work and a tenant's are refused.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use soma_runtime::verify::KeyPair;
use soma_tests::{
    daemon::{DaemonProcess, token},
    market::{author_body, push_signed},
    registry::Registry,
};

const PASSWORD: &str = "console-market-test";
/// The calculator's fee per call, micro-units.
const PRICE: u64 = 2500;

const HOSTILE_README: &str = "# Calculator\n\nEvaluates `+ - * / ^`.\n\n\
<script>alert('readme')</script>\n\n\
<img src=x onerror=alert(2)>\n\n\
[docs](javascript:alert(3)) and [home](https://example.com/calc)\n";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

fn listing(name: &str, version: &str, category: &str, price: Value, readme: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "summary": format!("{name}: evaluate arithmetic expressions."),
        "readme": readme,
        "keywords": ["arithmetic"],
        "categories": [category],
        "license": "Apache-2.0",
        "examples": [{"input": {"expr": "2*(3+4)^2"}}],
        "price": price,
    })
}

const FORM: &str = "application/x-www-form-urlencoded";

/// A form's body, URL-encoded.
fn form_body(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).expect("form")
}

/// A browser: cookies by hand (no redirects followed), the session's CSRF
/// token read from the page.
struct Browser {
    client: reqwest::blocking::Client,
    base: String,
    session: String,
}

/// An answer: status, headers, body.
struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl Browser {
    /// Sign in with `token` through `/ui/login`.
    fn sign_in(base: &str, token: &str) -> Self {
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .expect("client");
        let form = client
            .get(format!("{base}/ui/login"))
            .send()
            .expect("login form");
        let nonce = set_cookie(form.headers(), "soma_login").expect("login cookie");
        let signed = client
            .post(format!("{base}/ui/login"))
            .header("cookie", format!("soma_login={nonce}"))
            .header("content-type", FORM)
            .body(form_body(&[
                ("token", token),
                ("csrf", &nonce),
                ("next", "/ui/market"),
            ]))
            .send()
            .expect("sign in");
        assert_eq!(signed.status().as_u16(), 303, "sign-in redirects");
        let session = set_cookie(signed.headers(), "soma_session").expect("session cookie");
        Self {
            client,
            base: base.to_owned(),
            session,
        }
    }

    fn answer(resp: reqwest::blocking::Response) -> Page {
        Page {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().expect("body"),
        }
    }

    fn get(&self, path: &str) -> Page {
        Self::answer(
            self.client
                .get(format!("{}{path}", self.base))
                .header("cookie", format!("soma_session={}", self.session))
                .send()
                .expect("get"),
        )
    }

    /// POST a form (the CSRF field added from `from`'s page).
    fn post(&self, path: &str, from: &Page, fields: &[(&str, &str)]) -> Page {
        let csrf = attr_after(&from.text, "name=\"csrf\" value=\"").expect("csrf field");
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", &csrf));
        Self::answer(
            self.client
                .post(format!("{}{path}", self.base))
                .header("cookie", format!("soma_session={}", self.session))
                .header("content-type", FORM)
                .body(form_body(&form))
                .send()
                .expect("post"),
        )
    }
}

/// The text after `marker` up to the next `"`, HTML entities decoded.
fn attr_after(text: &str, marker: &str) -> Option<String> {
    let start = text.find(marker)? + marker.len();
    let end = text[start..].find('"')? + start;
    Some(
        text[start..end]
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

/// The listings (`article.listing[data-name]`) on a catalog page.
fn listed(page: &Page) -> Vec<String> {
    page.text
        .match_indices("class=\"listing card\" data-name=\"")
        .filter_map(|(i, m)| attr_after(&page.text[i..], m))
        .collect()
}

/// `dd[data-field=F]`'s `data-value` on the capsule page.
fn card_value(page: &Page, field: &str) -> String {
    attr_after(&page.text, &format!("data-field=\"{field}\" data-value=\""))
        .unwrap_or_else(|| panic!("no {field} in the cost card"))
}

/// The section with `id` (up to the next `</section>`).
fn section<'a>(page: &'a Page, id: &str) -> &'a str {
    let start = page
        .text
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &page.text[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

struct Setup {
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Setup {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

#[test]
fn marketplace_pages_and_author_console_for_two_tenants() {
    let setup = Setup {
        registry: Registry::start(),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let data = setup.data();
    std::fs::create_dir_all(&data).expect("data");
    let a = token(bin(), &data, "tenant-a", "admin");
    let b = token(bin(), &data, "tenant-b", "admin");
    let b_reader = token(bin(), &data, "tenant-b", "read");
    let ops = token(bin(), &data, "ops", "operator");
    let market_key = KeyPair::generate();
    let (private, public) = market_key
        .save(&setup.dir.path().join("market"), PASSWORD.as_bytes())
        .expect("market key");
    let extra = format!(
        "[market]\nkey = {:?}\npublic_key = {:?}\nregistry = {:?}\n",
        private.display().to_string(),
        public.display().to_string(),
        setup.registry.host()
    );
    let d = DaemonProcess::start_with_env(bin(), &data, "", &extra, &[("SOMA_PASSWORD", PASSWORD)]);

    // --- Seed: tenant-a's namespace and three listings, tenant-b's one.
    let acme = KeyPair::generate();
    let beta = KeyPair::generate();
    assert_eq!(
        d.post(
            "/v1/market/authors",
            &a,
            &author_body("acme", &acme, "tenant-a")
        )
        .0,
        201
    );
    assert_eq!(
        d.post(
            "/v1/market/authors",
            &b,
            &author_body("beta", &beta, "tenant-b")
        )
        .0,
        201
    );
    let submit = |token: &str, key: &KeyPair, body: Value| {
        let name = body["name"].as_str().expect("name").to_owned();
        let version = body["version"].as_str().expect("version").to_owned();
        let reference = push_signed(
            &setup.registry,
            &name,
            &version,
            soma_capsules::CALCULATOR_COMPONENT,
            key,
        );
        let (s, v) = d.post(
            "/v1/market/submissions",
            token,
            &json!({"listing": body, "reference": reference}),
        );
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().expect("id").to_owned()
    };
    let calc = submit(
        &a,
        &acme,
        listing(
            "acme/calc",
            "1.0.0",
            "math",
            json!({"model": "per-call", "micros": PRICE}),
            HOSTILE_README,
        ),
    );
    let adder = submit(
        &a,
        &acme,
        listing(
            "acme/adder",
            "1.0.0",
            "tools",
            json!({"model": "free"}),
            "# Adder",
        ),
    );
    let draft = submit(
        &a,
        &acme,
        listing(
            "acme/draft",
            "0.1.0",
            "math",
            json!({"model": "free"}),
            "# Draft",
        ),
    );
    let tool = submit(
        &b,
        &beta,
        listing(
            "beta/tool",
            "0.1.0",
            "tools",
            json!({"model": "free"}),
            "# Tool",
        ),
    );
    for id in [&calc, &adder] {
        let (s, v) = d.post(
            &format!("/v1/market/submissions/{}/publish", id.replace('/', "%2F")),
            &ops,
            &json!({}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = d.post("/v1/market/installs", &b, &json!({"name": "acme/calc"}));
    assert_eq!(s, 201, "{v}");

    let browser_b = Browser::sign_in(&d.url, &b);
    let browser_a = Browser::sign_in(&d.url, &a);

    // --- Catalog: search and facets filter; badges and prices shown.
    let all = browser_b.get("/ui/market");
    assert_eq!(all.status, 200, "{}", all.text);
    let mut names = listed(&all);
    names.sort();
    assert_eq!(names, ["acme/adder", "acme/calc"], "published only");
    assert!(all.text.contains("id=\"q\"") && all.text.contains("name=\"q\""));
    for facet in [
        "category",
        "kind",
        "price",
        "capability",
        "imports",
        "review",
    ] {
        assert!(
            all.text.contains(&format!("data-facet=\"{facet}\"")),
            "facet {facet}"
        );
    }
    assert!(all.text.contains("href=\"/ui/market/acme/calc\""));
    assert!(all.text.contains("0.002500 per call"), "the calc's price");
    assert!(all.text.contains("badge ok verified"), "verified badge");
    assert_eq!(
        listed(&browser_b.get("/ui/market?category=tools")),
        ["acme/adder"]
    );
    assert_eq!(
        listed(&browser_b.get("/ui/market?price=per-call")),
        ["acme/calc"]
    );
    assert_eq!(listed(&browser_b.get("/ui/market?q=calc")), ["acme/calc"]);
    assert!(listed(&browser_b.get("/ui/market?category=tools&price=per-call")).is_empty());
    let checked = browser_b.get("/ui/market?category=tools");
    assert!(
        checked.text.contains("value=\"tools\" checked"),
        "the chosen facet stays checked"
    );
    let bad = browser_b.get("/ui/market?colour=red");
    assert_eq!(bad.status, 400);
    assert!(bad.text.contains("colour"), "{}", bad.text);
    let bad = browser_b.get("/ui/market?kind=teapot");
    assert_eq!(bad.status, 400);
    assert!(bad.text.contains("kind"), "{}", bad.text);
    assert_eq!(browser_b.get("/ui/market?per=0").status, 400);

    // --- Capsule page: every section, the README neutralised.
    let page = browser_b.get("/ui/market/acme/calc");
    assert_eq!(page.status, 200, "{}", page.text);
    for id in [
        "readme",
        "versions",
        "signatures",
        "review",
        "capabilities",
        "prices",
        "install",
        "cost-card",
        "run-form",
        "run-input",
    ] {
        assert!(page.text.contains(&format!("id=\"{id}\"")), "#{id} missing");
    }
    let readme = section(&page, "readme");
    assert!(readme.contains("<h1>Calculator</h1>"), "{readme}");
    assert!(!readme.contains("<script"), "{readme}");
    assert!(
        readme.contains("&lt;script&gt;alert('readme')&lt;/script&gt;"),
        "{readme}"
    );
    assert!(!readme.contains("<img src=x"), "{readme}");
    assert!(!readme.contains("javascript:"), "{readme}");
    assert!(
        readme.contains("href=\"https://example.com/calc\""),
        "{readme}"
    );
    assert!(!page.text.contains("<script>alert"), "nowhere on the page");
    assert!(section(&page, "install").contains("soma market install acme/calc@^1"));
    assert!(section(&page, "prices").contains("0.002500"));
    assert!(
        section(&page, "signatures").contains(&acme.public().id()),
        "author key id"
    );
    assert!(
        section(&page, "signatures").contains(&market_key.public().id()),
        "marketplace key id"
    );
    assert!(section(&page, "versions").contains("data-version=\"1.0.0\""));
    // Another tenant's listing: verdict and codes, no step evidence (as the API).
    assert!(
        !section(&page, "review").contains("data-step="),
        "evidence is the author's"
    );
    assert!(page.text.contains("Your tenant has installed v1.0.0"));
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(csp.contains("script-src 'self'"), "{csp}");

    // --- Run it: invalid input names the field; nothing runs or is charged.
    let (_, before) = d.get("/v1/ledger?limit=10000", &b);
    let before = before.as_array().map_or(0, Vec::len);
    let wrong = browser_b.post(
        "/ui/market/acme/calc/run",
        &page,
        &[("input", "{\"expr\": 5}")],
    );
    assert_eq!(wrong.status, 400, "{}", wrong.text);
    let errors = section(&wrong, "run-errors");
    assert!(errors.contains("<li>input.expr: "), "{errors}");
    let missing_field = browser_b.post("/ui/market/acme/calc/run", &page, &[("input", "{}")]);
    assert_eq!(missing_field.status, 400);
    assert!(
        section(&missing_field, "run-errors").contains("<li>input.expr: "),
        "{}",
        missing_field.text
    );
    let not_json = browser_b.post("/ui/market/acme/calc/run", &page, &[("input", "{expr")]);
    assert_eq!(not_json.status, 400);
    assert!(section(&not_json, "run-errors").contains("<li>input: not JSON"));
    // The submitted text stays in the form.
    assert!(
        wrong.text.contains("{&quot;expr&quot;: 5}"),
        "{}",
        wrong.text
    );
    let (_, after) = d.get("/v1/ledger?limit=10000", &b);
    assert_eq!(
        after.as_array().map_or(0, Vec::len),
        before,
        "nothing charged"
    );
    // A read-only token: checked, not run (403).
    let reader = Browser::sign_in(&d.url, &b_reader);
    let reader_page = reader.get("/ui/market/acme/calc");
    assert!(
        reader_page.text.contains("Check input"),
        "no Run button without the run scope"
    );
    let refused = reader.post(
        "/ui/market/acme/calc/run",
        &reader_page,
        &[("input", "{\"expr\": \"1+1\"}")],
    );
    assert_eq!(refused.status, 403);
    assert!(refused.text.contains("run-refused") && refused.text.contains("`run` scope"));
    // Valid input runs, as tenant-b, charged the fee.
    let ran = browser_b.post(
        "/ui/market/acme/calc/run",
        &page,
        &[("input", "{\"expr\": \"6*7\"}")],
    );
    assert_eq!(ran.status, 200, "{}", ran.text);
    let result = section(&ran, "run-result");
    assert!(result.contains("data-ok=\"true\""), "{result}");
    assert!(result.contains("&quot;value&quot;: 42"), "{result}");
    let run = attr_after(result, "data-run=\"").expect("run id");
    let (s, entries) = d.get(&format!("/v1/ledger?run={run}&limit=100"), &b);
    assert_eq!(s, 200);
    let fees: Vec<&Value> = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "marketplace-fee")
        .collect();
    assert_eq!(fees.len(), 1, "{entries}");
    assert_eq!(fees[0]["cost_micros"].as_u64(), Some(PRICE));
    assert_eq!(fees[0]["tenant"], "tenant-b");
    // One failing call too (1/0 is a capsule error), for the success rate.
    let failed = browser_b.post(
        "/ui/market/acme/calc/run",
        &page,
        &[("input", "{\"expr\": \"1/0\"}")],
    );
    assert_eq!(failed.status, 200);
    assert!(
        section(&failed, "run-result").contains("data-ok=\"false\""),
        "{}",
        failed.text
    );

    // --- The cost card equals the API's.
    let (s, api) = d.get("/v1/market/listings/acme/calc", &b);
    assert_eq!(s, 200, "{api}");
    let card = &api["versions"][0]["cost_card"];
    assert_eq!(card["calls"], json!(2), "{card}");
    let page = browser_b.get("/ui/market/acme/calc");
    assert_eq!(card_value(&page, "calls"), card["calls"].to_string());
    assert_eq!(card_value(&page, "fuel"), card["fuel"].to_string());
    assert_eq!(card_value(&page, "tokens"), card["tokens"].to_string());
    let float = |v: String| v.parse::<f64>().expect("number");
    assert_eq!(
        float(card_value(&page, "success_rate")),
        card["success_rate"].as_f64().expect("rate")
    );
    assert_eq!(
        float(card_value(&page, "cost_per_call_micros")),
        card["cost_per_call_micros"].as_f64().expect("cost")
    );
    for (field, key) in [("p50_ms", "latency_p50_us"), ("p95_ms", "latency_p95_us")] {
        assert_eq!(
            float(card_value(&page, field)),
            card[key].as_f64().expect("latency") / 1000.0,
            "{field}"
        );
    }

    // --- Unpublished: the owner sees it, another tenant gets the 404 page.
    let owner = browser_a.get("/ui/market/acme/draft");
    assert_eq!(owner.status, 200, "{}", owner.text);
    assert!(owner.text.contains("not published"));
    assert!(
        section(&owner, "review").contains("data-step=\"smoke\""),
        "the owner sees the evidence"
    );
    let other = browser_b.get("/ui/market/acme/draft");
    assert_eq!(other.status, 404);
    let nothing = browser_b.get("/ui/market/acme/nothing");
    assert_eq!(nothing.status, 404);
    assert_eq!(
        other.text.replace("draft", "nothing"),
        nothing.text,
        "the same page as a listing that does not exist"
    );
    assert_eq!(browser_a.get("/ui/market/beta/tool").status, 404);
    assert_eq!(browser_b.get("/ui/market/beta/tool").status, 200);

    // --- Author console: the viewer's tenant's submissions only.
    let month = &soma_runtime::ledger::day_of(soma_runtime::market::store::now_ms())[..7];
    let console_a = browser_a.get(&format!("/ui/author?month={month}"));
    assert_eq!(console_a.status, 200, "{}", console_a.text);
    for id in [&calc, &adder, &draft] {
        assert!(
            console_a
                .text
                .contains(&format!("data-submission=\"{id}\"")),
            "{id}"
        );
    }
    assert!(
        !console_a.text.contains(&tool),
        "another tenant's submission"
    );
    assert!(
        console_a.text.contains("data-step=\"smoke\""),
        "the per-step report"
    );
    let earnings = section(&console_a, "earnings");
    assert!(
        earnings.contains("data-listing=\"acme/calc\""),
        "{earnings}"
    );
    assert!(
        earnings.contains(&format!("data-revenue-micros=\"{PRICE}\"")),
        "one fee: only the successful call pays: {earnings}"
    );
    let (s, payouts) = d.get(&format!("/v1/market/payouts?month={month}"), &a);
    assert_eq!(s, 200);
    let total = section(&console_a, "payouts");
    assert!(total.contains("id=\"payout-total\""), "{total}");
    assert_eq!(
        attr_after(total, "data-micros=\"").expect("the total"),
        payouts["net_micros"].to_string(),
        "{payouts}"
    );
    assert!(section(&console_a, "payouts").contains("data-author=\"acme\""));
    let console_b = browser_b.get("/ui/author");
    assert!(
        console_b
            .text
            .contains(&format!("data-submission=\"{tool}\""))
    );
    assert!(!console_b.text.contains("data-submission=\"acme/"));
    // Another tenant's namespace is the 404 page; bad input names its field.
    assert_eq!(browser_b.get("/ui/author?author=acme").status, 404);
    let bad = browser_a.get("/ui/author?month=2026-13");
    assert_eq!(bad.status, 400);
    assert!(bad.text.contains("month"), "{}", bad.text);
    // No review actions for a tenant: hidden, and refused if sent anyway.
    assert!(
        !console_a.text.contains("/publish\""),
        "no operator buttons for a tenant"
    );
    let forged = browser_a.post(
        &format!(
            "/ui/author/submissions/{}/publish",
            draft.replace('/', "%2F")
        ),
        &console_a,
        &[],
    );
    assert_eq!(forged.status, 403);
    let (_, v) = d.get(
        &format!("/v1/market/submissions/{}", draft.replace('/', "%2F")),
        &a,
    );
    assert_eq!(v["submission"]["state"], "approved", "still unpublished");

    // --- The operator publishes the draft from the console.
    let staff = Browser::sign_in(&d.url, &ops);
    let acme_page = staff.get("/ui/author?author=acme");
    assert_eq!(acme_page.status, 200);
    let publish = format!(
        "/ui/author/submissions/{}/publish",
        draft.replace('/', "%2F")
    );
    assert!(
        acme_page.text.contains(&format!("action=\"{publish}\"")),
        "the publish form"
    );
    let done = staff.post(&publish, &acme_page, &[]);
    assert_eq!(done.status, 303, "{}", done.text);
    let (_, v) = d.get(
        &format!("/v1/market/submissions/{}", draft.replace('/', "%2F")),
        &a,
    );
    assert_eq!(v["submission"]["state"], "published", "{v}");
    assert_eq!(
        browser_b.get("/ui/market/acme/draft").status,
        200,
        "published: everyone sees it"
    );
}

/// The operator's review queue (`/ui/ops/reviews`) under `[market]
/// manual_approval`: versions waiting for a reviewer, oldest first, two a
/// page (`[console] max_page_rows = 2`), each with its review report's
/// steps and the approve/reject forms; approving one from the queue takes
/// it out; a tenant gets the 404 page.
#[test]
fn the_review_queue_lists_waiting_versions_oldest_first_for_operators() {
    let setup = Setup {
        registry: Registry::start(),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let data = setup.data();
    std::fs::create_dir_all(&data).expect("data");
    let a = token(bin(), &data, "tenant-a", "admin");
    let ops = token(bin(), &data, "ops", "operator");
    let market_key = KeyPair::generate();
    let (private, public) = market_key
        .save(&setup.dir.path().join("market"), PASSWORD.as_bytes())
        .expect("market key");
    let extra = format!(
        "[market]\nkey = {:?}\npublic_key = {:?}\nregistry = {:?}\nmanual_approval = true\n\n[console]\nmax_page_rows = 2\n",
        private.display().to_string(),
        public.display().to_string(),
        setup.registry.host()
    );
    let d = DaemonProcess::start_with_env(bin(), &data, "", &extra, &[("SOMA_PASSWORD", PASSWORD)]);
    let acme = KeyPair::generate();
    assert_eq!(
        d.post(
            "/v1/market/authors",
            &a,
            &author_body("acme", &acme, "tenant-a")
        )
        .0,
        201
    );
    let mut waiting = Vec::new();
    for (name, version) in [
        ("acme/one", "1.0.0"),
        ("acme/two", "1.0.0"),
        ("acme/three", "0.1.0"),
    ] {
        let body = listing(name, version, "math", json!({"model": "free"}), "# Waiting");
        let reference = push_signed(
            &setup.registry,
            name,
            version,
            soma_capsules::CALCULATOR_COMPONENT,
            &acme,
        );
        let (s, v) = d.post(
            "/v1/market/submissions",
            &a,
            &json!({"listing": body, "reference": reference}),
        );
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["submission"]["state"], "awaiting-approval", "{v}");
        waiting.push(v["id"].as_str().expect("id").to_owned());
        // Submission times are milliseconds: keep them apart.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    // A tenant: the 404 page, as for /ui/ops.
    let tenant = Browser::sign_in(&d.url, &a);
    let refused = tenant.get("/ui/ops/reviews");
    assert_eq!(refused.status, 404, "{}", refused.text);
    assert!(!refused.text.contains("acme/one"));

    let staff = Browser::sign_in(&d.url, &ops);
    let ops_page = staff.get("/ui/ops");
    assert!(
        ops_page.text.contains("href=\"/ui/ops/reviews\""),
        "linked from /ui/ops"
    );
    let first = staff.get("/ui/ops/reviews");
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(
        first.text.contains("id=\"review-count\" data-value=\"3\""),
        "{}",
        first.text
    );
    let rows = |p: &Page| -> Vec<String> {
        p.text
            .split("data-submission=\"")
            .skip(1)
            .map(|r| r[..r.find('"').expect("end")].to_owned())
            .collect()
    };
    assert_eq!(rows(&first), waiting[..2], "oldest first, two a page");
    assert!(
        first.text.contains("data-step=\"smoke\""),
        "the review report's steps"
    );
    assert!(
        first
            .text
            .contains("rel=\"next\" href=\"/ui/ops/reviews?page=2\"")
    );
    let second = staff.get("/ui/ops/reviews?page=2");
    assert_eq!(rows(&second), waiting[2..]);
    assert_eq!(staff.get("/ui/ops/reviews?page=0").status, 400);
    assert_eq!(staff.get("/ui/ops/reviews?per=9").status, 400);

    // Approve the oldest from the queue: it leaves the queue.
    let approve = format!(
        "/ui/author/submissions/{}/approve",
        waiting[0].replace('/', "%2F")
    );
    assert!(
        first.text.contains(&format!("action=\"{approve}\"")),
        "{}",
        first.text
    );
    let done = staff.post(&approve, &first, &[]);
    assert_eq!(done.status, 303, "{}", done.text);
    let after = staff.get("/ui/ops/reviews");
    assert!(after.text.contains("id=\"review-count\" data-value=\"2\""));
    assert_eq!(rows(&after), waiting[1..]);
}
