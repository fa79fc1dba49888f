//! `--server URL`: the same commands against a running `soma daemon`.
//! Requests and answers are the daemon's contract types
//! ([`soma_runtime::daemon::contract`]), the ones its handlers use.

use std::io::{BufRead as _, BufReader};

use anyhow::Context as _;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use soma_runtime::daemon::contract::{
    ApprovalAnswer, ApprovalBody, CancelAnswer, CreatedToken, ErrorBody, RunCreated, RunRequest,
    RunView, TokenInfo, TokenRequest, TokenScope,
};
use soma_runtime::dag::spec::ApprovalVerdict;
use soma_runtime::resolve::CapsuleRef;

use super::exit::Code;

/// A daemon and the token to use with it.
pub(crate) struct Remote {
    url: String,
    token: String,
    client: reqwest::blocking::Client,
}

impl Remote {
    /// From `--server` / `SOMA_SERVER` and `--token` / `SOMA_TOKEN`.
    pub(crate) fn new(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let token = token
            .map(str::to_owned)
            .context("--server needs a token: --token or SOMA_TOKEN (soma token create)")?;
        let client = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            token,
            client,
        })
    }

    /// Send, and read the answer as `T`; an error answer becomes an error
    /// naming the daemon's code and message.
    fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<T> {
        Ok(self.send_raw(req)?.0)
    }

    /// [`Remote::send`], also giving the answer's text as the daemon sent
    /// it (for `--json`: its key order and any field this client does not
    /// know are kept).
    fn send_raw<T: DeserializeOwned>(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<(T, String)> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        let status = resp.status().as_u16();
        let text = resp.text().context("reading the daemon's answer")?;
        if status >= 400 {
            return Err(match serde_json::from_str::<ErrorBody>(&text) {
                Ok(ErrorBody { error }) => anyhow::anyhow!(
                    "the daemon answered {status} {}: {}",
                    error.code,
                    error.message
                ),
                Err(_) => anyhow::anyhow!("the daemon answered {status} : {text}"),
            });
        }
        let value = serde_json::from_str(&text).with_context(|| {
            format!(
                "the daemon's answer is not the expected {}: {}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("type"),
                clip(&text)
            )
        })?;
        Ok((value, text))
    }

    fn post_request(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<reqwest::blocking::RequestBuilder> {
        Ok(self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(serde_json::to_string(body)?))
    }

    pub(crate) fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.send(self.post_request(path, body)?)
    }

    /// [`Remote::post`], also giving the answer's text as sent.
    fn post_raw<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<(T, String)> {
        self.send_raw(self.post_request(path, body)?)
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.client.get(format!("{}{path}", self.url)))
    }

    /// `PUT path` with a JSON body; the answer read as `T`.
    pub(crate) fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.send(
            self.client
                .put(format!("{}{path}", self.url))
                .header("content-type", "application/json")
                .body(serde_json::to_string(body)?),
        )
    }

    /// `DELETE path`, expecting an answer without a body (204); an error
    /// answer becomes an error naming the daemon's code and message.
    pub(crate) fn delete(&self, path: &str) -> anyhow::Result<()> {
        let resp = self
            .client
            .delete(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        let status = resp.status().as_u16();
        if status < 400 {
            return Ok(());
        }
        let text = resp.text().context("reading the daemon's answer")?;
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody { error }) => anyhow::anyhow!(
                "the daemon answered {status} {}: {}",
                error.code,
                error.message
            ),
            Err(_) => anyhow::anyhow!("the daemon answered {status} : {}", clip(&text)),
        })
    }

    /// [`Remote::get`], also giving the answer's text as sent.
    fn get_raw<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<(T, String)> {
        self.send_raw(self.client.get(format!("{}{path}", self.url)))
    }

    /// Follow a run's Server-Sent Events until the stream ends.
    pub(crate) fn follow(&self, run: &str, mut on: impl FnMut(&Value)) -> anyhow::Result<()> {
        let resp = self
            .client
            .get(format!("{}/v1/runs/{run}/events", self.url))
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        anyhow::ensure!(
            resp.status().is_success(),
            "the daemon answered {} to the event stream",
            resp.status()
        );
        for line in BufReader::new(resp).lines() {
            let line = line.context("reading the event stream")?;
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(event) = serde_json::from_str::<Value>(data)
            {
                on(&event);
            }
        }
        Ok(())
    }
}

/// At most 200 characters of `text`, for messages.
fn clip(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// The catalog name `text` names: `catalog:NAME` (the resolver's printed
/// form of [`CapsuleRef::Catalog`]) or the bare `NAME`. A pinned
/// `catalog:NAME@sha256:…` is refused: the daemon calls the component its
/// catalog holds under the name now.
fn catalog_name(text: &str) -> anyhow::Result<String> {
    if !text.starts_with("catalog:") {
        return Ok(text.to_owned());
    }
    match text.parse::<CapsuleRef>()? {
        CapsuleRef::Catalog { name, digest: None } => Ok(name),
        CapsuleRef::Catalog {
            name,
            digest: Some(digest),
        } => anyhow::bail!(
            "`soma run --server` calls the component the daemon's catalog holds under `{name}` now, \
             so it cannot pin {digest}: drop the `@{digest}` (the answer names the digest it called)"
        ),
        other => anyhow::bail!("{other} is not a catalog name; give NAME or catalog:NAME"),
    }
}

/// `text` (JSON) indented as `serde_json::to_string_pretty` would, keeping
/// its key order and every field. Text that is not JSON is returned as is.
/// Cost: one pass over the text.
fn pretty(text: &str) -> String {
    let text = text.trim();
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                if let Some(&close) = chars.peek().filter(|&&n| n == '}' || n == ']') {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// `soma run NAME --server URL`: call a catalog capsule on the daemon.
pub(crate) fn run(remote: &Remote, capsule: &str, input: &str, json: bool) -> anyhow::Result<Code> {
    let input: Value =
        serde_json::from_str(input).unwrap_or_else(|_| Value::String(input.to_owned()));
    let request = RunRequest {
        capsule: Some(catalog_name(capsule)?),
        input: Some(input),
        ..RunRequest::default()
    };
    let (created, text) = remote.post_raw("/v1/runs", &request)?;
    let report = match created {
        RunCreated::Call(report) => report,
        RunCreated::Dag(accepted) => anyhow::bail!(
            "the daemon started DAG run {} instead of calling capsule `{capsule}`",
            accepted.run
        ),
    };
    let code = report
        .failure
        .as_ref()
        .map_or(Code::Ok, |f| Code::of_class(f.class));
    if json {
        println!("{}", pretty(&text));
    } else if report.ok {
        let out = report.output.as_ref().unwrap_or(&Value::Null);
        let text = out.as_str().map_or_else(|| out.to_string(), str::to_owned);
        // On a terminal, capsule text is one escaped line (as `soma run`).
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!("{}", soma_host_api::log::escape(&text));
        } else {
            println!("{text}");
        }
        eprintln!("ok · run {} · {} µs", report.run, report.usage.wall_time_us);
    } else if let Some(f) = &report.failure {
        eprintln!(
            "error: {} ({})",
            soma_host_api::log::escape(&f.message),
            f.class
        );
    }
    Ok(code)
}

/// `soma dag run SPEC --server URL`: submit, follow, report.
pub(crate) fn dag_run(
    remote: &Remote,
    spec: &Value,
    input: &Value,
    json: bool,
) -> anyhow::Result<Code> {
    let request = RunRequest {
        dag: Some(spec.clone()),
        input: Some(input.clone()),
        ..RunRequest::default()
    };
    let run = match remote.post("/v1/runs", &request)? {
        RunCreated::Dag(accepted) => accepted.run,
        RunCreated::Call(report) => anyhow::bail!(
            "the daemon made call {} instead of starting a DAG run",
            report.run
        ),
    };
    if !json {
        eprintln!("run {run} (on {})", remote.url);
    }
    remote.follow(&run, |e| {
        if json {
            return;
        }
        if let Ok(event) = serde_json::from_value(e.clone())
            && let Some(line) = super::progress::progress_line(&event, &|node| node.contains('['))
        {
            eprintln!("{line}");
        }
    })?;
    // The event stream ends after the run's last event, which is read from
    // the journal or published after its commit; the daemon answers a run's
    // view from the journal's summary, written in that same commit, so the
    // view already carries the report: no waiting. (A stream that ended
    // without `finished` — the daemon stopping — shows the run as running.)
    let (view, text) = remote.get_raw(&format!("/v1/runs/{run}"))?;
    print_view(&view, &text, &run, json)
}

/// `soma dag status RUN --server URL`.
pub(crate) fn dag_status(remote: &Remote, run: &str, json: bool) -> anyhow::Result<Code> {
    let (view, text) = remote.get_raw(&format!("/v1/runs/{run}"))?;
    print_view(&view, &text, run, json)
}

/// Print a run's view (its report, or where it is; with `--json`, `text`,
/// as the daemon sent it) and give its exit code.
fn print_view(view: &RunView, text: &str, run: &str, json: bool) -> anyhow::Result<Code> {
    let phase = view.phase();
    if json {
        println!("{}", pretty(text));
    } else {
        eprintln!("run {run}: {phase}");
        let (error, output) = match view {
            RunView::Dag(report) => (report.error.clone(), report.output.as_ref()),
            RunView::Call(call) => (
                call.failure.as_ref().map(|f| f.message.clone()),
                call.output.as_ref(),
            ),
            RunView::Live(_) => (None, None),
        };
        if let Some(e) = error {
            eprintln!("error: {}", soma_host_api::log::escape_keeping_lines(&e));
        }
        if let Some(output) = output.filter(|o| !o.is_null()) {
            println!("{}", serde_json::to_string_pretty(output)?);
        }
    }
    Ok(Code::of_run(phase))
}

/// `soma dag cancel RUN --server URL`.
pub(crate) fn dag_cancel(remote: &Remote, run: &str) -> anyhow::Result<Code> {
    let (_, text): (CancelAnswer, _) =
        remote.post_raw(&format!("/v1/runs/{run}/cancel"), &serde_json::Map::new())?;
    println!("{}", text.trim_end());
    Ok(Code::Ok)
}

/// `soma dag approve|reject RUN NODE --server URL`.
pub(crate) fn dag_verdict(
    remote: &Remote,
    run: &str,
    node: &str,
    verdict: ApprovalVerdict,
    reason: Option<String>,
) -> anyhow::Result<Code> {
    // Node ids may hold `.`, `[` and `]` (plan nodes, instances).
    let node: String = node
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let body = ApprovalBody { verdict, reason };
    let (_, text): (ApprovalAnswer, _) =
        remote.post_raw(&format!("/v1/runs/{run}/nodes/{node}/approval"), &body)?;
    println!("{}", text.trim_end());
    Ok(Code::Ok)
}

/// `soma token create --server URL` (an admin token for its own tenant,
/// an operator token for any).
pub(crate) fn token_create(
    remote: &Remote,
    tenant: &str,
    scopes: &[TokenScope],
    expires_in_s: Option<u64>,
) -> anyhow::Result<Code> {
    let request = TokenRequest {
        tenant: tenant.to_owned(),
        scopes: scopes.to_vec(),
        expires_in_s,
        expires_at_ms: None,
    };
    let (_, text): (CreatedToken, _) = remote.post_raw("/v1/tokens", &request)?;
    println!("{}", text.trim_end());
    Ok(Code::Ok)
}

/// `soma token ls --server URL`: the tokens the caller may see.
pub(crate) fn token_ls(remote: &Remote) -> anyhow::Result<Vec<TokenInfo>> {
    remote.get("/v1/tokens")
}

/// `soma token revoke ID --server URL`: refused from the next request on.
pub(crate) fn token_revoke(remote: &Remote, id: &str) -> anyhow::Result<TokenInfo> {
    let req = remote
        .client
        .delete(format!("{}/v1/tokens/{id}", remote.url));
    remote.send(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_keeps_the_daemons_key_order_and_unknown_fields() {
        let sent = r#"{"run":"r1","kind":"dag","status":"queued","new_field":{"b":[1,{}],"a":"x:\"{,}\""},"e":[]}"#;
        let out = pretty(sent);
        assert_eq!(
            out,
            "{\n  \"run\": \"r1\",\n  \"kind\": \"dag\",\n  \"status\": \"queued\",\n  \"new_field\": {\n    \"b\": [\n      1,\n      {}\n    ],\n    \"a\": \"x:\\\"{,}\\\"\"\n  },\n  \"e\": []\n}"
        );
        // Same layout as serde_json's own pretty printer, where the order agrees.
        let sorted = r#"{"a":[1,2],"b":{"c":null},"d":"e"}"#;
        let value: Value = serde_json::from_str(sorted).expect("json");
        assert_eq!(
            pretty(sorted),
            serde_json::to_string_pretty(&value).expect("pretty")
        );
        assert_eq!(pretty("not json {"), "not json {");
    }

    #[test]
    fn catalog_names_take_the_resolvers_printed_form_or_the_bare_name() {
        assert_eq!(catalog_name("calculator").expect("bare"), "calculator");
        assert_eq!(
            catalog_name("catalog:calculator").expect("prefixed"),
            "calculator"
        );
        let pinned = format!("catalog:calculator@sha256:{}", "a".repeat(64));
        let e = catalog_name(&pinned).expect_err("a pin is refused");
        assert!(e.to_string().contains("drop the `@sha256:"), "{e}");
        assert!(catalog_name("catalog:").is_err());
    }
}
