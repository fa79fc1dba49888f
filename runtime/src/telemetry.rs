//! Process-wide tracing: a `fmt` layer to stderr filtered by `SOMA_LOG`,
//! and, when an endpoint is configured, an OpenTelemetry layer that exports
//! spans over OTLP/HTTP (protobuf) to a collector (Jaeger, Tempo, the
//! OpenTelemetry Collector, …).
//!
//! The exporter needs no async runtime: a batch span processor collects
//! finished spans on its own thread and posts them with a blocking HTTP
//! client. Spans are dropped (never block the caller) when its queue is
//! full. [`init`] returns a [`Telemetry`] guard; dropping it flushes what is
//! queued and shuts the exporter down, so keep it alive until the process
//! ends.
//!
//! What is exported does not depend on `SOMA_LOG` (which only decides what
//! is printed): spans and events at `info` and above from Soma's own crates
//! (`soma_*` targets), `warn` and above from everything else.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::Targets,
    layer::SubscriberExt as _,
    util::{SubscriberInitExt as _, TryInitError},
};

/// The environment variable holding the stderr log filter
/// (`tracing_subscriber::EnvFilter` syntax, e.g. `info,soma_runtime=debug`).
pub const LOG_ENV: &str = "SOMA_LOG";

/// The path OTLP/HTTP collectors receive traces on; appended to an
/// endpoint given without it.
pub const OTLP_TRACES_PATH: &str = "/v1/traces";

/// How long the exporter may take to post one batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dropping [`Telemetry`] waits for the last spans to be posted.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed telemetry. Dropping it flushes queued spans to the OTLP
/// collector (waiting up to 5 s) and shuts the exporter down; the stderr
/// log stays installed.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    traces_url: Option<String>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces_url", &self.traces_url)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Where spans are posted (`…/v1/traces`), if anywhere.
    pub fn traces_url(&self) -> Option<&str> {
        self.traces_url.as_deref()
    }

    /// Post every span finished so far now. Blocks until the collector has
    /// answered (or the export timed out).
    pub fn flush(&self) -> Result<(), TelemetryError> {
        match &self.provider {
            Some(provider) => provider
                .force_flush()
                .map_err(|e| TelemetryError::Export(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            // The subscriber may be half torn down by now: stderr directly.
            eprintln!("soma: flushing traces to the OTLP collector failed: {e}");
        }
    }
}

/// Why telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global subscriber is already installed (by an earlier [`init`] or
    /// by other code); `init` works once per process.
    #[error(
        "a global tracing subscriber is already installed ({0}); telemetry::init runs once per process"
    )]
    AlreadyInstalled(String),
    /// The log filter does not parse.
    #[error(
        "log filter `{filter}` (from {origin}): {message}; use e.g. `info` or `warn,soma_runtime=debug`"
    )]
    Filter {
        /// The filter text.
        filter: String,
        /// Where it came from: `SOMA_LOG` or the default.
        origin: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The OTLP endpoint is not an `http://` or `https://` URL.
    #[error("OTLP endpoint `{endpoint}`: {message}; give e.g. `http://127.0.0.1:4318`")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        message: String,
    },
    /// The OTLP exporter could not be built or could not export.
    #[error("OTLP exporter: {0}")]
    Export(String),
}

/// Install the global tracing subscriber: a `fmt` layer to stderr with an
/// `EnvFilter` from `SOMA_LOG` (else `default_filter`), plus an
/// OpenTelemetry layer exporting spans over OTLP/HTTP (protobuf) to
/// `otlp_endpoint` when given (`http://host:4318` or the full
/// `…/v1/traces` URL), with resource `service.name = service`.
///
/// Once per process, at start-up; a second call (or a call after other
/// code installed a subscriber) returns [`TelemetryError::AlreadyInstalled`]
/// and changes nothing. With an endpoint it starts the exporter's thread
/// (and a short-lived one to build its HTTP client); nothing is sent until
/// spans finish.
pub fn init(
    default_filter: &str,
    otlp_endpoint: Option<&str>,
    service: &str,
) -> Result<Telemetry, TelemetryError> {
    if tracing::dispatcher::has_been_set() {
        return Err(TelemetryError::AlreadyInstalled(
            "tracing's global dispatcher is set".into(),
        ));
    }
    let filter = log_filter(default_filter)?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(stderr_colours())
        .with_filter(filter);
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry()
            .with(fmt)
            .try_init()
            .map_err(already)?;
        return Ok(Telemetry {
            provider: None,
            traces_url: None,
        });
    };
    let traces_url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Export(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("soma");
    let exported = Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("soma_runtime", LevelFilter::INFO)
        .with_target("soma_host_api", LevelFilter::INFO)
        .with_target("soma", LevelFilter::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(exported);
    let telemetry = Telemetry {
        provider: Some(provider),
        traces_url: Some(traces_url),
    };
    // On failure `telemetry` drops here and shuts its exporter down.
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(already)?;
    Ok(telemetry)
}

fn already(e: TryInitError) -> TelemetryError {
    TelemetryError::AlreadyInstalled(e.to_string())
}

/// Whether log lines on stderr may carry ANSI colours: only when stderr is
/// a terminal, and never with `NO_COLOR` set to a non-empty value
/// (<https://no-color.org>). A log redirected to a file or a journal gets
/// plain text.
pub fn stderr_colours() -> bool {
    colours(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// `SOMA_LOG` if set (an error if it does not parse), else `default_filter`.
fn log_filter(default_filter: &str) -> Result<EnvFilter, TelemetryError> {
    let (filter, origin) = match std::env::var(LOG_ENV) {
        Ok(value) if !value.trim().is_empty() => (value, LOG_ENV),
        _ => (default_filter.to_owned(), "default"),
    };
    EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| TelemetryError::Filter {
            filter,
            origin,
            message: e.to_string(),
        })
}

/// The URL spans are posted to: `endpoint`, with [`OTLP_TRACES_PATH`]
/// appended unless it already ends with it.
fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let bad = |message: &str| TelemetryError::Endpoint {
        endpoint: endpoint.to_owned(),
        message: message.to_owned(),
    };
    let trimmed = endpoint.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| bad("not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    if trimmed.contains(char::is_whitespace) {
        return Err(bad("contains whitespace"));
    }
    let url = if trimmed.ends_with(OTLP_TRACES_PATH) {
        trimmed.to_owned()
    } else {
        format!("{trimmed}{OTLP_TRACES_PATH}")
    };
    url.parse::<http::Uri>()
        .map_err(|e| bad(&format!("not a valid URL: {e}")))?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Read as _, Write as _},
        net::TcpListener,
        sync::mpsc,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn colours_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(!colours(false, None), "a pipe or a file gets plain text");
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(
            colours(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colours(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn endpoints_get_the_traces_path() {
        let url = |e: &str| traces_url(e).expect(e);
        assert_eq!(
            url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("https://otel.example:4318/v1/traces"),
            "https://otel.example:4318/v1/traces"
        );
        for bad in [
            "127.0.0.1:4318",
            "grpc://x:4317",
            "http://",
            "http:///x",
            "http://a b",
        ] {
            assert!(
                matches!(traces_url(bad), Err(TelemetryError::Endpoint { .. })),
                "{bad}"
            );
        }
    }

    /// One HTTP request as a fake collector sees it: (request line, headers, body).
    type Request = (String, Vec<String>, Vec<u8>);

    /// A one-shot OTLP/HTTP collector on a loopback port: answers 200 to
    /// every request and forwards it.
    fn fake_collector() -> (String, mpsc::Receiver<Request>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let mut headers = Vec::new();
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = h.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    headers.push(h.trim().to_ascii_lowercase());
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                if tx.send((line.trim().to_owned(), headers, body)).is_err() {
                    return;
                }
            }
        });
        (format!("http://{addr}"), rx)
    }

    /// The whole life of the global subscriber, in one test because it is
    /// process-wide: install with OTLP, export a span, flush on drop, and
    /// refuse a second install.
    #[test]
    fn spans_reach_the_collector_and_init_runs_once() {
        let (endpoint, requests) = fake_collector();
        let telemetry = init("off", Some(&endpoint), "soma-telemetry-test").expect("init");
        assert_eq!(
            telemetry.traces_url(),
            Some(format!("{endpoint}/v1/traces").as_str())
        );
        {
            let span = tracing::info_span!("capsule_call", capsule = "echo");
            let _entered = span.enter();
            tracing::info!("inside");
        }
        drop(telemetry);
        let deadline = Instant::now() + Duration::from_secs(20);
        let (line, headers, body) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let request = requests
                .recv_timeout(left)
                .expect("the collector got no export within 20 s");
            if request.0.starts_with("POST") {
                break request;
            }
        };
        assert_eq!(line, "POST /v1/traces HTTP/1.1");
        assert!(
            headers
                .iter()
                .any(|h| h == "content-type: application/x-protobuf"),
            "{headers:?}"
        );
        let contains = |needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(contains("soma-telemetry-test"), "service.name is exported");
        assert!(contains("capsule_call"), "the span is exported");

        assert!(matches!(
            init("info", None, "again"),
            Err(TelemetryError::AlreadyInstalled(_))
        ));
    }
}
