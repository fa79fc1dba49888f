//! `--server URL`: the same commands against a running `soma daemon`.
//! Requests and answers are the daemon's contract types
//! ([`soma_runtime::daemon::contract`]), the ones its handlers use.

use std::io::{BufRead as _, BufReader};

use anyhow::Context as _;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use soma_runtime::daemon::contract::{
    CancelAnswer, CreatedToken, ErrorBody, RunCreated, RunRequest, RunView, TokenInfo,
    TokenRequest, TokenScope,
};

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
        serde_json::from_str(&text).with_context(|| {
            format!(
                "the daemon's answer is not the expected {}: {}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("type"),
                clip(&text)
            )
        })
    }

    pub(crate) fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let req = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(serde_json::to_string(body)?);
        self.send(req)
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.client.get(format!("{}{path}", self.url)))
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

/// `soma run NAME --server URL`: call a catalog capsule on the daemon.
pub(crate) fn run(remote: &Remote, capsule: &str, input: &str, json: bool) -> anyhow::Result<Code> {
    let input: Value =
        serde_json::from_str(input).unwrap_or_else(|_| Value::String(input.to_owned()));
    let request = RunRequest {
        capsule: Some(capsule.to_owned()),
        input: Some(input),
        ..RunRequest::default()
    };
    let report = match remote.post("/v1/runs", &request)? {
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
        println!("{}", serde_json::to_string_pretty(&report)?);
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
    // The event stream ends when the run's last event is journaled; the
    // run's view turns from live to its report a moment later, once the
    // driver has let go of it. Ask until it has (bounded), so the output
    // is printed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut view: RunView = remote.get(&format!("/v1/runs/{run}"))?;
    while matches!(view, RunView::Live(_)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        view = remote.get(&format!("/v1/runs/{run}"))?;
    }
    print_view(view, &run, json)
}

/// `soma dag status RUN --server URL`.
pub(crate) fn dag_status(remote: &Remote, run: &str, json: bool) -> anyhow::Result<Code> {
    let view: RunView = remote.get(&format!("/v1/runs/{run}"))?;
    print_view(view, run, json)
}

/// Print a run's view (its report, or where it is) and give its exit code.
fn print_view(view: RunView, run: &str, json: bool) -> anyhow::Result<Code> {
    let phase = view.phase();
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        eprintln!("run {run}: {phase}");
        let (error, output) = match &view {
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
    let answer: CancelAnswer =
        remote.post(&format!("/v1/runs/{run}/cancel"), &serde_json::Map::new())?;
    println!("{}", serde_json::to_string(&answer)?);
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
    let created: CreatedToken = remote.post("/v1/tokens", &request)?;
    println!("{}", serde_json::to_string(&created)?);
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
