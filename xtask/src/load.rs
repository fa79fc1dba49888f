//! `cargo xtask load`: closed-loop sessions against `soma daemon`.
//!
//! Each session holds one HTTP/1.1 keep-alive connection and repeats
//! `POST /v1/runs` → wait for the whole response → send the next one. After
//! a warm-up the task records every request's latency (a `Vec` per session,
//! merged and sorted at the end — exact percentiles, no histogram error) and
//! every error by kind, then prints throughput, p50/p95/p99/max, the
//! daemon's RSS and CPU, and whether the targets (p99 ≤ 20 ms, no errors)
//! were met.
//!
//! By default it builds `soma` and the capsules, starts a daemon on a free
//! loopback port with a fresh data directory and token (through
//! `soma-daemon-harness`, as the daemon tests do), and stops it with
//! SIGTERM afterwards; `--url URL --token T [--pid PID]` targets one that
//! is already running instead. Its own daemon serves one tenant, so it lifts
//! that tenant's fairness caps (`daemon.max_calls_per_tenant`,
//! `max_running_calls_per_tenant`, `max_in_flight`) and says so: the run
//! measures throughput, not the 429 cap.
//!
//! The client is hyper's bare `client::conn::http1` (no pool, no TLS, no
//! redirects) on a small tokio runtime, because it shares the machine's
//! cores with the daemon it measures; its own CPU time is reported so the
//! split is visible.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, StatusCode,
    body::Bytes,
    client::conn::http1::{self, SendRequest},
    header,
};
use hyper_util::rt::TokioIo;
use soma_daemon_harness as harness;

/// `cargo xtask load --help`'s description.
pub const LONG_ABOUT: &str = "\
Drive N closed-loop sessions (one keep-alive connection each: POST /v1/runs, wait for the \
response, repeat) against a freshly started `soma daemon` on loopback, then report throughput, \
latency percentiles, errors and the daemon's memory. Targets: p99 <= 20 ms, 0 errors.

With no think time a closed loop keeps every session busy, so by Little's law mean latency = \
sessions / throughput: p99 <= 20 ms at 1000 sessions needs more than 50k req/s. --think-ms \
models users who pause between requests.

The daemon it starts serves one tenant, so it lifts that tenant's caps \
(daemon.max_calls_per_tenant to the session count, daemon.max_running_calls_per_tenant to every \
call thread) and says so: the run measures throughput, not the per-tenant fairness cap (429). \
A daemon given with --url keeps its own settings.";

/// `cargo xtask load`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Concurrent sessions = connections.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    sessions: u32,
    /// Measured seconds, after the warm-up.
    #[arg(long = "duration-s", default_value = "10", value_name = "S", value_parser = seconds)]
    duration: Duration,
    /// Seconds not measured (connect, JIT, caches).
    #[arg(long = "warmup-s", default_value = "2", value_name = "S", value_parser = seconds)]
    warmup: Duration,
    /// Catalog name of the capsule to call.
    #[arg(long, default_value = "echo", value_name = "NAME")]
    capsule: String,
    /// Per request; longer counts as an error.
    #[arg(long = "timeout-ms", default_value_t = 5000, value_name = "MS")]
    timeout_ms: u64,
    /// Pause after each response before the next request.
    #[arg(long = "think-ms", default_value_t = 0, value_name = "MS")]
    think_ms: u64,
    /// Tokio workers of the load generator.
    #[arg(long = "client-threads", default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    client_threads: u32,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Exit non-zero when a target is missed.
    #[arg(long)]
    check: bool,
    /// Use a running daemon (http://host:port) instead of starting one.
    #[arg(long, value_name = "URL", requires = "token")]
    url: Option<String>,
    /// Its API token (scope run).
    #[arg(long, env = "SOMA_TOKEN", value_name = "T", hide_env_values = true)]
    token: Option<String>,
    /// Its process id, to report RSS and CPU (optional).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
}

/// `--duration-s 2.5`: non-negative seconds.
fn seconds(v: &str) -> Result<Duration, String> {
    let s: f64 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
    if !(s.is_finite() && s >= 0.0) {
        return Err("must be >= 0".into());
    }
    Ok(Duration::from_secs_f64(s))
}

/// Latency target shown beside the result.
const TARGET_P99: Duration = Duration::from_millis(20);
/// How long the daemon may take to print its listening line.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long the daemon may take to stop after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
struct Options {
    sessions: usize,
    duration: Duration,
    warmup: Duration,
    capsule: String,
    timeout: Duration,
    think: Duration,
    client_threads: usize,
    json: bool,
    check: bool,
    url: Option<String>,
    token: Option<String>,
    pid: Option<u32>,
}

impl Options {
    fn new(a: LoadArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(!a.duration.is_zero(), "--duration-s must be > 0");
        Ok(Self {
            sessions: a.sessions as usize,
            duration: a.duration,
            warmup: a.warmup,
            capsule: a.capsule,
            timeout: Duration::from_millis(a.timeout_ms),
            think: Duration::from_millis(a.think_ms),
            client_threads: a.client_threads as usize,
            json: a.json,
            check: a.check,
            url: a.url,
            token: a.token,
            pid: a.pid,
        })
    }
}

/// `cargo xtask load …`.
pub fn load(args: LoadArgs) -> anyhow::Result<()> {
    let opts = Options::new(args)?;
    let fd_limit = raise_fd_limit(opts.sessions)?;

    // The daemon named by --url, or one of our own: built, started on a free
    // port with a fresh data directory, and killed if dropped (so on every
    // error path); the data directory goes after it.
    let _data: tempfile::TempDir;
    let mut daemon: Option<Daemon> = None;
    let (url, token, pid) = match (&opts.url, &opts.token) {
        (Some(url), Some(token)) => (url.clone(), token.clone(), opts.pid),
        _ => {
            let data = tempfile::Builder::new().prefix("soma-load-").tempdir()?;
            let d = Daemon::start(data.path(), &opts.capsule, opts.sessions)?;
            let (url, token, pid) = (d.process.url().to_owned(), d.token.clone(), Some(d.pid()));
            daemon = Some(d);
            _data = data;
            (url, token, pid)
        }
    };
    let target = Target::parse(&url, &token)?;

    eprintln!(
        "» load: {} sessions × {:.0} s after {:.0} s warm-up → {} (capsule {}, fd limit {fd_limit})",
        opts.sessions,
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        url,
        opts.capsule,
    );
    let result = drive(&opts, target, pid)?;

    let stopped = match daemon.take() {
        Some(d) => Some(d.stop()?),
        None => None,
    };
    let report = Report::new(&opts, &result, stopped);
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    if opts.check && !report.targets_met() {
        bail!("a target was missed (p99 <= 20 ms, 0 errors)");
    }
    Ok(())
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (the daemon we start
/// inherits it): one descriptor per session on each side, plus slack.
fn raise_fd_limit(sessions: usize) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    let need = sessions as u64 + 256;
    if lim.rlim_cur < need {
        bail!(
            "{sessions} sessions need about {need} file descriptors but the hard limit is {}; \
             raise it (`ulimit -Hn {need}` as root, or LimitNOFILE=) or use fewer --sessions",
            lim.rlim_cur
        );
    }
    Ok(lim.rlim_cur)
}

// ---------------------------------------------------------------------------
// The daemon under test

/// A `soma daemon` started by this task through the shared harness
/// (`soma-daemon-harness`, as the daemon tests start theirs); killed if
/// dropped while running.
#[derive(Debug)]
struct Daemon {
    process: harness::Daemon,
    token: String,
}

/// How the daemon stopped after SIGTERM.
#[derive(Debug, Clone)]
struct Stopped {
    after: Duration,
    status: String,
    graceful: bool,
}

/// The `[daemon]` keys that make one tenant's load measure throughput:
/// every session may have its call queued, every call thread may run it.
fn single_tenant_keys(sessions: usize, cores: usize) -> Vec<(&'static str, usize)> {
    vec![
        // Default 256 queued or running calls per tenant: more sessions
        // than that would be answered 429 by the fairness cap.
        ("max_calls_per_tenant", sessions.max(256)),
        // Default half the cores: one tenant could not use the whole pool
        // (the daemon's `call_threads` default is 2 × cores).
        ("max_running_calls_per_tenant", 2 * cores),
        // Default 4096 requests in flight per tenant.
        ("max_in_flight", sessions.max(4096)),
    ]
}

impl Daemon {
    /// Build `soma` and the capsules, create a data directory, a token and a
    /// config serving `capsule` to one tenant, start the daemon and wait for
    /// its address.
    fn start(data: &Path, capsule: &str, sessions: usize) -> anyhow::Result<Self> {
        let bin = crate::build_soma_and_capsules()?;
        let soma = bin.join("soma");
        let capsule_path = crate::capsule_path(&bin, capsule)?;
        let token = harness::create_token(&soma, data, "load", "run,read")?;

        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let keys = single_tenant_keys(sessions, cores);
        let config = data.join("soma.toml");
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let mut text = String::from("[daemon]\nlisten = \"127.0.0.1:0\"\n");
        for (key, value) in &keys {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push_str(&format!(
            "\n[[daemon.capsules]]\nname = {}\npath = {}\n",
            quote(capsule),
            quote(&capsule_path.to_string_lossy()),
        ));
        std::fs::write(&config, text)?;
        eprintln!(
            "» load: one tenant, so its fairness caps are lifted: {}",
            keys.iter()
                .map(|(k, v)| format!("daemon.{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!(
            "» {} --config {} --data {} daemon",
            soma.display(),
            config.display(),
            data.display()
        );
        let start = harness::Start {
            keep_lines: 40,
            deadline: START_DEADLINE,
            ..harness::Start::default()
        };
        let process = harness::Daemon::start(&soma, data, &config, &start)?;
        eprintln!("» daemon {} listening on {}", process.pid(), process.url());
        Ok(Self { process, token })
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGTERM, then wait (SIGKILL after [`STOP_DEADLINE`]).
    fn stop(mut self) -> anyhow::Result<Stopped> {
        let s = self.process.stop(STOP_DEADLINE)?;
        Ok(Stopped {
            after: s.after,
            status: if s.graceful {
                s.status.to_string()
            } else {
                format!(
                    "{} (killed: no exit {STOP_DEADLINE:?} after SIGTERM)",
                    s.status
                )
            },
            graceful: s.graceful && s.status.success(),
        })
    }
}

/// Memory and CPU of the daemon, from `/proc`, sampled at the end of the
/// measured window (connections still open).
#[derive(Debug, Clone)]
struct DaemonStats {
    pid: u32,
    vm_rss_kib: Option<u64>,
    vm_hwm_kib: Option<u64>,
    threads: Option<u64>,
    /// CPU seconds (user + system) used during the measured window.
    cpu_s: Option<f64>,
}

impl DaemonStats {
    /// Reads `/proc/PID/status`; `cpu_s` comes from the caller's two samples.
    fn sample(pid: u32, cpu_s: Option<f64>) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Self {
            pid,
            vm_rss_kib: field("VmRSS"),
            vm_hwm_kib: field("VmHWM"),
            threads: field("Threads"),
            cpu_s,
        }
    }
}

/// User + system CPU seconds of a process so far (`/proc/PID/stat`).
fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, i.e. the 12th and 13th after ")".
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// CPU seconds this process (the load generator) has used so far.
fn self_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

// ---------------------------------------------------------------------------
// The load

/// Where to send requests.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    authority: String,
    path: String,
    authorization: String,
}

impl Target {
    fn parse(url: &str, token: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("http://").with_context(|| {
            format!("{url:?}: only plain http:// URLs are supported by the load generator")
        })?;
        let (authority, base) = rest.split_once('/').unwrap_or((rest, ""));
        let base = base.trim_end_matches('/');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        Ok(Self {
            addr,
            authority: authority.to_owned(),
            path: if base.is_empty() {
                "/v1/runs".into()
            } else {
                format!("/{base}/v1/runs")
            },
            authorization: format!("Bearer {token}"),
        })
    }
}

/// Shared by every session.
#[derive(Debug)]
struct Plan {
    target: Target,
    capsule_json: String,
    timeout: Duration,
    think: Duration,
    sessions: usize,
    /// When the sessions were started (all together).
    start: Instant,
    warmup_end: Instant,
    end: Instant,
    /// Completed requests, for the progress line.
    done: AtomicU64,
    failed: AtomicU64,
}

impl Plan {
    /// The clock starts now.
    fn new(opts: &Options, target: Target) -> Self {
        let start = Instant::now();
        Self {
            target,
            capsule_json: serde_json::Value::from(opts.capsule.as_str()).to_string(),
            timeout: opts.timeout,
            think: opts.think,
            sessions: opts.sessions,
            start,
            warmup_end: start + opts.warmup,
            end: start + opts.warmup + opts.duration,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    /// The response had this non-2xx status.
    Status(u16),
    /// 200, but the body did not say `"ok":true`.
    NotOk,
    /// TCP connect or HTTP/1 handshake failed.
    Connect,
    /// The connection broke while sending or receiving.
    Connection,
    /// No complete response within `--timeout-ms`.
    Timeout,
}

impl Failure {
    fn name(self) -> String {
        match self {
            Self::Status(s) => format!("status {s}"),
            Self::NotOk => "200 without \"ok\":true".into(),
            Self::Connect => "connect".into(),
            Self::Connection => "connection".into(),
            Self::Timeout => "timeout".into(),
        }
    }
}

/// One session's record.
#[derive(Debug, Default)]
struct SessionRecord {
    /// Latency in µs of each successful request started after the warm-up.
    latencies_us: Vec<u32>,
    /// Longest request started after the warm-up, failed ones included, µs.
    max_us: u32,
    errors: BTreeMap<Failure, u64>,
    warmup_ok: u64,
    warmup_errors: BTreeMap<Failure, u64>,
    last_done: Option<Instant>,
    connects: u64,
}

/// Everything the sessions recorded, merged.
#[derive(Debug)]
struct LoadResult {
    sessions: usize,
    client_threads: usize,
    /// Sorted.
    latencies_us: Vec<u32>,
    max_us: u32,
    errors: BTreeMap<Failure, u64>,
    warmup_ok: u64,
    warmup_errors: BTreeMap<Failure, u64>,
    connects: u64,
    /// From the end of the warm-up to the last measured completion.
    measured_for: Duration,
    /// The load generator's CPU seconds during the measured window.
    client_cpu_s: f64,
    /// The daemon at the end of the measured window, if its pid is known.
    daemon: Option<DaemonStats>,
    /// Requests each session completed in the measured window, sorted: a
    /// fair (FIFO) daemon serves every session about equally often.
    per_session: Vec<u64>,
}

/// Run the sessions on a fresh tokio runtime and merge their records.
fn drive(opts: &Options, target: Target, pid: Option<u32>) -> anyhow::Result<LoadResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .thread_name("load")
        .enable_all()
        .build()?;
    let plan = Arc::new(Plan::new(opts, target));
    let (records, monitored) = rt.block_on(async {
        let monitor = tokio::spawn(monitor(Arc::clone(&plan), pid));
        let tasks: Vec<_> = (0..opts.sessions)
            .map(|i| tokio::spawn(session(i, Arc::clone(&plan))))
            .collect();
        let mut records = Vec::with_capacity(tasks.len());
        for t in tasks {
            records.push(t.await?);
        }
        anyhow::Ok((records, monitor.await?))
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));

    let mut r = LoadResult {
        sessions: opts.sessions,
        client_threads: opts.client_threads,
        latencies_us: Vec::with_capacity(records.iter().map(|r| r.latencies_us.len()).sum()),
        max_us: 0,
        errors: BTreeMap::new(),
        warmup_ok: 0,
        warmup_errors: BTreeMap::new(),
        connects: 0,
        measured_for: Duration::ZERO,
        client_cpu_s: monitored.client_cpu_s,
        daemon: monitored.daemon,
        per_session: Vec::with_capacity(records.len()),
    };
    let mut last = plan.end;
    for rec in records {
        r.per_session.push(rec.latencies_us.len() as u64);
        r.latencies_us.extend_from_slice(&rec.latencies_us);
        r.max_us = r.max_us.max(rec.max_us);
        for (k, n) in rec.errors {
            *r.errors.entry(k).or_default() += n;
        }
        r.warmup_ok += rec.warmup_ok;
        for (k, n) in rec.warmup_errors {
            *r.warmup_errors.entry(k).or_default() += n;
        }
        r.connects += rec.connects;
        if let Some(t) = rec.last_done {
            last = last.max(t);
        }
    }
    r.latencies_us.sort_unstable();
    r.per_session.sort_unstable();
    r.measured_for = last.saturating_duration_since(plan.warmup_end);
    Ok(r)
}

/// What [`monitor`] saw.
#[derive(Debug)]
struct Monitored {
    client_cpu_s: f64,
    daemon: Option<DaemonStats>,
}

/// Prints a progress line a second on stderr; samples both processes' CPU
/// time when the warm-up ends and when the measured window ends, and the
/// daemon's memory at the end (while the sessions still hold their
/// connections).
async fn monitor(plan: Arc<Plan>, pid: Option<u32>) -> Monitored {
    let second = Duration::from_secs(1);
    let mut next_tick = plan.start + second;
    let mut at_warmup: Option<(f64, Option<f64>)> = None;
    let (mut done, mut failed) = (0, 0);
    loop {
        let mut next = next_tick.min(plan.end);
        if at_warmup.is_none() {
            next = next.min(plan.warmup_end);
        }
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if at_warmup.is_none() && now >= plan.warmup_end {
            at_warmup = Some((self_cpu(), pid.and_then(process_cpu)));
        }
        if now >= plan.end {
            let (client_before, daemon_before) = at_warmup.unwrap_or_default();
            return Monitored {
                client_cpu_s: self_cpu() - client_before,
                daemon: pid.map(|pid| {
                    let cpu = process_cpu(pid)
                        .zip(daemon_before)
                        .map(|(after, before)| after - before);
                    DaemonStats::sample(pid, cpu)
                }),
            };
        }
        if now >= next_tick {
            // The line describes the second that ends at `next_tick`.
            let phase = if next_tick <= plan.warmup_end {
                "warm-up"
            } else {
                "measure"
            };
            next_tick += second;
            let (d, f) = (
                plan.done.load(Ordering::Relaxed),
                plan.failed.load(Ordering::Relaxed),
            );
            eprintln!(
                "  {:>4.0} s  {phase}  {:>7} req/s  {:>5} errors",
                plan.start.elapsed().as_secs_f64(),
                d - done,
                f - failed
            );
            (done, failed) = (d, f);
        }
    }
}

/// A closed loop: connect, then request → full response → request … until
/// the plan's end. Reconnects when the connection breaks or times out.
async fn session(i: usize, plan: Arc<Plan>) -> SessionRecord {
    let mut rec = SessionRecord::default();
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    if !plan.think.is_zero() {
        // Spread the sessions over one think time so they do not move in step.
        let offset = plan.think.mul_f64(i as f64 / plan.sessions as f64);
        tokio::time::sleep_until((plan.start + offset).into()).await;
    }
    for n in 0u64.. {
        if n > 0 && !plan.think.is_zero() {
            tokio::time::sleep(plan.think).await;
        }
        let started = Instant::now();
        if started >= plan.end {
            break;
        }
        let measured = started >= plan.warmup_end;
        let outcome = tokio::time::timeout_at(
            (started + plan.timeout).into(),
            request(i, n, &plan, &mut conn, &mut rec.connects),
        )
        .await
        .unwrap_or(Err(Failure::Timeout));
        let done = Instant::now();
        let us = u32::try_from(done.duration_since(started).as_micros()).unwrap_or(u32::MAX);
        plan.done.fetch_add(1, Ordering::Relaxed);
        match (outcome, measured) {
            (Ok(()), true) => {
                rec.latencies_us.push(us);
                rec.max_us = rec.max_us.max(us);
                rec.last_done = Some(done);
            }
            (Ok(()), false) => rec.warmup_ok += 1,
            (Err(failure), measured) => {
                plan.failed.fetch_add(1, Ordering::Relaxed);
                if measured {
                    *rec.errors.entry(failure).or_default() += 1;
                    rec.max_us = rec.max_us.max(us);
                    rec.last_done = Some(done);
                } else {
                    *rec.warmup_errors.entry(failure).or_default() += 1;
                }
                if matches!(
                    failure,
                    Failure::Connect | Failure::Connection | Failure::Timeout
                ) {
                    // A broken connection is replaced; a refused one is not
                    // retried in a tight loop.
                    conn = None;
                    if failure == Failure::Connect {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
    rec
}

/// One request on the session's connection (opened if there is none).
async fn request(
    i: usize,
    n: u64,
    plan: &Plan,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    connects: &mut u64,
) -> Result<(), Failure> {
    if conn.as_ref().is_none_or(SendRequest::is_closed) {
        *conn = None;
        *connects += 1;
        let stream = tokio::net::TcpStream::connect(plan.target.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(connection);
        *conn = Some(sender);
    }
    let sender = conn.as_mut().ok_or(Failure::Connect)?;
    let body = format!(
        "{{\"capsule\":{},\"input\":{{\"session\":{i},\"n\":{n}}}}}",
        plan.capsule_json
    );
    let req = Request::post(plan.target.path.as_str())
        .header(header::HOST, plan.target.authority.as_str())
        .header(header::AUTHORIZATION, plan.target.authorization.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| Failure::Connection)?;
    sender.ready().await.map_err(|_| Failure::Connection)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|_| Failure::Connection)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| Failure::Connection)?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(Failure::Status(status.as_u16()));
    }
    if !contains(&body, b"\"ok\":true") {
        return Err(Failure::NotOk);
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// The report

#[derive(Debug)]
struct Report<'a> {
    opts: &'a Options,
    result: &'a LoadResult,
    stopped: Option<Stopped>,
    cores: usize,
}

impl<'a> Report<'a> {
    fn new(opts: &'a Options, result: &'a LoadResult, stopped: Option<Stopped>) -> Self {
        Self {
            opts,
            result,
            stopped,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// How evenly the sessions were served: requests per session (min,
    /// p10, median, max) and Jain's fairness index (1 = all equal, 1/n =
    /// one session got everything).
    fn per_session_json(&self) -> serde_json::Value {
        let v = &self.result.per_session;
        let at = |q: f64| {
            v.get(((v.len().saturating_sub(1)) as f64 * q).round() as usize)
                .copied()
        };
        let sum: f64 = v.iter().map(|&n| n as f64).sum();
        let squares: f64 = v.iter().map(|&n| (n as f64) * (n as f64)).sum();
        let jain = (squares > 0.0).then(|| sum * sum / (v.len() as f64 * squares));
        serde_json::json!({
            "min": at(0.0), "p10": at(0.10), "median": at(0.50), "max": at(1.0),
            "jain": jain,
        })
    }

    fn ok(&self) -> u64 {
        self.result.latencies_us.len() as u64
    }

    fn errors(&self) -> u64 {
        self.result.errors.values().sum()
    }

    fn throughput(&self) -> f64 {
        self.ok() as f64 / self.result.measured_for.as_secs_f64().max(1e-9)
    }

    /// Exact percentile of the successful requests, µs (nearest rank).
    fn percentile_us(&self, q: f64) -> Option<u32> {
        let v = &self.result.latencies_us;
        if v.is_empty() {
            return None;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }

    /// Mean of the successful requests, µs.
    fn mean_us(&self) -> Option<u32> {
        let v = &self.result.latencies_us;
        let sum: u64 = v.iter().map(|&us| u64::from(us)).sum();
        (!v.is_empty()).then(|| u32::try_from(sum / v.len() as u64).unwrap_or(u32::MAX))
    }

    fn p99_met(&self) -> bool {
        self.percentile_us(0.99)
            .is_some_and(|p| u128::from(p) <= TARGET_P99.as_micros())
    }

    fn targets_met(&self) -> bool {
        self.p99_met() && self.errors() == 0 && self.ok() > 0
    }

    fn to_text(&self) -> String {
        let ms =
            |us: Option<u32>| us.map_or("-".into(), |us| format!("{:.2} ms", f64::from(us) / 1e3));
        let mark = |met: bool| if met { "met" } else { "MISSED" };
        let r = self.result;
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(String::new());
        line(format!(
            "soma load — {} sessions (one connection each{}) × {:.1} s measured after {:.1} s \
             warm-up, capsule {:?}",
            r.sessions,
            if self.opts.think.is_zero() {
                String::new()
            } else {
                format!(", {} ms think time", self.opts.think.as_millis())
            },
            r.measured_for.as_secs_f64(),
            self.opts.warmup.as_secs_f64(),
            self.opts.capsule
        ));
        // Both processes' CPU is sampled over exactly the measured window.
        let window = self.opts.duration.as_secs_f64();
        line(format!(
            "  machine     {} cores; load generator: {} tokio worker(s), {:.1} CPU s ({:.2} cores busy)",
            self.cores,
            r.client_threads,
            r.client_cpu_s,
            r.client_cpu_s / window
        ));
        line(format!(
            "  throughput  {:.0} req/s  ({} ok in {:.2} s)",
            self.throughput(),
            self.ok(),
            r.measured_for.as_secs_f64()
        ));
        line(format!(
            "  latency     mean {}  p50 {}  p95 {}  p99 {}  max {}    target p99 ≤ {} ms: {}",
            ms(self.mean_us()),
            ms(self.percentile_us(0.50)),
            ms(self.percentile_us(0.95)),
            ms(self.percentile_us(0.99)),
            ms((r.max_us > 0).then_some(r.max_us)),
            TARGET_P99.as_millis(),
            mark(self.p99_met())
        ));
        if self.opts.think.is_zero() && !self.p99_met() && self.ok() > 0 {
            line(format!(
                "              (closed loop, no think time: mean latency = sessions / throughput \
                 = {:.1} ms by Little's law; p99 ≤ {} ms at {} sessions needs > {:.0} req/s)",
                r.sessions as f64 / self.throughput() * 1e3,
                TARGET_P99.as_millis(),
                r.sessions,
                r.sessions as f64 / TARGET_P99.as_secs_f64()
            ));
        }
        line(format!(
            "  errors      {} ({})    target 0: {}",
            self.errors(),
            by_kind(&r.errors),
            mark(self.errors() == 0)
        ));
        line(format!(
            "  warm-up     {} ok, {} errors ({}); {} connections opened in all",
            r.warmup_ok,
            r.warmup_errors.values().sum::<u64>(),
            by_kind(&r.warmup_errors),
            r.connects
        ));
        if let Some(d) = &r.daemon {
            let mib =
                |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            line(format!(
                "  daemon      pid {}: VmRSS {}, VmHWM {}, {} threads, {} CPU s ({} cores busy)",
                d.pid,
                mib(d.vm_rss_kib),
                mib(d.vm_hwm_kib),
                d.threads.map_or("-".into(), |t| t.to_string()),
                d.cpu_s.map_or("-".into(), |c| format!("{c:.1}")),
                d.cpu_s.map_or("-".into(), |c| format!("{:.2}", c / window)),
            ));
        }
        if let Some(st) = &self.stopped {
            line(format!(
                "  shutdown    SIGTERM → exit in {:.2} s ({}){}",
                st.after.as_secs_f64(),
                st.status,
                if st.graceful { "" } else { "  NOT GRACEFUL" }
            ));
        }
        s
    }

    fn to_json(&self) -> serde_json::Value {
        let ms = |us: Option<u32>| us.map(|us| f64::from(us) / 1e3);
        let r = self.result;
        let json_by_kind = |m: &BTreeMap<Failure, u64>| -> serde_json::Map<_, _> {
            m.iter()
                .map(|(k, n)| (k.name(), serde_json::Value::from(*n)))
                .collect()
        };
        serde_json::json!({
            "sessions": r.sessions,
            "capsule": self.opts.capsule,
            "warmup_s": self.opts.warmup.as_secs_f64(),
            "measured_s": r.measured_for.as_secs_f64(),
            "cores": self.cores,
            "client": { "threads": r.client_threads, "cpu_s": r.client_cpu_s },
            "throughput_rps": self.throughput(),
            "ok": self.ok(),
            "think_ms": self.opts.think.as_millis() as u64,
            "latency_ms": {
                "mean": ms(self.mean_us()),
                "p50": ms(self.percentile_us(0.50)),
                "p95": ms(self.percentile_us(0.95)),
                "p99": ms(self.percentile_us(0.99)),
                "max": ms((r.max_us > 0).then_some(r.max_us)),
            },
            "errors": { "total": self.errors(), "by_kind": json_by_kind(&r.errors) },
            "per_session": self.per_session_json(),
            "warmup": {
                "ok": r.warmup_ok,
                "errors": r.warmup_errors.values().sum::<u64>(),
                "errors_by_kind": json_by_kind(&r.warmup_errors),
            },
            "connections_opened": r.connects,
            "daemon": r.daemon.as_ref().map(|d| serde_json::json!({
                "pid": d.pid,
                "vm_rss_kib": d.vm_rss_kib,
                "vm_hwm_kib": d.vm_hwm_kib,
                "threads": d.threads,
                "cpu_s": d.cpu_s,
            })),
            "shutdown": self.stopped.as_ref().map(|s| serde_json::json!({
                "after_s": s.after.as_secs_f64(),
                "status": s.status,
                "graceful": s.graceful,
            })),
            "targets": {
                "p99_ms": TARGET_P99.as_millis() as u64,
                "p99_met": self.p99_met(),
                "errors_met": self.errors() == 0,
                "met": self.targets_met(),
            },
        })
    }
}

/// "3 timeout, 2 status 429" or "none".
fn by_kind(errors: &BTreeMap<Failure, u64>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(k, n)| format!("{n} {}", k.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask load ARGS` as clap parses it.
    fn parse(args: &[&str]) -> Result<Options, String> {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            load: LoadArgs,
        }
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Options::new(cli.load).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_flags_and_defaults() {
        let o = parse(&["--sessions", "16", "--duration-s=3", "--json"]).expect("parse");
        assert_eq!(o.sessions, 16);
        assert_eq!(o.duration, Duration::from_secs(3));
        assert_eq!(o.warmup, Duration::from_secs(2));
        assert_eq!(o.capsule, "echo");
        assert_eq!(o.timeout, Duration::from_millis(5000));
        assert!(o.json && !o.check);
        let o = parse(&[
            "--url",
            "http://127.0.0.1:1",
            "--token",
            "t",
            "--pid",
            "7",
            "--warmup-s",
            "0.5",
        ])
        .expect("parse");
        assert_eq!(
            (o.url.as_deref(), o.token.as_deref(), o.pid),
            (Some("http://127.0.0.1:1"), Some("t"), Some(7))
        );
        assert_eq!(o.warmup, Duration::from_millis(500));
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--sessions", "0"]).is_err());
        assert!(parse(&["--duration-s", "0"]).is_err());
        assert!(parse(&["--duration-s", "-1"]).is_err());
        assert!(parse(&["--help"]).is_err_and(|e| e.contains("--sessions <N>")));
    }

    #[test]
    fn target_from_url() -> anyhow::Result<()> {
        let t = Target::parse("http://127.0.0.1:7070", "soma_x")?;
        assert_eq!(t.addr.port(), 7070);
        assert_eq!(t.path, "/v1/runs");
        assert_eq!(t.authorization, "Bearer soma_x");
        assert_eq!(
            Target::parse("http://127.0.0.1:1/api/", "t")?.path,
            "/api/v1/runs"
        );
        assert!(Target::parse("https://127.0.0.1:1", "t").is_err());
        Ok(())
    }

    #[test]
    fn single_tenant_keys_cover_every_session() {
        let keys = single_tenant_keys(1000, 2);
        assert_eq!(
            keys,
            [
                ("max_calls_per_tenant", 1000),
                ("max_running_calls_per_tenant", 4),
                ("max_in_flight", 4096),
            ]
        );
        // Never below the daemon's defaults.
        assert_eq!(single_tenant_keys(16, 2)[0], ("max_calls_per_tenant", 256));
    }

    #[test]
    fn body_check() {
        assert!(contains(
            br#"{"run":"r","ok":true,"output":{}}"#,
            b"\"ok\":true"
        ));
        assert!(!contains(br#"{"ok":false}"#, b"\"ok\":true"));
    }
}
