//! The host capabilities, composed in one place.
//!
//! Each capability module (`log`, `kv`, `llm`, `events`, `wasi`) owns its
//! whole story and says so by implementing [`Capability`]: its operator
//! section, its share of `[policy]`, its shared state, what a capsule may
//! ask for, its grant, its per-call state, its linker wiring and its share
//! of the call's report. This file is the only place that lists them (the
//! role Spin's `#[derive(RuntimeFactors)]` struct plays): one field per
//! capability in each composed type below, and one line per capability in
//! each composed phase. The runtime sees only the composed types:
//!
//! | composed type | built | from |
//! |---|---|---|
//! | [`Sections`] | per config check / engine start | the runtime's config tree |
//! | [`Shared`] | once per engine | [`Sections`] + [`EngineContext`] |
//! | [`Wants`] | once per capsule (at load) | `describe()`'s capability requests |
//! | [`Grants`] | once per run (and per DAG node) | [`Wants`] ∩ [`Policy`] ∩ [`GrantScope`] |
//! | [`State`] | once per call | [`Shared`] + [`Grants`] + [`CallContext`] |
//! | [`Report`] | once per call, at the end | [`State`] |

use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime_wasi::WasiView;

pub use crate::capability::{
    Allow, AllowError, CallContext, Capability, EngineContext, GrantScope, Redactor, Restriction,
};
use crate::{
    bindings::soma::capsule::types::CapabilityRequest, events, http, kv, llm, log, secrets, wasi,
};

/// Store data that holds the composed per-call [`State`]. The runtime's
/// store type implements this (and `WasiView`, which wasmtime-wasi needs);
/// every capability's view is derived from it.
pub trait HasCapabilities: WasiView + 'static {
    /// The call's capability states.
    fn capabilities(&mut self) -> &mut State;
}

impl<T: HasCapabilities> log::LogView for T {
    fn log_state(&mut self) -> &mut log::State {
        &mut self.capabilities().log
    }
}

impl<T: HasCapabilities> kv::KvView for T {
    fn kv_state(&mut self) -> &mut kv::State {
        &mut self.capabilities().kv
    }
}

impl<T: HasCapabilities> llm::LlmView for T {
    fn llm_state(&mut self) -> &mut llm::State {
        &mut self.capabilities().llm
    }
}

impl<T: HasCapabilities + Send> http::HttpView for T {
    fn http_view(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        let State { wasi, http, .. } = self.capabilities();
        http.view(wasi.table())
    }
}

impl<T: HasCapabilities> events::EventsView for T {
    fn events_state(&mut self) -> &mut events::State {
        &mut self.capabilities().events
    }
}

impl<T: HasCapabilities> secrets::SecretsView for T {
    fn secrets_state(&mut self) -> &mut secrets::State {
        &mut self.capabilities().secrets
    }
}

/// The capability sections of the runtime's config tree, borrowed. The
/// runtime keeps each section a top-level table of `soma.toml` (so a typo
/// is reported at its line); this is how it hands them over.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    /// `[log]`.
    pub log: &'a log::Config,
    /// `[kv]`.
    pub kv: &'a kv::Config,
    /// `[llm]`.
    pub llm: &'a llm::Config,
    /// `[events]`.
    pub events: &'a events::Config,
    /// `[wasi]`.
    pub wasi: &'a wasi::Config,
    /// `[http]`.
    pub http: &'a http::Config,
    /// `[secrets]`.
    pub secrets: &'a secrets::Config,
    /// `[policy]`.
    pub policy: &'a Policy,
}

/// A capability section is inconsistent; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    /// `[kv]`.
    #[error(transparent)]
    Kv(#[from] kv::ConfigError),
    /// `[llm]`.
    #[error("llm: {0}")]
    Llm(#[source] llm::ConfigError),
    /// `[http]`.
    #[error(transparent)]
    Http(#[from] http::ConfigError),
    /// `[secrets]`.
    #[error(transparent)]
    Secrets(#[from] secrets::ConfigError),
}

impl Sections<'_> {
    /// Check every section. Once per config load; cheap.
    pub fn check(&self) -> Result<(), SectionError> {
        let Ok(()) = log::Log::check(self.log);
        kv::Kv::check(self.kv)?;
        llm::Llm::check(self.llm).map_err(SectionError::Llm)?;
        let Ok(()) = events::Events::check(self.events);
        let Ok(()) = wasi::Wasi::check(self.wasi);
        http::Http::check(self.http)?;
        secrets::Secrets::check(self.secrets)?;
        Ok(())
    }
}

/// What the operator allows capsules to be granted (`[policy]` in
/// `soma.toml`): one key per capability that needs the operator's consent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// kv's share: grant kv to capsules that ask for it. Default true.
    pub allow_kv: bool,
    /// llm's share: models capsules may be granted (when they ask). Default none.
    pub llm_models: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_kv: true,
            llm_models: Vec::new(),
        }
    }
}

/// Every capability's shared state. Built once per engine.
#[derive(Debug)]
pub struct Shared {
    log: <log::Log as Capability>::Shared,
    kv: <kv::Kv as Capability>::Shared,
    llm: <llm::Llm as Capability>::Shared,
    events: <events::Events as Capability>::Shared,
    wasi: <wasi::Wasi as Capability>::Shared,
    http: <http::Http as Capability>::Shared,
    secrets: <secrets::Secrets as Capability>::Shared,
    policy: Policy,
}

impl Shared {
    /// Build every capability's shared state. Once per engine; no I/O.
    pub fn new(sections: Sections<'_>, engine: &EngineContext) -> Self {
        Self {
            log: log::Log::shared(sections.log, engine),
            kv: kv::Kv::shared(sections.kv, engine),
            llm: llm::Llm::shared(sections.llm, engine),
            events: events::Events::shared(sections.events, engine),
            wasi: wasi::Wasi::shared(sections.wasi, engine),
            http: http::Http::shared(sections.http, engine),
            secrets: secrets::Secrets::shared(sections.secrets, engine),
            policy: sections.policy.clone(),
        }
    }

    /// The secrets capability's store, for the daemon's tenant-secrets
    /// routes (set, delete, list; never a value).
    pub fn secrets(&self) -> &secrets::Shared {
        &self.secrets
    }

    /// The http capability's engine-wide share (its totals, for metrics).
    pub fn http(&self) -> &http::Service {
        &self.http
    }

    /// The grants for a capsule that asked for `wants`, under the
    /// operator's policy, in `scope`. Once per run; cheap.
    pub fn grant(&self, wants: &Wants, scope: &GrantScope<'_>) -> Grants {
        let p = &self.policy;
        Grants {
            kv: kv::Kv::grant(&wants.kv, &p.allow_kv, scope),
            llm: llm::Llm::grant(&wants.llm, &p.llm_models, scope),
            dirs: wasi::Wasi::grant(&wants.dirs, &(), scope),
            http: http::Http::grant(&wants.http, self.http.policy(), scope),
            secrets: secrets::Secrets::grant(&wants.secrets, &self.secrets, scope),
        }
    }
}

/// Wire every capability's interfaces — the current contract's and the
/// frozen 0.1.0's — plus the type-only `types` interface into `linker`.
/// Once per engine.
pub fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    add_the_rest(linker)
}

/// The same interfaces with WASI and WASI HTTP bound async: the linker for
/// capsules that import `wasi:http/outgoing-handler`, whose calls are
/// driven on the call thread's own tokio runtime (no thread hand-offs per
/// request). Soma's own interfaces stay blocking host functions (they run
/// on the call's fiber). Once per engine.
pub fn add_to_linker_async<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasi::add_to_linker_async(linker)?;
    http::add_to_linker_async(linker)?;
    add_the_rest(linker)
}

/// Everything but WASI and WASI HTTP (the same in both linkers).
fn add_the_rest<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    log::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    llm::add_to_linker(linker)?;
    events::add_to_linker(linker)?;
    secrets::add_to_linker(linker)?;
    crate::compat::add_to_linker(linker)?;
    crate::bindings::add_types_to_linker(linker)
}

/// What the host provides, for the unknown-import message, e.g. `WASI p2
/// and soma:capsule/{log,kv,llm,events} (@0.1.0 and @0.2.0)`.
pub fn provided() -> String {
    let interfaces: Vec<&str> = [
        log::Log::INTERFACES,
        kv::Kv::INTERFACES,
        llm::Llm::INTERFACES,
        events::Events::INTERFACES,
        secrets::Secrets::INTERFACES,
        wasi::Wasi::INTERFACES,
        http::Http::INTERFACES,
    ]
    .concat();
    format!(
        "WASI p2, wasi:http/outgoing-handler and soma:capsule/{{{}}} (@0.1.0 and @0.2.0)",
        interfaces.join(",")
    )
}

/// Whether a DAG node may say `allow` about capability `name` (one entry of
/// its `capabilities:`). Once per entry when a spec or plan is validated.
pub fn check_allow(name: &str, allow: &Allow) -> Result<(), AllowError> {
    match name {
        log::Log::NAME => log::Log::check_allow(allow),
        kv::Kv::NAME => kv::Kv::check_allow(allow),
        llm::Llm::NAME => llm::Llm::check_allow(allow),
        events::Events::NAME => events::Events::check_allow(allow),
        wasi::Wasi::NAME => wasi::Wasi::check_allow(allow),
        http::Http::NAME => http::Http::check_allow(allow),
        secrets::Secrets::NAME => secrets::Secrets::check_allow(allow),
        _ => Err(AllowError::Unknown {
            name: name.to_owned(),
            known: [
                log::Log::NAME,
                kv::Kv::NAME,
                llm::Llm::NAME,
                events::Events::NAME,
                wasi::Wasi::NAME,
                http::Http::NAME,
                secrets::Secrets::NAME,
            ]
            .join(", "),
        }),
    }
}

/// What a capsule asked for in `describe()`, per capability. Serialized
/// (in `soma inspect --json`) as `wants_kv`, `wants_llm_models`,
/// `wants_dirs` and `wants_other`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Wants {
    /// kv's share: wants the store.
    #[serde(rename = "wants_kv")]
    pub kv: <kv::Kv as Capability>::Wants,
    /// llm's share: the models (or aliases) it wants.
    #[serde(rename = "wants_llm_models")]
    pub llm: <llm::Llm as Capability>::Wants,
    /// wasi's share: guest paths of the directories it wants preopened.
    #[serde(rename = "wants_dirs")]
    pub dirs: <wasi::Wasi as Capability>::Wants,
    /// http's share: the allowlist patterns it asks for.
    #[serde(rename = "wants_http")]
    pub http: <http::Http as Capability>::Wants,
    /// secrets' share: the secret names it reads.
    #[serde(rename = "wants_secrets")]
    pub secrets: <secrets::Secrets as Capability>::Wants,
    /// Requests no capability of this host claims (one added after this
    /// host was built): kept, shown, granted nothing.
    #[serde(rename = "wants_other")]
    pub other: Vec<Request>,
}

/// One capability request as the capsule made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// The capability's name.
    pub name: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Wants {
    /// Sort `describe()`'s requests by capability. Once per capsule.
    pub fn from_requests(requests: Vec<CapabilityRequest>) -> Self {
        let mut w = Self::default();
        for r in requests {
            match r.name.as_str() {
                log::Log::NAME => log::Log::want(&mut (), &r.args),
                kv::Kv::NAME => kv::Kv::want(&mut w.kv, &r.args),
                llm::Llm::NAME => llm::Llm::want(&mut w.llm, &r.args),
                events::Events::NAME => events::Events::want(&mut (), &r.args),
                wasi::Wasi::NAME => wasi::Wasi::want(&mut w.dirs, &r.args),
                http::Http::NAME => http::Http::want(&mut w.http, &r.args),
                secrets::Secrets::NAME => secrets::Secrets::want(&mut w.secrets, &r.args),
                _ => w.other.push(Request {
                    name: r.name,
                    args: r.args,
                }),
            }
        }
        w
    }

    /// `kv`, `llm:small`, `dir:/data`, `http:example.com`, … for `soma
    /// inspect`; empty when the capsule asks for nothing.
    pub fn words(&self) -> Vec<String> {
        let mut out = Vec::new();
        kv::Kv::describe_wants(&self.kv, &mut out);
        llm::Llm::describe_wants(&self.llm, &mut out);
        wasi::Wasi::describe_wants(&self.dirs, &mut out);
        http::Http::describe_wants(&self.http, &mut out);
        secrets::Secrets::describe_wants(&self.secrets, &mut out);
        for r in &self.other {
            if r.args.is_empty() {
                out.push(r.name.clone());
            }
            out.extend(r.args.iter().map(|a| format!("{}:{a}", r.name)));
        }
        out
    }
}

/// What one call may use: one grant per capability. Built by the runtime
/// from [`Shared::grant`]; `Grants::default()` denies everything.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// kv: the namespaces the call may use; `None` denies kv.
    pub kv: <kv::Kv as Capability>::Grant,
    /// llm: the models the call may use.
    pub llm: <llm::Llm as Capability>::Grant,
    /// wasi: preopened directories (offered by the caller, checked against
    /// the capsule's wants by [`wasi::Wasi::offer`]).
    pub dirs: <wasi::Wasi as Capability>::Grant,
    /// http: where the call may send requests.
    pub http: <http::Http as Capability>::Grant,
    /// secrets: the names the call may read.
    pub secrets: <secrets::Secrets as Capability>::Grant,
}

impl Grants {
    /// `kv`, `llm:small`, `dir:/data`, … (as [`Wants::words`] names them)
    /// for `soma dag validate`; empty when nothing is granted.
    pub fn words(&self) -> Vec<String> {
        let mut out = Vec::new();
        kv::Kv::describe_wants(&self.kv.is_some(), &mut out);
        llm::Llm::describe_wants(&self.llm.models, &mut out);
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.guest.clone()).collect();
        wasi::Wasi::describe_wants(&dirs, &mut out);
        http::Http::describe_wants(&self.http.patterns(), &mut out);
        let secrets: Vec<String> = self.secrets.names().map(str::to_owned).collect();
        secrets::Secrets::describe_wants(&secrets, &mut out);
        out
    }

    /// Move every grant to run `run` (its kv blackboard). Cheap.
    pub fn rescope(&mut self, run: &str) {
        kv::Kv::rescope(&mut self.kv, run);
        llm::Llm::rescope(&mut self.llm, run);
        wasi::Wasi::rescope(&mut self.dirs, run);
        http::Http::rescope(&mut self.http, run);
        secrets::Secrets::rescope(&mut self.secrets, run);
    }
}

/// A call's per-call state could not be built; the call is denied.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A granted directory could not be opened.
    #[error(transparent)]
    Wasi(#[from] wasi::PreopenError),
}

/// A successful call's effects could not be made durable; nothing was.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// kv's writes.
    #[error(transparent)]
    Kv(#[from] kv::CommitError),
}

impl From<std::convert::Infallible> for CommitError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Every capability's per-call state: the capability part of the store's
/// data. Built once per call.
#[derive(Debug)]
pub struct State {
    /// WASI: stdio capture and preopened directories.
    pub wasi: wasi::State,
    /// `log`.
    pub log: log::State,
    /// `kv`.
    pub kv: kv::State,
    /// `events`.
    pub events: events::State,
    /// `llm`.
    pub llm: llm::State,
    /// `http`.
    pub http: http::State,
    /// `secrets`.
    pub secrets: secrets::State,
    /// The values the call must not emit (what it read from `secrets`).
    redactor: std::sync::Arc<Redactor>,
    /// Whether held effects were masked already (before commit, or at finish).
    redacted: bool,
}

impl State {
    /// Build every capability's state for one call. Cost: what each
    /// `prepare` costs (a few small allocations, one `open` per granted
    /// directory); no lock.
    pub fn new(
        shared: &Shared,
        grants: &Grants,
        call: &CallContext<'_>,
    ) -> Result<Self, PrepareError> {
        let wasi = wasi::Wasi::prepare(&shared.wasi, &grants.dirs, call)?;
        let Ok(log) = log::Log::prepare(&shared.log, &(), call);
        let Ok(kv) = kv::Kv::prepare(&shared.kv, &grants.kv, call);
        let Ok(events) = events::Events::prepare(&shared.events, &(), call);
        let Ok(llm) = llm::Llm::prepare(&shared.llm, &grants.llm, call);
        let Ok(http) = http::Http::prepare(&shared.http, &grants.http, call);
        let Ok(secrets) = secrets::Secrets::prepare(&shared.secrets, &grants.secrets, call);
        let mut state = Self {
            wasi,
            log,
            kv,
            events,
            llm,
            http,
            secrets,
            redactor: std::sync::Arc::default(),
            redacted: false,
        };
        let r = &state.redactor;
        wasi::Wasi::attach(&mut state.wasi, r);
        log::Log::attach(&mut state.log, r);
        kv::Kv::attach(&mut state.kv, r);
        events::Events::attach(&mut state.events, r);
        llm::Llm::attach(&mut state.llm, r);
        http::Http::attach(&mut state.http, r);
        secrets::Secrets::attach(&mut state.secrets, r);
        Ok(state)
    }

    /// `text` with every secret value the call read replaced by
    /// `[REDACTED:name]` (for the call's output and error, which the
    /// runtime holds). Borrowed, and one atomic load, when the call read
    /// none.
    pub fn redact<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        self.redactor.redact(text)
    }

    /// Mask what the capabilities hold for after the call (kv's pending
    /// writes). Once, before commit or finish; free when nothing was read.
    fn redact_held(&mut self) {
        if self.redacted || !self.redactor.is_armed() {
            return;
        }
        self.redacted = true;
        let r = &*self.redactor;
        wasi::Wasi::redact(&mut self.wasi, r);
        log::Log::redact(&mut self.log, r);
        kv::Kv::redact(&mut self.kv, r);
        events::Events::redact(&mut self.events, r);
        llm::Llm::redact(&mut self.llm, r);
        http::Http::redact(&mut self.http, r);
        secrets::Secrets::redact(&mut self.secrets, r);
    }

    /// Make a successful call's effects durable. Once per successful call.
    pub fn commit(&mut self) -> Result<(), CommitError> {
        self.redact_held();
        wasi::Wasi::commit(&mut self.wasi)?;
        log::Log::commit(&mut self.log)?;
        kv::Kv::commit(&mut self.kv)?;
        events::Events::commit(&mut self.events)?;
        llm::Llm::commit(&mut self.llm)?;
        http::Http::commit(&mut self.http)?;
        secrets::Secrets::commit(&mut self.secrets)?;
        Ok(())
    }

    /// Every capability's share of the call's report, with every secret
    /// value the call read masked. Once per call.
    pub fn finish(mut self) -> Report {
        self.redact_held();
        let (stdout, stderr) = wasi::Wasi::finish(self.wasi);
        let (logs, logs_dropped) = log::Log::finish(self.log);
        kv::Kv::finish(self.kv);
        let (events, events_dropped) = events::Events::finish(self.events);
        let llm = llm::Llm::finish(self.llm);
        let http = http::Http::finish(self.http);
        secrets::Secrets::finish(self.secrets);
        let mut report = Report {
            logs,
            logs_dropped,
            events,
            events_dropped,
            stdout,
            stderr,
            http,
            llm,
        };
        report.redact(&self.redactor);
        report
    }
}

/// What the capabilities report about one call.
#[derive(Debug, Default)]
pub struct Report {
    /// log: lines kept (capped).
    pub logs: Vec<log::LogLine>,
    /// log: lines dropped past the cap.
    pub logs_dropped: u32,
    /// events: events kept (capped).
    pub events: Vec<events::Event>,
    /// events: events dropped past the caps.
    pub events_dropped: u32,
    /// wasi: captured stdout (capped).
    pub stdout: String,
    /// wasi: captured stderr (capped).
    pub stderr: String,
    /// http: requests and bytes.
    pub http: http::Usage,
    /// llm: the chat calls settled (each already in the ledger).
    pub llm: Vec<crate::meter::Metered>,
}

impl Report {
    /// Mask every value `redactor` lists in the report's text (log lines
    /// and fields, event names and payloads, stdout and stderr — the last
    /// two also where a size cap cut a value). Free when it lists none.
    fn redact(&mut self, redactor: &Redactor) {
        if !redactor.is_armed() {
            return;
        }
        for line in &mut self.logs {
            redactor.redact_in_place(&mut line.message);
            for (k, v) in &mut line.fields {
                redactor.redact_in_place(k);
                redactor.redact_in_place(v);
            }
        }
        for event in &mut self.events {
            redactor.redact_in_place(&mut event.name);
            redactor.redact_json(&mut event.payload);
        }
        for text in [&mut self.stdout, &mut self.stderr] {
            if let std::borrow::Cow::Owned(o) = redactor.redact_cut(text) {
                *text = o;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LazyDatabase;
    use std::sync::Arc;

    fn request(name: &str, args: &[&str]) -> CapabilityRequest {
        CapabilityRequest {
            name: name.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn shared(policy: Policy, dir: &std::path::Path) -> Shared {
        Shared::new(
            Sections {
                log: &log::Config::default(),
                kv: &kv::Config::default(),
                llm: &llm::Config::default(),
                events: &events::Config::default(),
                wasi: &wasi::Config::default(),
                http: &http::Config::default(),
                secrets: &secrets::Config::default(),
                policy: &policy,
            },
            &EngineContext {
                db: Arc::new(LazyDatabase::new(dir.join("soma.redb"))),
                meter: Arc::new(llm::NoMeter),
            },
        )
    }

    #[test]
    fn requests_are_sorted_by_capability_and_unknown_ones_are_kept() {
        let w = Wants::from_requests(vec![
            request("llm", &["small"]),
            request("kv", &[]),
            request("gpu", &["a100"]),
            request("llm", &["large", "small"]),
            request("dir", &["/data"]),
            request("secrets", &["api-key"]),
            request("log", &[]),
        ]);
        assert!(w.kv);
        assert_eq!(w.llm, ["small", "large"], "requests add up, once each");
        assert_eq!(w.dirs, ["/data"]);
        assert_eq!(w.secrets, ["api-key"]);
        assert_eq!(
            w.other,
            [Request {
                name: "gpu".into(),
                args: vec!["a100".into()],
            }]
        );
        assert_eq!(
            w.words(),
            [
                "kv",
                "llm:small",
                "llm:large",
                "dir:/data",
                "secrets:api-key",
                "gpu:a100"
            ]
        );
        assert!(Wants::from_requests(Vec::new()).words().is_empty());
        let json = serde_json::to_value(&w).expect("json");
        assert_eq!(json["wants_kv"], true);
        assert_eq!(
            json["wants_llm_models"],
            serde_json::json!(["small", "large"])
        );
        assert_eq!(json["wants_other"][0]["name"], "gpu");
        assert_eq!(json["wants_secrets"], serde_json::json!(["api-key"]));
    }

    #[test]
    fn each_capability_grants_its_wants_within_its_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wants = Wants::from_requests(vec![
            request("kv", &[]),
            request("llm", &["small", "large"]),
            request("dir", &["/data"]),
            request("http", &["example.com"]),
        ]);
        let scope = GrantScope {
            capsule: "sha256:abc",
            run: "r1",
            origin: "./capsule.wasm",
            node: None,
        };
        let open = shared(
            Policy {
                allow_kv: true,
                llm_models: vec!["small".into()],
            },
            dir.path(),
        );
        let mut g = open.grant(&wants, &scope);
        let kv = g.kv.clone().expect("kv granted");
        assert_eq!(kv.capsule, kv::Space::Capsule("sha256:abc".into()));
        assert_eq!(kv.run, Some(kv::Space::Run("r1".into())));
        assert_eq!(g.llm.models, ["small"], "only what the policy allows");
        assert!(g.dirs.is_empty(), "directories wait for the caller's offer");
        g.rescope("r2");
        assert_eq!(
            g.kv.as_ref().and_then(|k| k.run.clone()),
            Some(kv::Space::Run("r2".into()))
        );

        let closed = shared(
            Policy {
                allow_kv: false,
                llm_models: Vec::new(),
            },
            dir.path(),
        );
        let g = closed.grant(&wants, &scope);
        assert!(g.kv.is_none());
        assert!(g.llm.models.is_empty());
        // Nothing asked for, nothing granted, whatever the policy.
        let g = open.grant(&Wants::default(), &scope);
        assert!(g.kv.is_none() && g.llm.models.is_empty());
    }

    #[test]
    fn a_dag_node_only_narrows_what_wants_and_policy_grant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wants = Wants::from_requests(vec![request("kv", &[]), request("llm", &["small"])]);
        let policy = Policy {
            allow_kv: true,
            llm_models: vec!["small".into()],
        };
        let open = shared(policy, dir.path());
        let restriction = |yaml: &str| -> Restriction { serde_json::from_str(yaml).expect("json") };
        let scope = |node| GrantScope {
            capsule: "sha256:abc",
            run: "r1",
            origin: "./capsule.wasm",
            node,
        };
        // No kv: kv goes, llm stays.
        let no_kv = restriction(r#"{"kv": false}"#);
        let wider = restriction(r#"{"kv": true, "llm": ["small", "large"]}"#);
        let none = restriction(r#"{"llm": []}"#);
        let g = open.grant(&wants, &scope(Some(&no_kv)));
        assert!(g.kv.is_none());
        assert_eq!(g.llm.models, ["small"]);
        assert_eq!(g.words(), ["llm:small"]);
        // The same capsule in a node that says nothing keeps both.
        let unrestricted = Restriction::default();
        let g = open.grant(&wants, &scope(Some(&unrestricted)));
        assert!(g.kv.is_some());
        assert_eq!(g.words(), ["kv", "llm:small"]);
        // Asking for more than wants ∩ policy gives nothing more.
        let g = open.grant(&wants, &scope(Some(&wider)));
        assert_eq!(
            g.llm.models,
            ["small"],
            "large is neither wanted nor allowed"
        );
        let closed = shared(
            Policy {
                allow_kv: false,
                llm_models: Vec::new(),
            },
            dir.path(),
        );
        let g = closed.grant(&wants, &scope(Some(&wider)));
        assert!(
            g.kv.is_none() && g.llm.models.is_empty(),
            "the node cannot widen the policy"
        );
        // A list narrows llm to the models it names.
        assert!(
            open.grant(&wants, &scope(Some(&none)))
                .llm
                .models
                .is_empty()
        );
        // Restrictions compose: a plan node is held to its planner's too.
        let both = wider.and(&no_kv);
        assert_eq!(both.0.get("kv"), Some(&Allow::Denied));
        assert_eq!(
            both.0.get("llm"),
            Some(&Allow::Only(vec!["small".into(), "large".into()]))
        );
        assert_eq!(both.to_string(), "kv: false, llm: [small, large]");
        let json = serde_json::to_string(&both).expect("json");
        assert_eq!(json, r#"{"kv":false,"llm":["small","large"]}"#);
    }

    #[test]
    fn node_restrictions_are_checked_per_capability() {
        assert!(check_allow("kv", &Allow::Denied).is_ok());
        assert!(check_allow("llm", &Allow::Only(vec!["small".into()])).is_ok());
        let e = check_allow("kv", &Allow::Only(vec!["x".into()])).expect_err("no args");
        assert!(e.to_string().contains("takes `true` or `false`"), "{e}");
        let e = check_allow("kvv", &Allow::Denied).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown capability `kvv`: this host's capabilities are log, kv, llm, events, dir, http, secrets"
        );
        for fixed in ["log", "events", "dir"] {
            let e = check_allow(fixed, &Allow::Denied).expect_err("fixed");
            assert!(e.to_string().contains("cannot be restricted"), "{e}");
        }
    }

    #[test]
    fn provided_names_every_interface() {
        let p = provided();
        assert_eq!(
            p,
            "WASI p2, wasi:http/outgoing-handler and soma:capsule/{log,kv,llm,events,secrets} \
             (@0.1.0 and @0.2.0)"
        );
    }

    #[test]
    fn sections_check_each_capability() {
        let policy = Policy::default();
        let kv = kv::Config {
            max_pending_bytes_per_call: 1,
            ..kv::Config::default()
        };
        let sections = Sections {
            log: &log::Config::default(),
            kv: &kv,
            llm: &llm::Config::default(),
            events: &events::Config::default(),
            wasi: &wasi::Config::default(),
            http: &http::Config::default(),
            secrets: &secrets::Config::default(),
            policy: &policy,
        };
        let e = sections.check().expect_err("kv inconsistent");
        assert!(
            e.to_string().contains("kv.max_pending_bytes_per_call"),
            "{e}"
        );
        let kv = kv::Config::default();
        let llm = llm::Config {
            providers: vec![llm::ProviderConfig::default()],
            ..llm::Config::default()
        };
        let e = Sections {
            kv: &kv,
            llm: &llm,
            ..sections
        }
        .check()
        .expect_err("unnamed provider");
        assert!(e.to_string().starts_with("llm: "), "{e}");
    }
}
