//! `--server URL`: the same commands against a running `soma daemon`.

use std::io::{BufRead as _, BufReader};

use anyhow::Context as _;
use serde_json::{Value, json};

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

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        let status = resp.status().as_u16();
        let text = resp.text().context("reading the daemon's answer")?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let e = &value["error"];
            anyhow::bail!(
                "the daemon answered {status} {}: {}",
                e["code"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or(&value.to_string())
            );
        }
        Ok((status, value))
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let req = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        Ok(self.send(req)?.1)
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(self.client.get(format!("{}{path}", self.url)))?.1)
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

/// `soma run NAME --server URL`: call a catalog capsule on the daemon.
pub(crate) fn run(remote: &Remote, capsule: &str, input: &str, json: bool) -> anyhow::Result<Code> {
    let input: Value =
        serde_json::from_str(input).unwrap_or_else(|_| Value::String(input.to_owned()));
    let v = remote.post("/v1/runs", &json!({ "capsule": capsule, "input": input }))?;
    let code = match v["failure"]["class"].as_str() {
        None => Code::Ok,
        Some(class) => Code::of_class(class),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v["ok"] == true {
        let out = &v["output"];
        let text = out.as_str().map_or_else(|| out.to_string(), str::to_owned);
        // On a terminal, capsule text is one escaped line (as `soma run`).
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!("{}", soma_host_api::log::escape(&text));
        } else {
            println!("{text}");
        }
        eprintln!(
            "ok · run {} · {} µs",
            v["run"].as_str().unwrap_or(""),
            v["usage"]["wall_time_us"]
        );
    } else {
        eprintln!(
            "error: {} ({})",
            soma_host_api::log::escape(v["failure"]["message"].as_str().unwrap_or("")),
            soma_host_api::log::escape(v["failure"]["class"].as_str().unwrap_or(""))
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
    let created = remote.post("/v1/runs", &json!({ "dag": spec, "input": input }))?;
    let run = created["run"]
        .as_str()
        .context("the daemon did not return a run id")?
        .to_owned();
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
    dag_status(remote, &run, json)
}

/// `soma dag status RUN --server URL`.
pub(crate) fn dag_status(remote: &Remote, run: &str, json: bool) -> anyhow::Result<Code> {
    let v = remote.get(&format!("/v1/runs/{run}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!("run {run}: {}", v["status"].as_str().unwrap_or("?"));
        if let Some(e) = v["error"].as_str() {
            eprintln!("error: {}", soma_host_api::log::escape_keeping_lines(e));
        }
        if !v["output"].is_null() {
            println!("{}", serde_json::to_string_pretty(&v["output"])?);
        }
    }
    Ok(match v["status"].as_str() {
        Some("succeeded") => Code::Ok,
        Some("failed") => Code::DagFailed,
        Some("cancelled") => Code::DagCancelled,
        _ => Code::Ok,
    })
}

/// `soma dag cancel RUN --server URL`.
pub(crate) fn dag_cancel(remote: &Remote, run: &str) -> anyhow::Result<Code> {
    let v = remote.post(&format!("/v1/runs/{run}/cancel"), &json!({}))?;
    println!("{v}");
    Ok(Code::Ok)
}

/// `soma token create --server URL` (an admin token for its own tenant,
/// an operator token for any).
pub(crate) fn token_create(
    remote: &Remote,
    tenant: &str,
    scopes: &[String],
    expires_in_s: Option<u64>,
) -> anyhow::Result<Code> {
    let v = remote.post(
        "/v1/tokens",
        &json!({ "tenant": tenant, "scopes": scopes, "expires_in_s": expires_in_s }),
    )?;
    println!("{v}");
    Ok(Code::Ok)
}

/// `soma token ls --server URL`: the tokens the caller may see.
pub(crate) fn token_ls(remote: &Remote) -> anyhow::Result<Value> {
    remote.get("/v1/tokens")
}

/// `soma token revoke ID --server URL`: refused from the next request on.
pub(crate) fn token_revoke(remote: &Remote, id: &str) -> anyhow::Result<Value> {
    let req = remote
        .client
        .delete(format!("{}/v1/tokens/{id}", remote.url));
    Ok(remote.send(req)?.1)
}
