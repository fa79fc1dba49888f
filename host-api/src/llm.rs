//! `llm`: chat completions through operator-configured, OpenAI-compatible
//! providers, metered per call.
//!
//! A call is: grant and request checks → resolve the model (alias →
//! provider + model) → estimate prompt tokens (tiktoken `cl100k_base`) →
//! [`Meter::reserve`] the estimate plus `max_tokens` → `POST
//! {base_url}/chat/completions` (deadline, retries) → [`Meter::settle`] the
//! provider's usage (or our count, flagged `estimated`) → the completion.
//! Any failure after the reservation releases it. No provider behaviour
//! traps the capsule: every failure is an `llm-error`.
//!
//! The host function blocks the calling (wasm) thread for at most the
//! provider's `timeout_ms`. Neither the blocking HTTP client nor the meter
//! (the synchronous PostgreSQL driver, with a shared store) ever runs
//! inside an async runtime: called from one (a capsule on the async call
//! path, a Temporal activity), the host function moves to a thread of its
//! own ([`crate::off_runtime`]).

mod provider;
mod tokens;

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};
use wasmtime::component::{HasSelf, Linker};

pub use self::provider::ProviderError;
use self::{
    provider::{Provider, WireMessage, WireRequest},
    tokens::Tokenizer,
};
use crate::bindings::soma::capsule::llm::{
    self as wit, ChatRequest, Completion, LlmError, Role, Usage,
};
use crate::meter::now_ms;
pub use crate::meter::{Meter, Metered, NoMeter, Reservation, Spender, cost_micros};

/// Default request cap (sum of message bytes).
const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// `max_tokens` when the request does not say.
const DEFAULT_MAX_TOKENS: u32 = 512;
/// Largest `max_tokens` a request may ask for.
const DEFAULT_MAX_TOKENS_LIMIT: u32 = 32_768;

/// Operator settings (`[llm]` in `soma.toml`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Largest accepted request (sum of message bytes); default 1 MiB.
    pub max_request_bytes: Option<usize>,
    /// `max_tokens` for requests that do not set it; default 512.
    pub default_max_tokens: Option<u32>,
    /// Largest `max_tokens` a request may set; default 32768.
    pub max_tokens_limit: Option<u32>,
    /// The providers (`[[llm.providers]]`). A model is served by the first
    /// provider that lists it (or an alias of it).
    pub providers: Vec<ProviderConfig>,
}

impl Config {
    fn max_request_bytes(&self) -> usize {
        self.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES)
    }

    /// Check the provider table: unique non-empty names, http(s) base URLs,
    /// aliases that point at a listed model, no model served twice. Cheap;
    /// once when the config is loaded.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut served: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, p) in self.providers.iter().enumerate() {
            if p.name.is_empty() {
                return Err(ConfigError::UnnamedProvider { index: i });
            }
            if self.providers[..i].iter().any(|q| q.name == p.name) {
                return Err(ConfigError::DuplicateProvider(p.name.clone()));
            }
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return Err(ConfigError::BadBaseUrl {
                    provider: p.name.clone(),
                    url: p.base_url.clone(),
                });
            }
            for (alias, model) in &p.aliases {
                if !p.models.contains(model) {
                    return Err(ConfigError::AliasTargetUnknown {
                        provider: p.name.clone(),
                        alias: alias.clone(),
                        model: model.clone(),
                    });
                }
            }
            for name in p.models.iter().chain(p.aliases.keys()) {
                if let Some(first) = served.insert(name, &p.name) {
                    return Err(ConfigError::ServedTwice {
                        model: name.clone(),
                        first: first.to_owned(),
                        second: p.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// One OpenAI-compatible provider (`[[llm.providers]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name used in errors, metrics and the ledger, e.g. `openai`.
    pub name: String,
    /// API root, e.g. `https://api.openai.com/v1`; requests go to
    /// `{base_url}/chat/completions`.
    pub base_url: String,
    /// Environment variable holding the bearer key, read once when the
    /// engine starts. Unset → no `Authorization` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Model names this provider serves.
    #[serde(default)]
    pub models: Vec<String>,
    /// Alias → model (one of `models`), e.g. `fast = "gpt-4o-mini"`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Deadline for one chat call, all retries included; default 30000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after a 429 or 5xx (or a failed connection); default 2.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Price of 1000 prompt tokens in micro-units of the ledger currency.
    #[serde(default)]
    pub price_input_per_1k_micros: u64,
    /// Price of 1000 completion tokens in micro-units of the ledger currency.
    #[serde(default)]
    pub price_output_per_1k_micros: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_max_retries() -> u32 {
    2
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            base_url: String::new(),
            api_key_env: None,
            models: Vec::new(),
            aliases: BTreeMap::new(),
            timeout_ms: default_timeout_ms(),
            max_retries: default_max_retries(),
            price_input_per_1k_micros: 0,
            price_output_per_1k_micros: 0,
        }
    }
}

/// What is wrong with the `[llm]` provider table.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// A provider without a name.
    #[error("[[llm.providers]] entry {index} has an empty name; give every provider a name")]
    UnnamedProvider {
        /// Position in the table.
        index: usize,
    },
    /// Two providers share a name.
    #[error("two [[llm.providers]] are named {0:?}; provider names must be unique")]
    DuplicateProvider(String),
    /// `base_url` is not http(s).
    #[error(
        "llm provider {provider}: base_url {url:?} must start with http:// or https:// \
         (e.g. \"http://127.0.0.1:8080/v1\")"
    )]
    BadBaseUrl {
        /// Provider name.
        provider: String,
        /// The URL.
        url: String,
    },
    /// An alias names a model the provider does not list.
    #[error(
        "llm provider {provider}: alias {alias:?} points at {model:?}, which is not in its models; \
         add it to models"
    )]
    AliasTargetUnknown {
        /// Provider name.
        provider: String,
        /// The alias.
        alias: String,
        /// Its target.
        model: String,
    },
    /// A model or alias is listed by two providers.
    #[error(
        "llm model or alias {model:?} is served by both {first} and {second}; \
         list it under one provider"
    )]
    ServedTwice {
        /// The model or alias.
        model: String,
        /// The provider that listed it first.
        first: String,
        /// The other one.
        second: String,
    },
}

/// The models a call may use. Empty denies every model.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Granted model names or aliases (as the capsule asked for them).
    pub models: Vec<String>,
}

/// Built once per engine: the providers (keys read from the environment,
/// HTTP clients built on first use) and the tokenizer (built on first use).
///
/// Cost: reads one environment variable per provider; no I/O, no threads.
#[derive(Debug)]
pub struct Shared {
    providers: Vec<Provider>,
    tokenizer: Tokenizer,
}

impl Shared {
    /// Shared LLM state for `config`, with API keys from the process environment.
    pub fn new(config: Config) -> Arc<Self> {
        Self::with_env(config, |var| std::env::var(var).ok())
    }

    /// Shared LLM state for `config`, looking each `api_key_env` up in `env`
    /// (a secret store, or a test's fixed map) instead of the process
    /// environment. `None` or an empty value makes that provider unavailable.
    pub fn with_env(config: Config, env: impl Fn(&str) -> Option<String>) -> Arc<Self> {
        Arc::new(Self {
            providers: config
                .providers
                .into_iter()
                .map(|p| Provider::new(p, &env))
                .collect(),
            tokenizer: Tokenizer::default(),
        })
    }

    /// Build the tokenizer now (~100 ms) instead of on the first chat call.
    pub fn warm(&self) {
        self.tokenizer.warm();
    }

    /// The provider serving `name` (an alias or a model) and the model to ask it for.
    fn route(&self, name: &str) -> Option<(&Provider, &str)> {
        self.providers.iter().find_map(|p| {
            if let Some(model) = p.config.aliases.get(name) {
                Some((p, model.as_str()))
            } else {
                p.config
                    .models
                    .iter()
                    .find(|m| *m == name)
                    .map(|m| (p, m.as_str()))
            }
        })
    }
}

/// Per-call LLM state.
#[derive(Debug)]
pub struct State {
    max_request_bytes: usize,
    default_max_tokens: u32,
    max_tokens_limit: u32,
    shared: Arc<Shared>,
    grant: Grant,
    meter: Arc<dyn Meter>,
    spender: Spender,
    /// The next chat call's [`Metered::seq`].
    seq: u32,
    /// The chat calls settled so far (written to the ledger as they
    /// happened): the call's report lists them.
    settled: Vec<Metered>,
}

impl State {
    /// Fresh state for one call. Cheap: copies three limits out of
    /// `config`, moves the rest in.
    pub fn new(
        config: &Config,
        shared: Arc<Shared>,
        grant: Grant,
        meter: Arc<dyn Meter>,
        spender: Spender,
    ) -> Self {
        Self {
            max_request_bytes: config.max_request_bytes(),
            default_max_tokens: config.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            max_tokens_limit: config.max_tokens_limit.unwrap_or(DEFAULT_MAX_TOKENS_LIMIT),
            shared,
            grant,
            meter,
            spender,
            seq: 0,
            settled: Vec::new(),
        }
    }

    /// Chat calls that reached the meter so far in this capsule call.
    pub fn calls(&self) -> u32 {
        self.seq
    }

    /// Everything that needs no provider: grant, shape, size, `max_tokens`.
    fn validate(&self, request: &ChatRequest) -> Result<u32, LlmError> {
        if !self.grant.models.contains(&request.model) {
            return Err(LlmError::Denied(format!(
                "model {:?} is not granted to this capsule (granted: {:?}); \
                 ask for it in describe() and have the operator allow it",
                request.model, self.grant.models
            )));
        }
        if request.messages.is_empty() {
            return Err(LlmError::Invalid(
                "a chat request needs at least one message".into(),
            ));
        }
        let size: usize = request.messages.iter().map(|m| m.content.len()).sum();
        if size > self.max_request_bytes {
            return Err(LlmError::Invalid(format!(
                "request is {size} bytes; the limit is {}",
                self.max_request_bytes
            )));
        }
        let max_tokens = request.max_tokens.unwrap_or(self.default_max_tokens);
        if max_tokens == 0 || max_tokens > self.max_tokens_limit {
            return Err(LlmError::Invalid(format!(
                "max-tokens is {max_tokens}; it must be between 1 and {}",
                self.max_tokens_limit
            )));
        }
        if let Some(t) = request.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return Err(LlmError::Invalid(format!(
                "temperature is {t}; it must be between 0 and 2"
            )));
        }
        Ok(max_tokens)
    }
}

/// The llm capability: a capsule asks with the request `llm` and the
/// models (or aliases) as arguments; granted are those the operator lists
/// in `[policy] llm_models`.
#[derive(Debug, Clone, Copy)]
pub struct Llm;

/// llm's engine-wide share: the section, the providers and the meter.
#[derive(Debug)]
pub struct Service {
    config: Config,
    shared: Arc<Shared>,
    meter: Arc<dyn Meter>,
}

impl crate::capability::Capability for Llm {
    const NAME: &'static str = "llm";
    const INTERFACES: &'static [&'static str] = &["llm"];
    type Config = Config;
    type ConfigError = ConfigError;
    /// `[policy] llm_models`.
    type Policy = Vec<String>;
    type Shared = Service;
    /// The models (or aliases) asked for.
    type Wants = Vec<String>;
    type Grant = Grant;
    type State = State;
    type PrepareError = std::convert::Infallible;
    type CommitError = std::convert::Infallible;
    type Report = Vec<Metered>;

    fn check(config: &Config) -> Result<(), ConfigError> {
        config.check()
    }

    /// Reads one environment variable per provider (its API key).
    fn shared(config: &Config, engine: &crate::capability::EngineContext) -> Service {
        Service {
            config: config.clone(),
            shared: Shared::new(config.clone()),
            meter: engine.meter.clone(),
        }
    }

    fn want(wants: &mut Vec<String>, args: &[String]) {
        for model in args {
            if !wants.contains(model) {
                wants.push(model.clone());
            }
        }
    }

    fn describe_wants(wants: &Vec<String>, out: &mut Vec<String>) {
        out.extend(wants.iter().map(|m| format!("{}:{m}", Self::NAME)));
    }

    /// The models asked for that the policy allows and the DAG node (if
    /// it lists models) admits.
    fn grant(
        wants: &Vec<String>,
        allowed: &Vec<String>,
        scope: &crate::capability::GrantScope<'_>,
    ) -> Grant {
        let node = scope.allows(Self::NAME);
        Grant {
            models: wants
                .iter()
                .filter(|w| allowed.contains(w) && node.admits(w))
                .cloned()
                .collect(),
        }
    }

    /// `true`, `false`, or the models the node may use.
    fn check_allow(_allow: &crate::capability::Allow) -> Result<(), crate::capability::AllowError> {
        Ok(())
    }

    /// Clones the grant and the spender (`Arc`s) and the meter handle.
    fn prepare(
        service: &Service,
        grant: &Grant,
        call: &crate::capability::CallContext<'_>,
    ) -> Result<State, std::convert::Infallible> {
        Ok(State::new(
            &service.config,
            service.shared.clone(),
            grant.clone(),
            service.meter.clone(),
            call.spender.clone(),
        ))
    }

    fn finish(state: State) -> Vec<Metered> {
        state.settled
    }
}

/// Store data that hands out the per-call LLM state.
pub trait LlmView {
    /// The call's LLM state.
    fn llm_state(&mut self) -> &mut State;
}

/// Wire `soma:capsule/llm` into `linker`. Once per engine.
pub fn add_to_linker<T: LlmView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<State>>(linker, |t| t.llm_state())
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl wit::Host for State {
    /// Blocks for at most the provider's `timeout_ms` (plus the meter's
    /// own work); tokenizes the prompt once (microseconds per KiB).
    fn chat(&mut self, request: ChatRequest) -> Result<Completion, LlmError> {
        crate::off_runtime(|| self.chat_here(request))
            .unwrap_or_else(|why| Err(LlmError::Unavailable(why)))
    }
}

impl State {
    /// [`wit::Host::chat`], on a thread outside any async runtime.
    fn chat_here(&mut self, request: ChatRequest) -> Result<Completion, LlmError> {
        let max_tokens = self.validate(&request)?;
        let shared = Arc::clone(&self.shared);
        let (provider, model) = shared.route(&request.model).ok_or_else(|| {
            LlmError::Unavailable(if shared.providers.is_empty() {
                "no LLM provider is configured on this host; add an [[llm.providers]] entry \
                 to soma.toml"
                    .to_owned()
            } else {
                format!(
                    "no configured LLM provider serves model {:?}; list it in models (or \
                     aliases) of an [[llm.providers]] entry",
                    request.model
                )
            })
        })?;
        provider.check_ready()?;
        let prices = (
            provider.config.price_input_per_1k_micros,
            provider.config.price_output_per_1k_micros,
        );
        let prompt_estimate = shared.tokenizer.count_prompt(&request.messages);
        let reserve_tokens = prompt_estimate.saturating_add(u64::from(max_tokens));
        let reserve_micros =
            cost_micros(prompt_estimate, u64::from(max_tokens), prices.0, prices.1);
        let reservation = self
            .meter
            .reserve(&self.spender, reserve_tokens, reserve_micros)
            .map_err(LlmError::BudgetExceeded)?;
        let seq = self.seq;
        self.seq = self.seq.saturating_add(1);

        let body = WireRequest {
            model,
            messages: request
                .messages
                .iter()
                .map(|m| WireMessage {
                    role: role(m.role),
                    content: &m.content,
                })
                .collect(),
            max_tokens,
            temperature: request.temperature,
            stop: &request.stop,
        };
        let reply = match provider.chat(&body) {
            Ok(r) => r,
            Err(e) => {
                self.meter.release(&self.spender, reservation);
                tracing::debug!(provider = %provider.config.name, model, "LLM call failed: {e}");
                return Err(e.into());
            }
        };
        let (prompt_tokens, completion_tokens, estimated) = match reply.usage {
            Some((p, c)) => (p, c, false),
            None => (prompt_estimate, shared.tokenizer.count(&reply.text), true),
        };
        let answered_by = reply.model.unwrap_or_else(|| model.to_owned());
        let metered = Metered {
            provider: provider.config.name.clone(),
            model: answered_by.clone(),
            prompt_tokens,
            completion_tokens,
            estimated,
            input_price_per_1k_micros: prices.0,
            output_price_per_1k_micros: prices.1,
            cost_micros: cost_micros(prompt_tokens, completion_tokens, prices.0, prices.1),
            seq,
            time_ms: now_ms(),
        };
        self.meter
            .settle(&self.spender, reservation, &metered)
            .map_err(|reason| {
                LlmError::Unavailable(format!(
                    "the completion could not be recorded in the ledger, so it is withheld: {reason}"
                ))
            })?;
        self.settled.push(metered.clone());
        // Usage no budget can hold (the sum overflows, or reaches the
        // saturation point) is recorded as such above — exhausting every
        // budget it counts against — and the completion is refused.
        if prompt_tokens
            .checked_add(completion_tokens)
            .is_none_or(|t| t == u64::MAX)
        {
            return Err(LlmError::BudgetExceeded(format!(
                "provider {} reported {prompt_tokens} prompt + {completion_tokens} completion \
                 tokens, more than any budget can hold; the usage is recorded as exceeding \
                 every budget and the completion is withheld (check the provider)",
                metered.provider
            )));
        }
        tracing::debug!(
            provider = %metered.provider,
            model = %metered.model,
            prompt_tokens,
            completion_tokens,
            estimated,
            cost_micros = metered.cost_micros,
            "LLM call settled"
        );
        Ok(Completion {
            text: reply.text,
            model: answered_by,
            finish_reason: reply.finish_reason,
            usage: Usage {
                prompt_tokens: saturating_u32(prompt_tokens),
                completion_tokens: saturating_u32(completion_tokens),
            },
            estimated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str, models: &[&str]) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            base_url: "http://127.0.0.1:1/v1".into(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            ..ProviderConfig::default()
        }
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: Config = toml_like(
            r#"{"providers":[{"name":"local","base_url":"http://127.0.0.1:8080/v1",
                "models":["m"],"aliases":{"fast":"m"},"price_input_per_1k_micros":150}]}"#,
        );
        let p = &c.providers[0];
        assert_eq!((p.timeout_ms, p.max_retries), (30_000, 2));
        assert_eq!(p.price_input_per_1k_micros, 150);
        assert!(c.check().is_ok());
        let bad = serde_json::from_str::<Config>(
            r#"{"providers":[{"name":"x","base_url":"http://h","colour":1}]}"#,
        );
        assert!(bad.is_err());
    }

    fn toml_like(json: &str) -> Config {
        serde_json::from_str(json).expect("config")
    }

    #[test]
    fn check_names_each_mistake() {
        let mut c = Config {
            providers: vec![provider("a", &["m"]), provider("a", &["n"])],
            ..Config::default()
        };
        assert!(matches!(c.check(), Err(ConfigError::DuplicateProvider(_))));
        c.providers[1].name = "b".into();
        c.providers[1].models = vec!["m".into()];
        assert!(matches!(c.check(), Err(ConfigError::ServedTwice { .. })));
        c.providers[1].models = vec!["n".into()];
        c.providers[1].aliases.insert("fast".into(), "zzz".into());
        assert!(matches!(
            c.check(),
            Err(ConfigError::AliasTargetUnknown { .. })
        ));
        c.providers[1].aliases.clear();
        c.providers[1].base_url = "ftp://x".into();
        assert!(matches!(c.check(), Err(ConfigError::BadBaseUrl { .. })));
    }

    #[test]
    fn routing_resolves_aliases_then_models() {
        let mut a = provider("a", &["m1"]);
        a.aliases.insert("fast".into(), "m1".into());
        let shared = Shared::new(Config {
            providers: vec![a, provider("b", &["m2"])],
            ..Config::default()
        });
        let name = |n: &str| {
            shared
                .route(n)
                .map(|(p, m)| (p.config.name.clone(), m.to_owned()))
        };
        assert_eq!(name("fast"), Some(("a".into(), "m1".into())));
        assert_eq!(name("m2"), Some(("b".into(), "m2".into())));
        assert_eq!(name("nope"), None);
    }
}
