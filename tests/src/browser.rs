//! A real browser for the web console's tests: Debian's headless Chromium
//! driven over WebDriver (Debian's `chromedriver`, client `fantoccini`).
//!
//! [`Browser::start`] runs `chromedriver` on a free loopback port in a
//! process group of its own, and opens one Chromium session with a fresh
//! profile directory and the flags this closed network needs. Dropping the
//! [`Browser`] (also when the test panics) ends the session and then kills
//! the whole process group, so no browser outlives its test.
//!
//! The API is blocking (the tests are plain `#[test]` functions): each call
//! runs one WebDriver command on the browser's own single-threaded tokio
//! runtime. Waits poll with a deadline ([`Browser::timeout`]); nothing
//! sleeps for synchronisation.
//!
//! `cargo xtask test` installs `chromium` and `chromium-driver` (Debian)
//! when `/usr/bin/chromium` or `/usr/bin/chromedriver` is missing.

use std::{
    fmt,
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The keys [`Browser::press`] takes (`Key::Tab`, `Key::Enter`, …).
pub use fantoccini::key::Key;
use fantoccini::{
    Client, ClientBuilder, Locator,
    actions::{InputSource as _, KeyAction, KeyActions},
    elements::Element,
    error::CmdError,
    wd::{Capabilities, WebDriverCompatibleCommand},
};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's ChromeDriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The flags Chromium runs with: headless, as root (no sandbox), and
/// without the background connections this machine's closed network
/// refuses (they make Chromium slow and noisy otherwise).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// The two viewports every page is looked at in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewport {
    /// 1280×800, a laptop.
    Desktop,
    /// 390×844, a phone (iPhone 12–15 size), as a mobile viewport.
    Phone,
}

impl Viewport {
    /// (width, height) in CSS pixels.
    pub fn size(self) -> (u32, u32) {
        match self {
            Self::Desktop => (1280, 800),
            Self::Phone => (390, 844),
        }
    }

    /// `desktop` or `phone` (screenshot file suffixes).
    pub fn name(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Phone => "phone",
        }
    }
}

/// One entry of the browser's console log (`goog:loggingPrefs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, …
    pub level: String,
    /// Where it came from (`security`, `javascript`, `network`, …).
    pub source: String,
    /// The message as Chromium wrote it.
    pub message: String,
}

impl LogEntry {
    /// Whether this is a Content-Security-Policy violation report.
    pub fn is_csp_violation(&self) -> bool {
        self.message.contains("Content Security Policy")
    }
}

/// ChromeDriver's `POST /session/{id}/goog/cdp/execute`: one Chrome
/// DevTools Protocol command.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or("")
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params}).to_string();
        (http::Method::POST, Some(body))
    }
}

/// ChromeDriver's `POST /session/{id}/se/log`: the browser's console log
/// since the last read.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// A headless Chromium session on a console at `base`.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    /// Chromium's profile and chromedriver's log (removed on drop).
    scratch: tempfile::TempDir,
    base: String,
    shots: PathBuf,
    viewport: Viewport,
    /// How long waits poll before failing the test (default 15 s).
    pub timeout: Duration,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("base", &self.base)
            .field("driver", &self.driver.id())
            .field("viewport", &self.viewport)
            .finish_non_exhaustive()
    }
}

/// Where screenshots go: `target/console-screenshots/` of the workspace
/// (or of `CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("console-screenshots")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Browser {
    /// Start chromedriver and one Chromium session for the console at
    /// `base` (`http://127.0.0.1:PORT`), at the desktop viewport.
    ///
    /// Panics, naming what to install, when Chromium or chromedriver is
    /// missing (`cargo xtask test` installs both).
    pub fn start(base: &str) -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} is missing: `cargo xtask test` installs it \
                 (or `apt-get install -y chromium chromium-driver`)"
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let scratch = tempfile::tempdir().expect("browser scratch dir");
        let port = free_port();
        let log = scratch.path().join("chromedriver.log");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawning chromedriver");
        let mut browser = Self {
            runtime,
            client: None,
            driver,
            scratch,
            base: base.trim_end_matches('/').to_owned(),
            shots: screenshot_dir(),
            viewport: Viewport::Desktop,
            timeout: Duration::from_secs(15),
        };
        let profile = browser.scratch.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push("--window-size=1280,800".into());
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            // Plain HTTP: the driver listens on loopback only (no TLS, so no
            // root store or crypto provider to set up).
            let attempt = browser.runtime.block_on(async {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
            });
            match attempt {
                Ok(c) => break c,
                Err(e) => {
                    if let Ok(Some(status)) = browser.driver.try_wait() {
                        panic!("chromedriver exited ({status}): {}", browser.driver_log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no Chromium session within 30 s: {e}\n{}",
                        browser.driver_log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        browser.client = Some(client);
        browser.set_viewport(Viewport::Desktop);
        browser
    }

    fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(self.scratch.path().join("chromedriver.log"))
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("browser session")
    }

    /// Run one WebDriver command; a failure fails the test with `what`.
    fn run<T>(&self, what: &str, f: impl Future<Output = Result<T, CmdError>>) -> T {
        self.runtime
            .block_on(f)
            .unwrap_or_else(|e| panic!("browser: {what}: {e}"))
    }

    /// The console's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Open `path` (e.g. `/ui/login`) and wait for it to load.
    pub fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.run(&format!("open {url}"), self.client().goto(&url));
    }

    /// The current URL's path and query (`/ui/runs?failed=1`).
    pub fn path(&self) -> String {
        let url = self.run("current url", self.client().current_url());
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Poll until the current path satisfies `pred`; returns it.
    pub fn wait_for_path(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        self.wait_until(&format!("the URL to be {what}"), |b| {
            last = b.path();
            pred(&last)
        });
        last
    }

    /// Browser history: back one page.
    pub fn back(&self) {
        self.run("back", self.client().back());
    }

    /// Reload the page.
    pub fn reload(&self) {
        self.run("reload", self.client().refresh());
    }

    /// The page's HTML as it is now.
    pub fn source(&self) -> String {
        self.run("page source", self.client().source())
    }

    /// Sign in with `token` through the real form (`/ui/login`), and wait
    /// until the browser has left the sign-in page. Panics (with the
    /// page's error) if it stays there.
    pub fn sign_in(&self, token: &str) {
        self.submit_login(token);
        let deadline = Instant::now() + self.timeout;
        while self.path().starts_with("/ui/login") {
            if let Some(error) = self.find(".error-message") {
                let text = self.run("error text", error.text());
                panic!("sign-in refused: {text}");
            }
            assert!(Instant::now() < deadline, "sign-in did not leave /ui/login");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fill the sign-in form with `token` and submit it (no waiting).
    pub fn submit_login(&self, token: &str) {
        self.goto("/ui/login");
        self.fill("#token", token);
        self.click("form[action='/ui/login'] button[type=submit]");
    }

    /// The first element matching `css`, if any (no waiting).
    pub fn find(&self, css: &str) -> Option<Element> {
        match self.runtime.block_on(self.client().find(Locator::Css(css))) {
            Ok(e) => Some(e),
            Err(e) if e.is_no_such_element() => None,
            Err(e) => panic!("browser: find {css}: {e}"),
        }
    }

    /// Every element matching `css` (no waiting).
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        self.run(
            &format!("find all {css}"),
            self.client().find_all(Locator::Css(css)),
        )
    }

    /// Whether an element matches `css` now.
    pub fn exists(&self, css: &str) -> bool {
        self.find(css).is_some()
    }

    /// Wait (up to [`Browser::timeout`]) for an element matching `css`.
    pub fn wait_for(&self, css: &str) -> Element {
        let found = self.runtime.block_on(
            self.client()
                .wait()
                .at_most(self.timeout)
                .every(Duration::from_millis(25))
                .for_element(Locator::Css(css)),
        );
        found.unwrap_or_else(|e| {
            panic!(
                "browser: no `{css}` on {} within {:?}: {e}",
                self.path(),
                self.timeout
            )
        })
    }

    /// Poll `pred` until it holds (up to [`Browser::timeout`]).
    pub fn wait_until(&self, what: &str, mut pred: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + self.timeout;
        while !pred(self) {
            assert!(
                Instant::now() < deadline,
                "browser: waited {:?} for {what}",
                self.timeout
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The text of the first element matching `css` (waits for it).
    pub fn text(&self, css: &str) -> String {
        let e = self.wait_for(css);
        self.run(&format!("text of {css}"), e.text())
    }

    /// Attribute `name` of the first element matching `css` (waits for it).
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.wait_for(css);
        // Found and read in one script: a live update may replace the
        // element between a find and a read (a stale reference otherwise).
        self.script(
            "const e = document.querySelector(arguments[0]); \
             return e ? e.getAttribute(arguments[1]) : null;",
            vec![css.into(), name.into()],
        )
        .as_str()
        .map(str::to_owned)
    }

    /// `data-KEY` of the first element matching `css` (waits for it).
    pub fn data(&self, css: &str, key: &str) -> Option<String> {
        self.attr(css, &format!("data-{key}"))
    }

    /// `data-KEY` of every element matching `css`, in document order.
    pub fn data_all(&self, css: &str, key: &str) -> Vec<Option<String>> {
        let name = format!("data-{key}");
        // One script, for the reason `attr` gives.
        let v = self.script(
            "return Array.from(document.querySelectorAll(arguments[0]), \
             e => e.getAttribute(arguments[1]));",
            vec![css.into(), name.into()],
        );
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// Click the first element matching `css` (waits for it).
    pub fn click(&self, css: &str) {
        let e = self.wait_for(css);
        self.run(&format!("click {css}"), e.click());
    }

    /// Replace the value of the field matching `css` with `value`, typed.
    pub fn fill(&self, css: &str, value: &str) {
        let e = self.wait_for(css);
        self.run(&format!("clear {css}"), e.clear());
        self.run(&format!("type into {css}"), e.send_keys(value));
    }

    /// Run `js` in the page (as a function body: `return …`) with `args`.
    /// WebDriver scripts are not subject to the page's CSP.
    pub fn script(&self, js: &str, args: Vec<Value>) -> Value {
        self.run("execute script", self.client().execute(js, args))
    }

    /// Press and release `key` where the focus is.
    pub fn press(&self, key: Key) {
        let value: char = key.into();
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value })
            .then(KeyAction::Up { value });
        self.run("press a key", self.client().perform_actions(keys));
    }

    /// The focused element, described as `tag#id.class1.class2`.
    pub fn focused(&self) -> String {
        let v = self.script(
            "const e = document.activeElement; if (!e) return '';\
             return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +\
             Array.from(e.classList).map(c => '.' + c).join('');",
            vec![],
        );
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Whether the page scrolls sideways (its content is wider than the
    /// viewport).
    pub fn scrolls_horizontally(&self) -> bool {
        let v = self.script(
            "const d = document.documentElement;\
             return d.scrollWidth > d.clientWidth || document.body.scrollWidth > d.clientWidth;",
            vec![],
        );
        v.as_bool().unwrap_or(true)
    }

    /// Emulate `viewport` (device metrics through the DevTools protocol, so
    /// the page's layout viewport is exactly that size, phone width included).
    pub fn set_viewport(&mut self, viewport: Viewport) {
        let (width, height) = viewport.size();
        let mobile = viewport == Viewport::Phone;
        self.run(
            "set the viewport",
            self.client().issue_cmd(Cdp {
                cmd: "Emulation.setDeviceMetricsOverride",
                params: json!({
                    "width": width, "height": height,
                    "deviceScaleFactor": 1, "mobile": mobile,
                }),
            }),
        );
        self.viewport = viewport;
    }

    /// The viewport now emulated.
    pub fn viewport(&self) -> Viewport {
        self.viewport
    }

    /// Write the page as `NAME-desktop.png` (1280×800) and
    /// `NAME-phone.png` (390×844) under [`screenshot_dir`]; the desktop
    /// viewport is restored afterwards. Returns the two paths.
    pub fn screenshot(&mut self, name: &str) -> Vec<PathBuf> {
        std::fs::create_dir_all(&self.shots).expect("screenshot directory");
        let before = self.viewport;
        let mut out = Vec::new();
        for viewport in [Viewport::Desktop, Viewport::Phone] {
            self.set_viewport(viewport);
            let png = self.run("screenshot", self.client().screenshot());
            let path = self.shots.join(format!("{name}-{}.png", viewport.name()));
            std::fs::write(&path, png)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            out.push(path);
        }
        self.set_viewport(before);
        out
    }

    /// The browser's console log since the last call (CSP violations,
    /// script errors, failed loads).
    pub fn console_log(&self) -> Vec<LogEntry> {
        let v = self.run("read the browser log", self.client().issue_cmd(BrowserLog));
        v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| LogEntry {
                        level: e["level"].as_str().unwrap_or_default().to_owned(),
                        source: e["source"].as_str().unwrap_or_default().to_owned(),
                        message: e["message"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value of cookie `name` as the browser holds it for the console.
    pub fn cookie(&self, name: &str) -> Option<String> {
        match self.runtime.block_on(self.client().get_named_cookie(name)) {
            Ok(c) => Some(c.value().to_owned()),
            Err(e) if e.is_no_such_cookie() => None,
            Err(e) => panic!("browser: cookie {name}: {e}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ends the session: chromedriver quits Chromium. Bounded, so a
            // wedged driver cannot hang a failing test.
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        if let Ok(pgid) = libc::pid_t::try_from(self.driver.id()) {
            // SAFETY: killpg only sends a signal; the group is the one this
            // browser's chromedriver leads (spawned with process_group(0)),
            // so it holds chromedriver and the Chromium it started.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
