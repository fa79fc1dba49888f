//! The console's costs and operations pages against a real `soma daemon`
//! over HTTP, with two tenants, an operator and a noisy tenant:
//!
//! - `/ui/costs`: the month's total (`#month-total[data-micros]`) is what
//!   `soma bill` prints for that tenant and month — before and after a
//!   real, charged call — and never includes the other tenant's entries;
//!   the backtest error is `soma forecast`'s; the budgets' remaining
//!   amounts are `soma budget ls`'s; a non-operator naming another tenant
//!   gets the 404 page, an operator sees it; bad queries get a 400 page
//!   naming the field.
//! - `/ui/ops`: 404 for a non-operator; for an operator, health, queue
//!   depth, active runs, the cache hit rate, the rate-limit rejections
//!   counted after a tenant went over its rate, and the recent errors
//!   naming that tenant and a failed call.
//!
//! The ledger is seeded with 100,000 entries over 45 days (plus the real
//! calls), and the page's time to first byte is measured and printed.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_runtime::{
    ledger::{Entry, Kind, Ledger, MAX_BATCH_ENTRIES},
    store::DataDir,
};
use soma_tests::daemon::{self as harness, DaemonProcess};

/// Entries seeded into the ledger.
const SEEDED: u64 = 100_000;
/// Fuel price: 1000 µ per 1000 fuel, so a call costs its fuel in µ.
const FUEL_PRICE: u64 = 1000;
/// Tenant `acme`'s ceiling, micro-units.
const ACME_BUDGET: u64 = 900_000_000;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

fn soma(data: &Path) -> Command {
    harness::soma(bin(), data)
}

/// `soma ARGS --json` on `data` (no daemon running): its JSON.
fn cli_json(data: &Path, args: &[&str]) -> Value {
    let out = soma(data).args(args).arg("--json").output().expect("soma");
    assert!(
        out.status.success(),
        "soma {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// This month, `YYYY-MM` (UTC).
fn this_month() -> String {
    let day = i64::try_from(now_ms() / 86_400_000).expect("day");
    let (y, m, _) = soma_runtime::ledger::civil_from_days(day);
    format!("{y:04}-{m:02}")
}

/// A made-up capsule digest for `k` (distinct from its first hex digits).
fn digest(k: u64) -> String {
    format!(
        "sha256:{:016x}{:048x}",
        (k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        k
    )
}

/// 100,000 entries over the last 45 days: two thirds `acme` (20 capsules,
/// three models), one third `globex` (its own capsules and a model no
/// `acme` page may name).
fn seed(data: &Path) {
    let ledger = Ledger::open(&DataDir::new(data));
    let now = now_ms();
    let kinds = [
        Kind::LlmTokensInput,
        Kind::LlmTokensOutput,
        Kind::Fuel,
        Kind::WallTime,
    ];
    let mut batch = Vec::new();
    for i in 0..SEEDED {
        let globex = i % 3 == 0;
        let tenant = if globex { "globex" } else { "acme" };
        let kind = kinds[(i % 4) as usize];
        let llm = matches!(kind, Kind::LlmTokensInput | Kind::LlmTokensOutput);
        let model = llm.then(|| {
            if globex {
                "globex-secret-model".to_owned()
            } else {
                format!("acme-model-{}", i % 3)
            }
        });
        let quantity = 100 + i % 1000;
        let price = 10 + i % 7;
        batch.push(Entry {
            id: 0,
            // Runs of 60 entries (every tenant × kind × capsule × model
            // mix) share a day, so each of the 45 days, today included,
            // holds all of them (by `i % 45` acme had no entry today, and on
            // the 1st of a month its month was empty).
            time_ms: now - ((i / 60) % 45) * 86_400_000 - (i % 1000),
            tenant: tenant.into(),
            run: format!("seed-{i}"),
            node: "n".into(),
            attempt: 0,
            seq: 0,
            capsule: digest(i % 20 + if globex { 1000 } else { 0 }),
            kind,
            quantity,
            unit_price_micros: price,
            cost_micros: Entry::cost_for(quantity, price),
            provider: model.as_ref().map(|_| "seeded".to_owned()),
            model,
            estimated: false,
        });
        if batch.len() == MAX_BATCH_ENTRIES {
            ledger.append(&std::mem::take(&mut batch)).expect("append");
        }
    }
    ledger.append(&batch).expect("append");
}

/// A browser: a session cookie.
struct Browser {
    client: reqwest::blocking::Client,
    url: String,
    cookie: String,
}

fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

impl Browser {
    /// Sign in with `token` through the login form.
    fn sign_in(url: &str, token: &str) -> Self {
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let form = client
            .get(format!("{url}/ui/login"))
            .send()
            .expect("login form");
        assert_eq!(form.status(), 200);
        let nonce = set_cookie(form.headers(), "soma_login").expect("login nonce");
        let body = serde_urlencoded::to_string([
            ("token", token),
            ("csrf", nonce.as_str()),
            ("next", "/ui/costs"),
        ])
        .expect("form");
        let r = client
            .post(format!("{url}/ui/login"))
            .header("cookie", format!("soma_login={nonce}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .expect("login");
        assert_eq!(r.status(), 303, "sign-in");
        let session = set_cookie(r.headers(), "soma_session").expect("session cookie");
        Self {
            client,
            url: url.to_owned(),
            cookie: format!("soma_session={session}"),
        }
    }

    /// `GET path`: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .send()
            .expect("get");
        (r.status().as_u16(), r.text().expect("body"))
    }
}

/// The value of attribute `attr` on the element with `id="ID"`.
fn attr_of_id(html: &str, id: &str, attr: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{html}"));
    let tag_start = html[..at].rfind('<').expect("tag");
    let tag_end = at + html[at..].find('>').expect("tag end");
    let tag = &html[tag_start..tag_end];
    let key = format!("{attr}=\"");
    let v = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {attr} on #{id}: {tag}"))
        + key.len();
    tag[v..v + tag[v..].find('"').expect("quote")].to_owned()
}

/// The `<tr …>` element's text from `marker` (an attribute) to `</tr>`.
fn row<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in\n{html}"));
    &html[at..at + html[at..].find("</tr>").expect("row end")]
}

fn month_total(page: &str) -> u64 {
    attr_of_id(page, "month-total", "data-micros")
        .parse()
        .expect("micros")
}

/// Keep `html` as `target/tmp/console_costs/NAME.html` for review.
fn keep(name: &str, html: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console_costs");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.html")), html);
}

/// Median and worst time to the response of `GET path`, `n` times.
fn time_page(b: &Browser, path: &str, n: usize) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = b
                .client
                .get(format!("{}{path}", b.url))
                .header("cookie", &b.cookie)
                .send()
                .expect("get");
            let took = t.elapsed();
            assert_eq!(r.status(), 200);
            took
        })
        .collect();
    times.sort();
    (times[n / 2], times[n - 1])
}

#[test]
fn costs_and_operations_pages_show_each_tenant_only_its_own_and_match_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let acme = harness::token(bin(), data, "acme", "run,read");
    let globex = harness::token(bin(), data, "globex", "run,read");
    let operator = harness::token(bin(), data, "ops", "operator");
    let noisy = harness::token(bin(), data, "noisy", "read");
    let seeding = Instant::now();
    seed(data);
    eprintln!("seeded {SEEDED} ledger entries in {:?}", seeding.elapsed());
    let out = soma(data)
        .args(["budget", "set", "tenant:acme", "--micros"])
        .arg(ACME_BUDGET.to_string())
        .output()
        .expect("budget set");
    assert!(out.status.success(), "{out:?}");
    let month = this_month();
    let bill = |tenant: &str| {
        cli_json(data, &["bill", tenant, "--month", &month])["total_micros"]
            .as_u64()
            .expect("total")
    };
    let (acme_bill, globex_bill) = (bill("acme"), bill("globex"));
    assert!(acme_bill > 0 && globex_bill > 0);
    let forecast = cli_json(data, &["forecast", "acme"]);
    let mape = forecast["backtest_mape_percent"]
        .as_f64()
        .expect("45 days of history have a backtest");

    let d = DaemonProcess::start(
        bin(),
        data,
        "rate_per_sec = 0.001\nburst = 40.0",
        // Its own AOT cache: the operations page's AOT figure counts this
        // daemon's compiles.
        &format!(
            "[ledger]\nfuel_price_per_1k_micros = {FUEL_PRICE}\n{}",
            harness::own_aot_cache(data)
        ),
    );
    let a = Browser::sign_in(&d.url, &acme);
    let g = Browser::sign_in(&d.url, &globex);
    let op = Browser::sign_in(&d.url, &operator);

    // Each tenant's month is its bill, and names nothing of the other's.
    let (s, page) = a.get(&format!("/ui/costs?month={month}"));
    assert_eq!(s, 200, "{page}");
    assert_eq!(month_total(&page), acme_bill);
    keep("costs", &page);
    assert!(!page.contains("globex-secret-model"), "acme sees globex");
    for k in 1000..1020 {
        let hex = &digest(k)["sha256:".len()..];
        assert!(!page.contains(&hex[..12]), "acme sees globex's capsule {k}");
    }
    assert!(page.contains(&digest(0)), "acme's own capsule");
    for id in ["by-capsule", "by-model", "by-day", "forecast"] {
        let at = page.find(&format!("id=\"{id}\"")).expect(id);
        let figure = &page[page[..at].rfind('<').expect("tag")..];
        assert!(figure.starts_with("<figure class=\"chart\""), "{id}");
        let end = figure.find("</figure>").expect("figure end");
        assert!(figure[..end].contains("<svg"), "{id} has a chart");
        assert!(figure[..end].contains("<table"), "{id} has a table");
    }
    assert!(page.contains("acme-model-1"));
    assert_eq!(
        attr_of_id(&page, "backtest-error", "data-mape"),
        format!("{mape:.1}")
    );
    // The budget's remaining amount is what `soma budget ls` computes.
    let budget_row = row(&page, "data-scope=\"tenant:acme\"");
    let (s, page_default) = a.get("/ui/costs");
    assert_eq!(s, 200);
    assert_eq!(month_total(&page_default), acme_bill, "default: this month");
    let (s, page) = g.get(&format!("/ui/costs?month={month}"));
    assert_eq!(s, 200);
    assert_eq!(month_total(&page), globex_bill);
    assert!(!page.contains("acme-model-"), "globex sees acme");
    assert!(!page.contains("data-scope=\"tenant:acme\""), "{page}");

    // Another tenant: 404 for a tenant, shown to the operator.
    let (s, page) = a.get(&format!("/ui/costs?month={month}&tenant=globex"));
    assert_eq!(s, 404, "{page}");
    assert!(!page.contains("month-total"));
    assert_eq!(a.get("/ui/costs?tenant=acme").0, 200);
    let (s, page) = op.get(&format!("/ui/costs?month={month}&tenant=globex"));
    assert_eq!(s, 200, "{page}");
    assert_eq!(month_total(&page), globex_bill);
    // A month without charges is zero, not an error.
    let (s, page) = a.get("/ui/costs?month=2001-01");
    assert_eq!(s, 200);
    assert_eq!(month_total(&page), 0);
    assert!(page.contains("No data"));

    // Bad queries: 400 naming the field.
    for (q, field) in [
        ("month=2026-13", "`month`"),
        ("month=yesterday", "`month`"),
        ("bogus=1", "`month`"),
    ] {
        let (s, page) = a.get(&format!("/ui/costs?{q}"));
        assert_eq!(s, 400, "{q}: {page}");
        assert!(page.contains(field), "{q}: {page}");
    }

    // Time to the whole page with the 100k-entry ledger.
    let (median, worst) = time_page(&a, &format!("/ui/costs?month={month}"), 15);
    eprintln!(
        "GET /ui/costs with {SEEDED} entries: median {median:?}, worst {worst:?} (15 requests)"
    );

    // A real call is charged, and the page's total follows the ledger.
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        // A fuel limit: the budget holds the call's worst case.
        &json!({"capsule": "echo", "input": {"x": 1}, "limits": {"fuel": 10_000_000}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let (_, page) = a.get(&format!("/ui/costs?month={month}"));
    let after_call = month_total(&page);
    assert!(after_call > acme_bill, "the call was charged");
    // A failed call (out of fuel) lands in the recent errors.
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"capsule": "hostile-loop", "input": {}, "limits": {"fuel": 100000}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    let (_, page) = a.get(&format!("/ui/costs?month={month}"));
    let acme_total = month_total(&page);

    // Operations: 404 to a tenant; the numbers to the operator.
    let (s, page) = a.get("/ui/ops");
    assert_eq!(s, 404, "{page}");
    assert!(!page.contains("queue-depth"));
    let (s, page) = op.get("/ui/ops");
    assert_eq!(s, 200, "{page}");
    assert!(
        !page.contains("data-reason=\"rate-limited\""),
        "nobody was limited yet"
    );
    for id in [
        "health",
        "queue-depth",
        "active-runs",
        "rejections",
        "cache-hit-rate",
        "recent-errors",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "#{id}");
    }
    assert!(page.contains("data-ready=\"true\""));
    assert!(page.contains("hostile-loop"), "the failed call is listed");
    assert!(
        page.contains("data-field=\"capsule-cache\""),
        "cache hit rate"
    );
    // A fresh data directory: every capsule was compiled, none read back.
    assert!(
        page.contains("data-field=\"aot-cache\" data-permille=\"0\""),
        "AOT cache: {page}"
    );
    // `noisy` goes over its rate: the 429s are counted and listed.
    let mut limited = 0;
    for _ in 0..60 {
        let (s, _) = d.get("/v1/ledger?limit=1", &noisy);
        if s == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 15, "{limited} of 60 refused");
    let (_, page) = op.get("/ui/ops");
    keep("ops", &page);
    let rejected = row(&page, "data-reason=\"rate-limited\"");
    assert!(
        rejected.contains(&format!("data-value=\"{limited}\"")),
        "{limited}: {rejected}"
    );
    let error = row(&page, "data-class=\"rate-limited\"");
    assert!(
        error.contains("GET /v1/ledger") && error.contains("noisy"),
        "{error}"
    );

    // Stopped, the CLI agrees with what the pages showed.
    d.stop();
    assert_eq!(bill("acme"), acme_total);
    assert_eq!(bill("globex"), globex_bill);
    let budgets = cli_json(data, &["budget", "ls"]);
    let account = budgets
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["scope"] == "tenant:acme")
        .expect("acme's budget");
    let left = ACME_BUDGET
        - account["account"]["spent_micros"]
            .as_u64()
            .expect("spent")
            .min(ACME_BUDGET);
    // The row was read before the calls: its remaining amount plus what
    // the two calls cost is what remains now.
    let before: u64 = budget_row
        .split("data-field=\"micros-remaining\" data-value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("remaining in {budget_row}"));
    assert_eq!(before, left + (acme_total - acme_bill), "{budget_row}");
}

/// Poll `GET /v1/analytics/query?since_ms=0&bucket=day` as `token` until
/// its single row holds `calls` calls; that row.
fn analytics_totals(d: &DaemonProcess, token: &str, calls: u64) -> Value {
    let start = Instant::now();
    loop {
        let (s, v) = d.get("/v1/analytics/query?since_ms=0&bucket=day", token);
        assert_eq!(s, 200, "{v}");
        if v[0]["calls"] == calls {
            return v[0].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the store never counted {calls} calls: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `data-value` of `#id` as a number.
fn value_of(page: &str, id: &str) -> u64 {
    attr_of_id(page, id, "data-value").parse().expect("number")
}

/// The table row of the capsule the catalog names `name`.
fn capsule_row<'a>(page: &'a str, name: &str) -> &'a str {
    let at = page
        .find(&format!(">{name}</span>"))
        .unwrap_or_else(|| panic!("no row for {name} in\n{page}"));
    let start = page[..at].rfind("<tr").expect("row start");
    &page[start..at + page[at..].find("</tr>").expect("row end")]
}

/// The four dashboards (`/ui/analytics/…`) on a real daemon: each tenant's
/// board shows its own numbers — the ones `GET /v1/analytics/query`
/// answers it — and never the other's; the platform and admin boards are
/// operators' (404 for anyone else, as is another tenant's board); an
/// operator sees everyone's; bad queries get a 400 naming the field.
#[test]
fn analytics_dashboards_show_each_tenant_its_own_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let acme = harness::token(bin(), data, "acme", "run,read");
    let globex = harness::token(bin(), data, "globex", "run,read");
    let operator = harness::token(bin(), data, "ops", "operator");
    let runner = harness::token(bin(), data, "acme", "run");
    let d = DaemonProcess::start(
        bin(),
        data,
        "",
        &format!(
            "[analytics]\nship_interval_ms = 20\n[ledger]\nfuel_price_per_1k_micros = {FUEL_PRICE}\n"
        ),
    );
    for i in 0..3 {
        let (s, v) = d.post(
            "/v1/runs",
            &acme,
            &json!({"capsule": "echo", "input": {"i": i}}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let (_, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"capsule": "hostile-loop", "limits": {"timeout_ms": 100}}),
    );
    assert_eq!(v["failure"]["class"], "deadline-exceeded", "{v}");
    for i in 0..2 {
        let (s, v) = d.post(
            "/v1/runs",
            &globex,
            &json!({"capsule": "echo", "input": {"i": i}}),
        );
        assert_eq!(s, 200, "{v}");
    }
    // globex's budget is spent: its next call is refused (an event of its own).
    let (s, v, _) = d.request(
        reqwest::Method::PUT,
        "/v1/budgets",
        Some(&operator),
        Some(json!({"scope": "tenant:globex", "micros": 1}).to_string()),
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = d.post(
        "/v1/runs",
        &globex,
        &json!({"capsule": "echo", "input": {}}),
    );
    assert_eq!(v["failure"]["class"], "budget-exceeded", "{v}");
    let acme_row = analytics_totals(&d, &acme, 4);
    let globex_row = analytics_totals(&d, &globex, 2);
    analytics_totals(&d, &operator, 6);
    let start = Instant::now();
    while d
        .get("/v1/analytics/query?since_ms=0&bucket=day", &globex)
        .1[0]["budget_exceeded"]
        != 1
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no refusal event"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let a = Browser::sign_in(&d.url, &acme);
    let g = Browser::sign_in(&d.url, &globex);
    let op = Browser::sign_in(&d.url, &operator);
    let ro = Browser::sign_in(&d.url, &runner);

    // The section's door: a tenant's own board, an operator's platform.
    let r = a
        .client
        .get(format!("{}/ui/analytics", d.url))
        .header("cookie", &a.cookie)
        .send()
        .expect("get");
    assert_eq!(r.headers()["location"], "/ui/analytics/tenant");

    // The tenant board: the query route's numbers, its own only.
    let (s, page) = a.get("/ui/analytics/tenant");
    assert_eq!(s, 200, "{page}");
    keep("analytics_tenant", &page);
    assert_eq!(value_of(&page, "calls"), 4);
    assert_eq!(
        value_of(&page, "cost"),
        acme_row["cost_micros"].as_u64().expect("cost")
    );
    assert!(value_of(&page, "cost") > 0, "calls cost fuel");
    assert_eq!(value_of(&page, "budget-exceeded"), 0);
    assert!(
        capsule_row(&page, "echo").contains("data-calls=\"3\""),
        "acme's 3, not globex's too"
    );
    for id in [
        "spend-chart",
        "spend-by-capsule",
        "tokens-by-model",
        "runs-chart",
    ] {
        let at = page.find(&format!("id=\"{id}\"")).expect(id);
        let figure = &page[at..at + page[at..].find("</figure>").expect("figure end")];
        assert!(
            figure.contains("<svg") && figure.contains("<table"),
            "{id}: {figure}"
        );
    }
    let (s, page) = g.get("/ui/analytics/tenant");
    assert_eq!(s, 200);
    assert_eq!(value_of(&page, "calls"), 2);
    assert_eq!(
        value_of(&page, "cost"),
        globex_row["cost_micros"].as_u64().expect("cost")
    );
    assert_eq!(value_of(&page, "budget-exceeded"), 1);
    assert!(page.contains("data-scope=\"tenant:globex\""), "its budget");
    assert!(!page.contains("hostile-loop"), "globex sees acme's capsule");
    assert_eq!(a.get("/ui/analytics/tenant?tenant=globex").0, 404);
    let (s, page) = op.get("/ui/analytics/tenant?tenant=globex");
    assert_eq!((s, value_of(&page, "calls")), (200, 2));

    // The capsule board: success rate and cost card per capsule.
    let (s, page) = a.get("/ui/analytics/capsule?range=hour");
    assert_eq!(s, 200, "{page}");
    keep("analytics_capsule", &page);
    let echo = capsule_row(&page, "echo");
    assert!(
        echo.contains("data-calls=\"3\"") && echo.contains("data-errors=\"0\""),
        "{echo}"
    );
    assert!(echo.contains("100.0 %"), "{echo}");
    let looped = capsule_row(&page, "hostile-loop");
    assert!(
        looped.contains("data-calls=\"1\"") && looped.contains("data-errors=\"1\""),
        "{looped}"
    );
    assert!(looped.contains("0.0 %"), "{looped}");
    assert!(row(&page, "data-key=\"deadline-exceeded\"").contains("data-errors=\"1\""));
    let (_, page) = op.get("/ui/analytics/capsule");
    assert!(
        capsule_row(&page, "echo").contains("data-calls=\"5\""),
        "an operator sees everyone's"
    );
    let (_, page) = op.get("/ui/analytics/capsule?tenant=globex");
    assert!(capsule_row(&page, "echo").contains("data-calls=\"2\""));
    assert!(!page.contains(">hostile-loop</span>"));

    // The operators' boards.
    for path in ["/ui/analytics/platform", "/ui/analytics/admin"] {
        assert_eq!(a.get(path).0, 404, "{path} is operators'");
    }
    let (s, page) = op.get("/ui/analytics/platform");
    assert_eq!(s, 200, "{page}");
    keep("analytics_platform", &page);
    assert_eq!(
        (value_of(&page, "calls"), value_of(&page, "errors")),
        (6, 1)
    );
    assert!(value_of(&page, "p50") > 0 && value_of(&page, "p99") >= value_of(&page, "p50"));
    assert!(page.contains("id=\"latency-chart\""));
    let (s, page) = op.get("/ui/analytics/admin");
    assert_eq!(s, 200, "{page}");
    keep("analytics_admin", &page);
    assert!(row(&page, "data-sink=\"rollup\"").contains("data-field=\"lag\""));
    assert_eq!(value_of(&page, "budget-exceeded"), 1);
    attr_of_id(&page, "outbox-pending", "data-value");

    // Bad input.
    let (s, page) = a.get("/ui/analytics/tenant?range=year");
    assert_eq!(s, 400);
    assert!(
        page.contains("<code>range</code>") || page.contains("`range`"),
        "{page}"
    );
    assert_eq!(a.get("/ui/analytics/tenant?rnage=day").0, 400);
    assert_eq!(a.get("/ui/analytics/nope").0, 404);
    assert_eq!(
        ro.get("/ui/analytics/tenant").0,
        403,
        "needs the read scope"
    );
    drop(d);
}
