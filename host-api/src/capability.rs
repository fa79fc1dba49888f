//! What one host capability is: the [`Capability`] trait and the contexts
//! its phases receive. Below every capability module (each implements the
//! trait) and below their composition in [`crate::capabilities`], so no
//! capability module names the composition.
//!
//! Wiring a capability's interfaces into a linker is each module's own
//! `add_to_linker` (bounded by its view trait), called by the composition;
//! it is not a trait method, because its bound would have to name the
//! composed store data.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    meter::{Meter, Spender},
    storage::LazyDatabase,
};

/// One host capability: its types and its phases. Implemented by a marker
/// type in the capability's module (`kv::Kv`, `llm::Llm`, …).
///
/// A capability never sees another's types; [`Shared`], [`Grants`] and
/// [`State`] hold one field per capability and call these phases.
pub trait Capability {
    /// The request name a capsule uses in `describe()` (`kv`, `llm`, `dir`).
    const NAME: &'static str;
    /// The `soma:capsule` interfaces it serves (for the unknown-import
    /// message); empty for a capability served through WASI.
    const INTERFACES: &'static [&'static str];

    /// Its `soma.toml` section (`[kv]`, `[llm]`, …).
    type Config;
    /// Why its section is inconsistent.
    type ConfigError: std::error::Error + Send + Sync + 'static;
    /// Its share of `[policy]`: what the operator allows capsules that ask.
    type Policy: ?Sized;
    /// State shared by every call (pools, database handles, provider
    /// clients). Built once per engine.
    type Shared;
    /// What one capsule asked for. Built once per capsule.
    type Wants: Default;
    /// What one call may use; `Default` denies everything.
    type Grant: Default;
    /// Per-call state, in the store.
    type State;
    /// Why its per-call state could not be built (the call is denied).
    type PrepareError: std::error::Error + Send + Sync + 'static;
    /// Why a successful call's effects could not be made durable.
    type CommitError: std::error::Error + Send + Sync + 'static;
    /// Its share of the call's report.
    type Report;

    /// Check the section's consistency. Once per config load (and by
    /// `soma config check`); cheap.
    fn check(config: &Self::Config) -> Result<(), Self::ConfigError>;

    /// Build the shared state. Once per engine; may read the environment,
    /// must not do I/O (open the database, connect) — do that lazily.
    fn shared(config: &Self::Config, engine: &EngineContext) -> Self::Shared;

    /// Record one request named [`Self::NAME`] with its arguments. Once per
    /// request when a capsule is loaded; requests of the same name add up.
    fn want(wants: &mut Self::Wants, args: &[String]);

    /// The capsule's wants as `name:arg` words for `soma inspect`.
    fn describe_wants(wants: &Self::Wants, out: &mut Vec<String>);

    /// The grant: the capsule's wants ∩ the operator's policy ∩ the
    /// scope (capsule, run, and what the DAG node allows:
    /// [`GrantScope::allows`]`(Self::NAME)`). Once per run (and per DAG node
    /// that restricts it); cheap (clones a few strings).
    fn grant(wants: &Self::Wants, policy: &Self::Policy, scope: &GrantScope<'_>) -> Self::Grant;

    /// Whether a DAG node may say `allow` about this capability (its
    /// `capabilities:` entry). Once per node when a spec or plan is
    /// validated. Default: `true` or `false`, no list (a capability without
    /// arguments).
    fn check_allow(allow: &Allow) -> Result<(), AllowError> {
        match allow {
            Allow::Only(_) => Err(AllowError::NoArguments { name: Self::NAME }),
            Allow::Granted | Allow::Denied => Ok(()),
        }
    }

    /// Move a grant to another run (a DAG run, a daemon call). Cheap.
    /// Default: the grant does not depend on the run.
    fn rescope(grant: &mut Self::Grant, run: &str) {
        let _ = (grant, run);
    }

    /// Build the per-call state. Once per call, on the hot path: must be
    /// cheap (no I/O, no lock; a few small allocations at most).
    fn prepare(
        shared: &Self::Shared,
        grant: &Self::Grant,
        call: &CallContext<'_>,
    ) -> Result<Self::State, Self::PrepareError>;

    /// Make a successful call's effects durable (kv's writes). Once per
    /// successful call; a failed call's state is dropped instead. Default:
    /// nothing to commit.
    fn commit(state: &mut Self::State) -> Result<(), Self::CommitError> {
        let _ = state;
        Ok(())
    }

    /// Its share of the report. Once per call, at the end.
    fn finish(state: Self::State) -> Self::Report;

    /// Hand the call's [`Redactor`] to the state: a capability that hands
    /// the guest values it must never emit (secrets) adds them to it; one
    /// that sends text out *while* the call runs (log, to the host's
    /// tracing) keeps a clone and masks with it as it goes. Once per call,
    /// right after `prepare`; an `Arc` clone at most. Default: nothing.
    fn attach(state: &mut Self::State, redactor: &Arc<Redactor>) {
        let _ = (state, redactor);
    }

    /// Mask, in what the state holds for after the call (kv's pending
    /// writes), every value `redactor` lists. Once per call, before
    /// `commit`, and only when the call read something to mask (so free
    /// for every other call). Default: nothing held.
    fn redact(state: &mut Self::State, redactor: &Redactor) {
        let _ = (state, redactor);
    }
}

/// The values one call must never emit (the secrets it read) and what each
/// becomes in its place (`[REDACTED:name]`). Shared by the call's capability
/// states; the composition masks the call's report, output and error with
/// it, capabilities mask what they send out while the call runs.
///
/// Free while empty (one atomic load per [`Redactor::redact`]); once armed,
/// one Aho-Corasick pass per text, allocating only when something matched.
///
/// A value of [`Redactor::ENCODED_MIN_LEN`] bytes or more is masked in its
/// standard encodings too — base64 and base64url (each with and without
/// padding), hex (lower and upper case) and percent-encoding (RFC 3986:
/// every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`) — all in the same
/// pass. A shorter value is masked only as itself (its encodings are a
/// few characters that would mask unrelated text). Other transforms (a
/// value split across two writes, base64 of the value inside a longer
/// text, compression, …) are not recognized.
#[derive(Default)]
pub struct Redactor {
    armed: std::sync::atomic::AtomicBool,
    inner: std::sync::Mutex<Masks>,
}

#[derive(Default)]
struct Masks {
    /// (pattern, replacement), in insertion order: each value added, then
    /// its encodings; zeroized on drop.
    values: Vec<(zeroize::Zeroizing<String>, String)>,
    matcher: Option<aho_corasick::AhoCorasick>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map_or(0, |m| m.values.len());
        write!(f, "Redactor({n} values, [REDACTED])")
    }
}

impl Redactor {
    /// The length (bytes) from which a value's encodings are masked too.
    pub const ENCODED_MIN_LEN: usize = 8;

    /// Mask `value` as `[REDACTED:name]` from now on, and (if it has at
    /// least [`Redactor::ENCODED_MIN_LEN`] bytes) its base64, base64url,
    /// hex and percent-encoded forms. Encodes the value (a few small
    /// allocations) and rebuilds the matcher (microseconds for a handful
    /// of values); a value already listed, or an empty one, is not added
    /// again.
    pub fn add(&self, name: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        let Ok(mut masks) = self.inner.lock() else {
            return;
        };
        if masks.values.iter().any(|(v, _)| v.as_str() == value) {
            return;
        }
        let replacement = format!("[REDACTED:{name}]");
        let forms = if value.len() >= Self::ENCODED_MIN_LEN {
            encodings(value.as_bytes())
        } else {
            Vec::new()
        };
        for form in std::iter::once(zeroize::Zeroizing::new(value.to_owned())).chain(forms) {
            if !masks.values.iter().any(|(v, _)| *v == form) {
                masks.values.push((form, replacement.clone()));
            }
        }
        let patterns: Vec<&str> = masks.values.iter().map(|(v, _)| v.as_str()).collect();
        masks.matcher = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(patterns)
            .ok();
        self.armed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether any value is listed (a call that read no secret: false).
    pub fn is_armed(&self) -> bool {
        self.armed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `text` with every listed value replaced. Borrowed (no allocation)
    /// when nothing is listed or nothing matched.
    pub fn redact<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        if !self.is_armed() {
            return std::borrow::Cow::Borrowed(text);
        }
        let Ok(masks) = self.inner.lock() else {
            return std::borrow::Cow::Borrowed(text);
        };
        let Some(matcher) = &masks.matcher else {
            return std::borrow::Cow::Borrowed(text);
        };
        if !matcher.is_match(text) {
            return std::borrow::Cow::Borrowed(text);
        }
        let replacements: Vec<&str> = masks.values.iter().map(|(_, r)| r.as_str()).collect();
        std::borrow::Cow::Owned(matcher.replace_all(text, &replacements))
    }

    /// [`Redactor::redact`] for text that may have been cut at a size cap:
    /// also masks a trailing piece that is the start of a listed value (at
    /// least 4 bytes of it, or all of a shorter one), so a cut cannot leave
    /// a value's first bytes behind.
    pub fn redact_cut<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let whole = self.redact(text);
        if !self.is_armed() {
            return whole;
        }
        let Ok(masks) = self.inner.lock() else {
            return whole;
        };
        for (value, replacement) in &masks.values {
            let shortest = value.len().min(4);
            let longest = (value.len() - 1).min(whole.len());
            for len in (shortest..=longest).rev() {
                if whole.is_char_boundary(whole.len() - len)
                    && whole.as_bytes()[whole.len() - len..] == value.as_bytes()[..len]
                {
                    let mut out = whole.into_owned();
                    out.truncate(out.len() - len);
                    out.push_str(replacement);
                    return std::borrow::Cow::Owned(out);
                }
            }
        }
        whole
    }

    /// [`Redactor::redact`] for bytes (kv values). Borrowed when nothing
    /// matched.
    pub fn redact_bytes<'t>(&self, bytes: &'t [u8]) -> std::borrow::Cow<'t, [u8]> {
        if !self.is_armed() {
            return std::borrow::Cow::Borrowed(bytes);
        }
        let Ok(masks) = self.inner.lock() else {
            return std::borrow::Cow::Borrowed(bytes);
        };
        let Some(matcher) = &masks.matcher else {
            return std::borrow::Cow::Borrowed(bytes);
        };
        if !matcher.is_match(bytes) {
            return std::borrow::Cow::Borrowed(bytes);
        }
        let replacements: Vec<&[u8]> = masks.values.iter().map(|(_, r)| r.as_bytes()).collect();
        std::borrow::Cow::Owned(matcher.replace_all_bytes(bytes, &replacements))
    }

    /// Mask every string (and object key) inside a JSON value, in place.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        if !self.is_armed() {
            return;
        }
        match value {
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(o) = self.redact(s) {
                    *s = o;
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.redact_json(item);
                }
            }
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    self.redact_json(&mut v);
                    map.insert(self.redact(&k).into_owned(), v);
                }
            }
            _ => {}
        }
    }

    /// Mask `text` in place.
    pub fn redact_in_place(&self, text: &mut String) {
        if let std::borrow::Cow::Owned(o) = self.redact(text) {
            *text = o;
        }
    }
}

/// The standard encodings of `value` that differ from it: base64 and
/// base64url with and without padding, hex in lower and upper case, and
/// percent-encoding of every byte outside RFC 3986's unreserved set.
fn encodings(value: &[u8]) -> Vec<zeroize::Zeroizing<String>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = zeroize::Zeroizing::new(String::with_capacity(value.len() * 2));
    let mut percent = zeroize::Zeroizing::new(String::with_capacity(value.len() * 3));
    for &b in value {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            percent.push(char::from(b));
        } else {
            percent.push('%');
            percent.push(char::from(HEX[usize::from(b >> 4)].to_ascii_uppercase()));
            percent.push(char::from(HEX[usize::from(b & 0xf)].to_ascii_uppercase()));
        }
    }
    let upper = zeroize::Zeroizing::new(hex.to_ascii_uppercase());
    let mut out: Vec<zeroize::Zeroizing<String>> = vec![
        STANDARD.encode(value).into(),
        STANDARD_NO_PAD.encode(value).into(),
        URL_SAFE.encode(value).into(),
        URL_SAFE_NO_PAD.encode(value).into(),
        hex,
        upper,
        percent,
    ];
    out.retain(|form| form.as_bytes() != value);
    out
}

/// What the runtime hands the capabilities once per engine.
#[derive(Debug, Clone)]
pub struct EngineContext {
    /// The node's database (opened on first use).
    pub db: Arc<LazyDatabase>,
    /// The node's budgets and ledger.
    pub meter: Arc<dyn Meter>,
}

/// Who a grant is for: the parts of a grant the runtime decides.
#[derive(Debug, Clone, Copy)]
pub struct GrantScope<'a> {
    /// The capsule's digest (`sha256:…`).
    pub capsule: &'a str,
    /// The run id.
    pub run: &'a str,
    /// Where the capsule was loaded from: a reference
    /// (`ghcr.io/acme/fetch:1.0`), a catalog name or a file path (secrets
    /// are granted to it by glob). Not the `describe()` name, which the
    /// capsule chooses itself.
    pub origin: &'a str,
    /// What the DAG node allows (its `capabilities:`); `None` for a call
    /// that is not a DAG node's, which nothing narrows.
    pub node: Option<&'a Restriction>,
}

impl GrantScope<'_> {
    /// What the node allows capability `name`: [`Allow::Granted`] unless
    /// it says otherwise. Free.
    pub fn allows(&self, name: &str) -> &Allow {
        static GRANTED: Allow = Allow::Granted;
        self.node.and_then(|r| r.0.get(name)).unwrap_or(&GRANTED)
    }
}

/// What a DAG node allows one capability (a value of its `capabilities:`).
/// It only narrows the grant — the capsule's wants ∩ the operator's
/// policy — and never widens it: `true` leaves the grant as it is, `false`
/// takes it away, a list keeps only those arguments (e.g. llm models).
/// Written in a spec as `true`, `false` or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "AllowText", into = "AllowText")]
pub enum Allow {
    /// `true`: what the capsule is granted anyway.
    Granted,
    /// `false`: nothing.
    Denied,
    /// A list: only these arguments of what it is granted anyway.
    Only(Vec<String>),
}

/// [`Allow`] as a spec writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum AllowText {
    Bool(bool),
    List(Vec<String>),
}

impl From<AllowText> for Allow {
    fn from(text: AllowText) -> Self {
        match text {
            AllowText::Bool(true) => Self::Granted,
            AllowText::Bool(false) => Self::Denied,
            AllowText::List(args) => Self::Only(args),
        }
    }
}

impl From<Allow> for AllowText {
    fn from(allow: Allow) -> Self {
        match allow {
            Allow::Granted => Self::Bool(true),
            Allow::Denied => Self::Bool(false),
            Allow::Only(args) => Self::List(args),
        }
    }
}

impl Allow {
    /// Whether it allows the capability at all (`false` does not; an
    /// empty list does not either).
    pub fn any(&self) -> bool {
        match self {
            Self::Granted => true,
            Self::Denied => false,
            Self::Only(args) => !args.is_empty(),
        }
    }

    /// Whether it allows argument `arg` (a model, …).
    pub fn admits(&self, arg: &str) -> bool {
        match self {
            Self::Granted => true,
            Self::Denied => false,
            Self::Only(args) => args.iter().any(|a| a == arg),
        }
    }

    /// What both `self` and `other` allow.
    pub fn and(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::Granted, x) | (x, Self::Granted) => x.clone(),
            (Self::Denied, _) | (_, Self::Denied) => Self::Denied,
            (Self::Only(a), Self::Only(b)) => {
                Self::Only(a.iter().filter(|x| b.contains(x)).cloned().collect())
            }
        }
    }
}

impl std::fmt::Display for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Granted => f.write_str("true"),
            Self::Denied => f.write_str("false"),
            Self::Only(args) => write!(f, "[{}]", args.join(", ")),
        }
    }
}

/// What a DAG node allows, per capability name (its `capabilities:`): a
/// capability it does not name is not narrowed. Empty: no restriction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Restriction(pub BTreeMap<String, Allow>);

impl Restriction {
    /// Whether it narrows nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What both `self` and `outer` allow (a planner's plan nodes are held
    /// to the planner node's restriction too). Cheap.
    pub fn and(&self, outer: &Self) -> Self {
        let mut both = self.0.clone();
        for (name, allow) in &outer.0 {
            let narrowed = both
                .get(name)
                .map_or_else(|| allow.clone(), |own| own.and(allow));
            both.insert(name.clone(), narrowed);
        }
        Self(both)
    }
}

impl std::fmt::Display for Restriction {
    /// `kv: false, llm: [small]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(n, a)| format!("{n}: {a}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// What a DAG node may not say about a capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    /// No capability of this host has that name.
    #[error("unknown capability `{name}`: this host's capabilities are {known}")]
    Unknown {
        /// The name given.
        name: String,
        /// The names this host knows, comma-separated.
        known: String,
    },
    /// The capability is not granted per capsule, so a node cannot narrow it.
    #[error("`{name}` cannot be restricted by a DAG node: {why}")]
    Fixed {
        /// The capability.
        name: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A list entry the capability cannot use (e.g. an http pattern that
    /// does not parse).
    #[error("`{name}`: {why}")]
    BadArgument {
        /// The capability.
        name: &'static str,
        /// What is wrong with the entry.
        why: String,
    },
    /// A list given to a capability without arguments.
    #[error("`{name}` takes `true` or `false`, not a list (it has no arguments)")]
    NoArguments {
        /// The capability.
        name: &'static str,
    },
}

/// What every capability may read when one call's state is built. Borrowed;
/// built once per call by the runtime.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// The capsule's name (for logs; escaped).
    pub capsule: &'a Arc<str>,
    /// The run id (for logs).
    pub run: &'a Arc<str>,
    /// Who pays (for llm's budgets).
    pub spender: &'a Spender,
    /// The caller's tenant (kv keys every entry by it).
    pub tenant: &'a Arc<str>,
    /// The call's memory limit, bytes (bounds host memory a call may pin).
    pub memory_limit_bytes: usize,
    /// When the call's deadline passes. Host code that blocks (http) must
    /// end by it: the epoch deadline cannot interrupt a blocked host call.
    pub deadline: std::time::Instant,
    /// Set when the call's caller went away; host code that blocks should
    /// end soon after.
    pub cancel: Option<&'a Arc<std::sync::atomic::AtomicBool>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redactor_is_free_until_armed_then_masks_every_form_of_text() {
        let r = Redactor::default();
        assert!(!r.is_armed());
        assert!(matches!(
            r.redact("nothing listed"),
            std::borrow::Cow::Borrowed(_)
        ));
        r.add("key", "s3cr3t-value");
        r.add("short", "ab");
        r.add("empty", "");
        assert!(r.is_armed());
        assert_eq!(
            r.redact("a s3cr3t-value b ab"),
            "a [REDACTED:key] b [REDACTED:short]"
        );
        assert!(matches!(r.redact("clean"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            r.redact_bytes(b"x\x00s3cr3t-value").as_ref(),
            b"x\x00[REDACTED:key]"
        );
        // A capture cap cut the value: its first bytes are masked too.
        assert_eq!(r.redact_cut("out: s3cr3"), "out: [REDACTED:key]");
        assert_eq!(r.redact_cut("out: s3c"), "out: s3c", "under 4 bytes");
        let mut doc = serde_json::json!({"s3cr3t-value": ["s3cr3t-value", 1], "n": "ab"});
        r.redact_json(&mut doc);
        assert_eq!(
            doc,
            serde_json::json!({"[REDACTED:key]": ["[REDACTED:key]", 1], "n": "[REDACTED:short]"})
        );
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_value_of_8_bytes_or_more_is_masked_in_its_standard_encodings() {
        let r = Redactor::default();
        // `?` and `>` make base64 and base64url differ; ` ` and `/` need
        // percent-encoding.
        let value = "k?>/ ey-12";
        r.add("token", value);
        r.add("pin", "1234567");
        let forms = [
            "az8+LyBleS0xMg==", // base64
            "az8+LyBleS0xMg",   // base64, no padding
            "az8-LyBleS0xMg==", // base64url
            "az8-LyBleS0xMg",   // base64url, no padding
            "6b3f3e2f2065792d3132",
            "6B3F3E2F2065792D3132",
            "k%3F%3E%2F%20ey-12",
        ];
        for form in forms {
            assert_eq!(
                r.redact(&format!("a {form} b")),
                "a [REDACTED:token] b",
                "{form}"
            );
            assert_eq!(
                r.redact_bytes(format!("x{form}").as_bytes()).as_ref(),
                b"x[REDACTED:token]",
                "{form}"
            );
        }
        assert_eq!(r.redact(&format!("a {value} b")), "a [REDACTED:token] b");
        // A value under 8 bytes: only itself (its hex, 31323334353637,
        // and base64, MTIzNDU2Nw, stay).
        assert_eq!(
            r.redact("1234567 31323334353637 MTIzNDU2Nw"),
            "[REDACTED:pin] 31323334353637 MTIzNDU2Nw"
        );
        assert!(!format!("{r:?}").contains("az8"));
    }
}
