//! `secrets`: values a capsule may read but never emit (API keys, tokens).
//!
//! Two sources, one namespace:
//!
//! - **Operator secrets**, `[[secrets.define]]` in `soma.toml`: a name, a
//!   source (`env = "VAR"` or `file = "/path"`, a file group or others may
//!   access is refused) and `grant` globs over where a capsule was loaded
//!   from (its reference or path, its repository, its digest). Read when
//!   the config is loaded and held in memory, zeroized on drop.
//! - **Tenant secrets**, set by an admin through the daemon API
//!   ([`Shared::set_tenant_secret`]): stored in the node's database sealed
//!   with AES-256-GCM under the operator's key (`key_file` or `key_env`), a
//!   random nonce per value and `(tenant, name)` as associated data, so a
//!   sealed value moved to another row does not open. Write-only: nothing
//!   returns a value but a call's [`get`](wit::Host::get).
//!
//! A call reads secret `name` only if the capsule asked for it
//! (`capability-request` `secrets` with the names) ∩ the operator's (or
//! the caller's tenant's) grant matches the capsule ∩ the DAG node allows
//! it. Not granted is `denied`, never a trap; unknown is `not-found`. A
//! tenant's call sees only its own tenant's secrets.
//!
//! Every value a call reads is added to the call's
//! [`Redactor`](crate::capability::Redactor): the host masks it as
//! `[REDACTED:name]` in everything the call emits.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use wasmtime::component::{HasSelf, Linker};
use zeroize::Zeroizing;

use crate::{
    bindings::soma::capsule::secrets::{self as wit, SecretError},
    capability::{Allow, AllowError, CallContext, EngineContext, GrantScope, Redactor},
    storage::LazyDatabase,
};

/// Tenant secrets: `(tenant, name)` → (metadata JSON, nonce ‖ ciphertext ‖ tag).
const TENANT_SECRETS: TableDefinition<'_, (&str, &str), (&str, &[u8])> =
    TableDefinition::new("tenant_secrets");

/// Operator settings (`[secrets]` in `soma.toml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Operator secrets (`[[secrets.define]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub define: Vec<Define>,
    /// A file holding the key that seals tenant secrets: 64 hex characters
    /// (`openssl rand -hex 32`), mode 600. Without a key (this or
    /// `key_env`) tenant secrets cannot be set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// An environment variable holding that key instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// Largest secret value, bytes (operator and tenant). Default 16 KiB.
    pub max_value_bytes: usize,
    /// Most secrets one tenant may store. Default 64.
    pub max_per_tenant: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            define: Vec::new(),
            key_file: None,
            key_env: None,
            max_value_bytes: 16 * 1024,
            max_per_tenant: 64,
        }
    }
}

/// One operator secret (`[[secrets.define]]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Define {
    /// The name capsules ask for (`[A-Za-z0-9_.-]`, at most 128 bytes).
    pub name: String,
    /// Read the value from this environment variable …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// … or from this file (mode 600 or stricter; one trailing newline is
    /// dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Globs (`*`, `?`) over where a capsule was loaded from: its
    /// reference or path (`ghcr.io/acme/fetch:1.2`, `./fetch.wasm`), its
    /// repository (`ghcr.io/acme/fetch`) or its digest (`sha256:…`).
    /// Empty: granted to no capsule.
    #[serde(default)]
    pub grant: Vec<String>,
}

/// Why `[secrets]` is inconsistent or a source cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A secret name outside `[A-Za-z0-9_.-]{1,128}`.
    #[error(
        "secrets.define: `{name}` is not a valid secret name (letters, digits, `_`, `.`, `-`; 1 to 128 bytes)"
    )]
    BadName {
        /// The name given.
        name: String,
    },
    /// Two definitions of one name.
    #[error("secrets.define: `{name}` is defined twice")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// A definition without exactly one source.
    #[error("secrets.define `{name}`: give exactly one of `env` and `file`")]
    Source {
        /// The name.
        name: String,
    },
    /// The environment variable is not set (or not UTF-8).
    #[error("secrets.define `{name}`: environment variable `{var}` is not set (or not UTF-8)")]
    EnvMissing {
        /// The secret (or `secrets.key_env`).
        name: String,
        /// The variable.
        var: String,
    },
    /// The file cannot be read.
    #[error("{what}: cannot read `{}`", path.display())]
    FileUnreadable {
        /// Which setting names the file.
        what: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file may be read (or written) by group or others.
    #[error(
        "{what}: `{}` has mode {mode:04o}, so group or others may access it; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    FileTooOpen {
        /// Which setting names the file.
        what: String,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A value over `secrets.max_value_bytes`.
    #[error(
        "secrets.define `{name}`: the value is {size} bytes; secrets.max_value_bytes is {limit}"
    )]
    TooLarge {
        /// The name.
        name: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Both `key_file` and `key_env`.
    #[error("secrets: give at most one of `key_file` and `key_env`")]
    TwoKeys,
    /// The key is not 64 hex characters.
    #[error(
        "{what}: the key must be 64 hex characters (32 bytes; make one with `openssl rand -hex 32`)"
    )]
    BadKey {
        /// Which setting holds it.
        what: String,
    },
    /// A zero limit.
    #[error("secrets.max_value_bytes and secrets.max_per_tenant must be positive")]
    ZeroLimit,
}

/// A secret value: zeroized on drop, never printed (`Debug` shows
/// `[REDACTED]`; there is no `Display`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wrap `value`.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value, for the one place that hands it to a capsule.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// The key that seals tenant secrets; never printed.
struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey([REDACTED])")
    }
}

/// What `[secrets]` loads: the operator's values and the key.
#[derive(Debug)]
struct Loaded {
    values: BTreeMap<String, SecretValue>,
    key: Option<SealKey>,
}

/// Whether `name` is a valid secret name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Read `path`, refusing a file group or others may access.
fn read_private(what: &str, path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    let unreadable = |source| ConfigError::FileUnreadable {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::FileTooOpen {
                what: what.to_owned(),
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let mut text = Zeroizing::new(std::fs::read_to_string(path).map_err(unreadable)?);
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// 64 hex characters → the sealing key.
fn parse_key(what: &str, text: &str) -> Result<SealKey, ConfigError> {
    let bad = || ConfigError::BadKey {
        what: what.to_owned(),
    };
    let text = text.trim();
    if text.len() != 64 {
        return Err(bad());
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
        bytes[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
    }
    let key = UnboundKey::new(&AES_256_GCM, bytes.as_slice()).map_err(|_| bad())?;
    Ok(SealKey(LessSafeKey::new(key)))
}

impl Config {
    /// Check the section and read every source (environment, files, the
    /// key). Once per config load; reads a few small files.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.load().map(drop)
    }

    fn load(&self) -> Result<Loaded, ConfigError> {
        if self.max_value_bytes == 0 || self.max_per_tenant == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        let mut values = BTreeMap::new();
        for d in &self.define {
            if !valid_name(&d.name) {
                return Err(ConfigError::BadName {
                    name: d.name.clone(),
                });
            }
            let value = match (&d.env, &d.file) {
                (Some(var), None) => {
                    Zeroizing::new(std::env::var(var).map_err(|_| ConfigError::EnvMissing {
                        name: d.name.clone(),
                        var: var.clone(),
                    })?)
                }
                (None, Some(path)) => read_private(&format!("secrets.define `{}`", d.name), path)?,
                _ => {
                    return Err(ConfigError::Source {
                        name: d.name.clone(),
                    });
                }
            };
            if value.len() > self.max_value_bytes {
                return Err(ConfigError::TooLarge {
                    name: d.name.clone(),
                    size: value.len(),
                    limit: self.max_value_bytes,
                });
            }
            let value = SecretValue(value);
            if values.insert(d.name.clone(), value).is_some() {
                return Err(ConfigError::Duplicate {
                    name: d.name.clone(),
                });
            }
        }
        let key = match (&self.key_file, &self.key_env) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoKeys),
            (Some(path), None) => Some(parse_key(
                "secrets.key_file",
                &read_private("secrets.key_file", path)?,
            )?),
            (None, Some(var)) => {
                let text =
                    Zeroizing::new(std::env::var(var).map_err(|_| ConfigError::EnvMissing {
                        name: "secrets.key_env".into(),
                        var: var.clone(),
                    })?);
                Some(parse_key("secrets.key_env", &text)?)
            }
            (None, None) => None,
        };
        Ok(Loaded { values, key })
    }
}

/// `pattern` (`*` any run of characters, `?` one) matches all of `text`.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// What a capsule is granted secrets as: where it was loaded from, its
/// repository (the reference without `:tag` or `@digest`) and its digest.
fn subjects(scope: &GrantScope<'_>) -> Vec<String> {
    let origin = scope.origin;
    let mut out = vec![origin.to_owned()];
    let repo = origin.split('@').next().unwrap_or(origin);
    let last_slash = repo.rfind('/').map_or(0, |i| i + 1);
    let repo = match repo[last_slash..].find(':') {
        Some(colon) => &repo[..last_slash + colon],
        None => repo,
    };
    if repo != origin {
        out.push(repo.to_owned());
    }
    out.push(scope.capsule.to_owned());
    out
}

fn granted_to(globs: &[String], subjects: &[String]) -> bool {
    globs
        .iter()
        .any(|g| subjects.iter().any(|s| glob_matches(g, s)))
}

/// One tenant secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSecretInfo {
    /// Its name.
    pub name: String,
    /// The globs of the capsules it is granted to (as in `[[secrets.define]]`).
    pub grant: Vec<String>,
    /// When it was last set, Unix milliseconds.
    pub updated_ms: u64,
}

/// Stored beside the sealed value.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    grant: Vec<String>,
    updated_ms: u64,
}

/// Why a tenant secret could not be set, deleted, listed or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No key configured.
    #[error(
        "tenant secrets are sealed with the operator's key, and none is configured: set \
         secrets.key_file (a file of 64 hex characters, mode 600: `openssl rand -hex 32 > \
         secrets.key && chmod 600 secrets.key`) or secrets.key_env in soma.toml"
    )]
    NoKey,
    /// `[secrets]` could not be loaded.
    #[error("the [secrets] section could not be loaded: {0}")]
    Config(#[source] Arc<ConfigError>),
    /// A bad name.
    #[error("`{name}` is not a valid secret name (letters, digits, `_`, `.`, `-`; 1 to 128 bytes)")]
    BadName {
        /// The name.
        name: String,
    },
    /// The operator defines this name.
    #[error("`{name}` is an operator secret ([[secrets.define]]); choose another name")]
    OperatorDefined {
        /// The name.
        name: String,
    },
    /// A value over `secrets.max_value_bytes`.
    #[error("the value is {size} bytes; secrets.max_value_bytes is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The tenant holds `secrets.max_per_tenant` already.
    #[error("the tenant holds {limit} secrets, secrets.max_per_tenant; delete one first")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// The value does not open with the configured key.
    #[error(
        "tenant secret `{name}` cannot be decrypted: it was sealed with another key than the \
         one secrets.key_file/key_env gives now (or the database row was altered)"
    )]
    WrongKey {
        /// The name.
        name: String,
    },
    /// The database failed.
    #[error("the secrets table: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn store<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Store(Box::new(e))
}

/// `soma-secret:v1 ‖ 0 ‖ tenant ‖ 0 ‖ name`: binds a sealed value to its row.
fn associated_data(tenant: &str, name: &str) -> Vec<u8> {
    format!("soma-secret:v1\0{tenant}\0{name}").into_bytes()
}

/// Built once per engine: the operator's values, the key, the database.
#[derive(Debug)]
pub struct Shared {
    config: Config,
    loaded: Result<Loaded, Arc<ConfigError>>,
    db: Arc<LazyDatabase>,
}

impl Shared {
    /// Load `[secrets]` (environment, files, key) over `db`. Once per
    /// engine; a source that cannot be read makes every read of an
    /// operator secret `unavailable` (the config check reports it first).
    pub fn new(config: &Config, db: Arc<LazyDatabase>) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            loaded: config.load().map_err(Arc::new),
            db,
        })
    }

    fn loaded(&self) -> Result<&Loaded, StoreError> {
        self.loaded
            .as_ref()
            .map_err(|e| StoreError::Config(e.clone()))
    }

    fn key(&self) -> Result<&LessSafeKey, StoreError> {
        self.loaded()?
            .key
            .as_ref()
            .map(|k| &k.0)
            .ok_or(StoreError::NoKey)
    }

    fn defines(&self, name: &str) -> Option<&Define> {
        self.config.define.iter().find(|d| d.name == name)
    }

    /// Seal `value` as tenant `tenant`'s secret `name`, granted to the
    /// capsules `grant` matches (replacing any earlier value). Blocking:
    /// one write transaction.
    pub fn set_tenant_secret(
        &self,
        tenant: &str,
        name: &str,
        value: &SecretValue,
        grant: Vec<String>,
        now_ms: u64,
    ) -> Result<TenantSecretInfo, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName {
                name: name.to_owned(),
            });
        }
        if self.defines(name).is_some() {
            return Err(StoreError::OperatorDefined {
                name: name.to_owned(),
            });
        }
        let size = value.expose().len();
        if size > self.config.max_value_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.config.max_value_bytes,
            });
        }
        let key = self.key()?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(store)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + size + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        let mut body = value.expose().as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(tenant, name)),
            &mut body,
        )
        .map_err(store)?;
        sealed.extend_from_slice(&body);
        let meta = Meta {
            grant,
            updated_ms: now_ms,
        };
        let meta_json = serde_json::to_string(&meta).map_err(store)?;
        let db = self.db.get().map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        {
            let mut table = txn.open_table(TENANT_SECRETS).map_err(store)?;
            let exists = table.get((tenant, name)).map_err(store)?.is_some();
            if !exists {
                let held = table
                    .range((tenant, "")..)
                    .map_err(store)?
                    .take_while(|r| r.as_ref().is_ok_and(|(k, _)| k.value().0 == tenant))
                    .count();
                if held >= self.config.max_per_tenant {
                    return Err(StoreError::TooMany {
                        limit: self.config.max_per_tenant,
                    });
                }
            }
            table
                .insert((tenant, name), (meta_json.as_str(), sealed.as_slice()))
                .map_err(store)?;
        }
        txn.commit().map_err(store)?;
        Ok(TenantSecretInfo {
            name: name.to_owned(),
            grant: meta.grant,
            updated_ms: meta.updated_ms,
        })
    }

    /// Delete tenant `tenant`'s secret `name`; whether it existed.
    /// Blocking: one write transaction.
    pub fn delete_tenant_secret(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let db = self.db.get().map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        let existed = {
            let mut table = txn.open_table(TENANT_SECRETS).map_err(store)?;
            table.remove((tenant, name)).map_err(store)?.is_some()
        };
        txn.commit().map_err(store)?;
        Ok(existed)
    }

    /// Tenant `tenant`'s secrets: names, grants, update times — never
    /// values. Blocking: one read transaction.
    pub fn list_tenant_secrets(&self, tenant: &str) -> Result<Vec<TenantSecretInfo>, StoreError> {
        let db = self.db.get().map_err(store)?;
        let txn = db.begin_read().map_err(store)?;
        let table = match txn.open_table(TENANT_SECRETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store(e)),
        };
        let mut out = Vec::new();
        for row in table.range((tenant, "")..).map_err(store)? {
            let (k, v) = row.map_err(store)?;
            let (t, name) = k.value();
            if t != tenant {
                break;
            }
            let meta: Meta = serde_json::from_str(v.value().0).map_err(store)?;
            out.push(TenantSecretInfo {
                name: name.to_owned(),
                grant: meta.grant,
                updated_ms: meta.updated_ms,
            });
        }
        Ok(out)
    }

    /// Tenant `tenant`'s secret `name` with its grant globs, opened;
    /// `None` if it has none of that name. Blocking: one read.
    fn open_tenant_secret(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<(SecretValue, Vec<String>)>, StoreError> {
        let db = self.db.get().map_err(store)?;
        let txn = db.begin_read().map_err(store)?;
        let table = match txn.open_table(TENANT_SECRETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(store(e)),
        };
        let Some(row) = table.get((tenant, name)).map_err(store)? else {
            return Ok(None);
        };
        let (meta, sealed) = row.value();
        let meta: Meta = serde_json::from_str(meta).map_err(store)?;
        let key = self.key()?;
        let wrong = || StoreError::WrongKey {
            name: name.to_owned(),
        };
        if sealed.len() < NONCE_LEN {
            return Err(wrong());
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| wrong())?;
        let mut body = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
        let plain = key
            .open_in_place(nonce, Aad::from(associated_data(tenant, name)), &mut body)
            .map_err(|_| wrong())?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| wrong())?;
        Ok(Some((SecretValue::new(text), meta.grant)))
    }
}

/// What a capsule may read: decided once per run.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Operator secrets granted (asked for ∩ granted ∩ node).
    operator: Vec<String>,
    /// Names asked for (and allowed by the node) the operator does not
    /// define: the caller's tenant may, checked when read.
    tenant: Vec<String>,
    /// Names asked for but refused, with why.
    refused: Vec<(String, String)>,
    /// What the capsule is granted as (see [`subjects`]).
    subjects: Vec<String>,
}

impl Grant {
    /// The names a call may try to read (operator secrets granted, and
    /// names the caller's tenant may define).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.operator.iter().chain(&self.tenant).map(String::as_str)
    }
}

/// Per-call state.
#[derive(Debug)]
pub struct State {
    shared: Arc<Shared>,
    grant: Grant,
    tenant: Arc<str>,
    redactor: Arc<Redactor>,
}

impl State {
    /// Fresh state for one call of `tenant`. Cheap: `Arc` clones and one
    /// grant clone.
    pub fn new(shared: Arc<Shared>, grant: Grant, tenant: Arc<str>) -> Self {
        Self {
            shared,
            grant,
            tenant,
            redactor: Arc::default(),
        }
    }

    fn read(&self, name: &str) -> Result<SecretValue, SecretError> {
        let unavailable = |e: StoreError| SecretError::Unavailable(e.to_string());
        if self.grant.operator.iter().any(|n| n == name) {
            let loaded = self.shared.loaded().map_err(unavailable)?;
            return loaded
                .values
                .get(name)
                .cloned()
                .ok_or_else(|| SecretError::Unavailable(format!("secret `{name}` is not loaded")));
        }
        if let Some((_, why)) = self.grant.refused.iter().find(|(n, _)| n == name) {
            return Err(SecretError::Denied(why.clone()));
        }
        if !self.grant.tenant.iter().any(|n| n == name) {
            return Err(SecretError::Denied(format!(
                "this capsule did not ask for secret `{name}`: name the secrets it reads in \
                 describe() (a `secrets` capability request; wants_secret(\"{name}\") in the SDK)"
            )));
        }
        let Some((value, globs)) = self
            .shared
            .open_tenant_secret(&self.tenant, name)
            .map_err(unavailable)?
        else {
            return Err(SecretError::NotFound(format!(
                "no secret `{name}`: neither the operator nor this tenant defines it"
            )));
        };
        if !granted_to(&globs, &self.grant.subjects) {
            return Err(SecretError::Denied(format!(
                "this tenant's secret `{name}` is not granted to this capsule (`{}`): its grant \
                 globs do not match",
                self.grant.subjects.first().map_or("", String::as_str)
            )));
        }
        Ok(value)
    }
}

/// Store data that hands out the per-call secrets state.
pub trait SecretsView {
    /// The call's secrets state.
    fn secrets_state(&mut self) -> &mut State;
}

/// The secrets capability.
#[derive(Debug, Clone, Copy)]
pub struct Secrets;

impl crate::capability::Capability for Secrets {
    const NAME: &'static str = "secrets";
    const INTERFACES: &'static [&'static str] = &["secrets"];
    type Config = Config;
    type ConfigError = ConfigError;
    /// The operator's definitions and their grants.
    type Policy = Shared;
    type Shared = Arc<Shared>;
    type Wants = Vec<String>;
    type Grant = Grant;
    type State = State;
    type PrepareError = std::convert::Infallible;
    type CommitError = std::convert::Infallible;
    type Report = ();

    fn check(config: &Config) -> Result<(), ConfigError> {
        config.check()
    }

    /// Reads the environment variables and files `[secrets]` names.
    fn shared(config: &Config, engine: &EngineContext) -> Arc<Shared> {
        Shared::new(config, engine.db.clone())
    }

    fn want(wants: &mut Vec<String>, args: &[String]) {
        for name in args {
            if !wants.contains(name) {
                wants.push(name.clone());
            }
        }
    }

    fn describe_wants(wants: &Vec<String>, out: &mut Vec<String>) {
        out.extend(wants.iter().map(|n| format!("{}:{n}", Self::NAME)));
    }

    /// The names asked for, each kept if the DAG node allows it and (for
    /// an operator secret) one of its `grant` globs matches the capsule.
    fn grant(wants: &Vec<String>, shared: &Shared, scope: &GrantScope<'_>) -> Grant {
        let node = scope.allows(Self::NAME);
        let subjects = subjects(scope);
        let mut grant = Grant::default();
        for name in wants {
            if !node.admits(name) {
                grant.refused.push((
                    name.clone(),
                    format!(
                        "the DAG node's `capabilities: {{secrets: …}}` does not allow secret `{name}`"
                    ),
                ));
            } else if let Some(d) = shared.defines(name) {
                if granted_to(&d.grant, &subjects) {
                    grant.operator.push(name.clone());
                } else {
                    grant.refused.push((
                        name.clone(),
                        format!(
                            "secret `{name}` is not granted to this capsule (`{}`): the operator \
                             grants it with `grant` globs in its [[secrets.define]]",
                            scope.origin
                        ),
                    ));
                }
            } else {
                grant.tenant.push(name.clone());
            }
        }
        grant.subjects = subjects;
        grant
    }

    /// A list names the secrets the node allows.
    fn check_allow(_allow: &Allow) -> Result<(), AllowError> {
        Ok(())
    }

    /// `Arc` clones and one grant clone (a few short strings).
    fn prepare(
        shared: &Arc<Shared>,
        grant: &Grant,
        call: &CallContext<'_>,
    ) -> Result<State, std::convert::Infallible> {
        Ok(State::new(
            shared.clone(),
            grant.clone(),
            call.tenant.clone(),
        ))
    }

    fn finish(_state: State) {}

    /// Keeps the redactor: every value read is added to it.
    fn attach(state: &mut State, redactor: &Arc<Redactor>) {
        state.redactor = redactor.clone();
    }
}

/// Wire `soma:capsule/secrets` into `linker`. Once per engine.
pub fn add_to_linker<T: SecretsView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<State>>(linker, |t| t.secrets_state())
}

impl wit::Host for State {
    /// An operator secret: a map lookup. A tenant secret: one database read
    /// and one AES-GCM open. Either way the value is added to the call's
    /// redactor before the guest sees it.
    fn get(&mut self, name: String) -> Result<String, SecretError> {
        let value = self.read(&name)?;
        self.redactor.add(&name, value.expose());
        tracing::debug!(
            target: "soma::secrets",
            secret = %crate::log::escape(&name),
            tenant = %crate::log::escape(&self.tenant),
            "secret read"
        );
        Ok(value.expose().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Capability as _, Restriction};
    use wit::Host as _;

    fn write_private(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        path
    }

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn scope<'a>(origin: &'a str, node: Option<&'a Restriction>) -> GrantScope<'a> {
        GrantScope {
            capsule: "sha256:abc",
            run: "r1",
            origin,
            node,
        }
    }

    fn state(shared: &Arc<Shared>, wants: &[&str], s: &GrantScope<'_>, tenant: &str) -> State {
        let wants: Vec<String> = wants.iter().map(|w| (*w).to_owned()).collect();
        let grant = Secrets::grant(&wants, shared, s);
        State::new(shared.clone(), grant, tenant.into())
    }

    #[test]
    fn globs_match_whole_text() {
        assert!(glob_matches("ghcr.io/acme/*", "ghcr.io/acme/fetch"));
        assert!(glob_matches("*fetch*", "./capsules/fetch.wasm"));
        assert!(glob_matches("sha256:ab?", "sha256:abc"));
        assert!(!glob_matches("ghcr.io/acme/*", "ghcr.io/acmex/fetch"));
        assert!(!glob_matches("fetch", "fetcher"));
        assert!(glob_matches("*", ""));
        let s = subjects(&scope("ghcr.io/acme/fetch:1.2@sha256:ff", None));
        assert_eq!(
            s,
            [
                "ghcr.io/acme/fetch:1.2@sha256:ff",
                "ghcr.io/acme/fetch",
                "sha256:abc"
            ]
        );
        let s = subjects(&scope("localhost:5000/fetch", None));
        assert_eq!(s, ["localhost:5000/fetch", "sha256:abc"]);
    }

    #[test]
    fn env_and_file_sources_are_granted_by_glob_and_refused_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A variable every test process has (the e2e tests set their own
        // on the `soma` they start).
        let var = "PATH";
        let env_value = std::env::var(var).expect("PATH is set");
        let file = write_private(dir.path(), "token", "file-value-2\n", 0o600);
        let config = Config {
            define: vec![
                Define {
                    name: "from-env".into(),
                    env: Some(var.into()),
                    file: None,
                    grant: vec!["*probe*".into()],
                },
                Define {
                    name: "from-file".into(),
                    env: None,
                    file: Some(file),
                    grant: vec!["ghcr.io/acme/*".into()],
                },
            ],
            ..Config::default()
        };
        config.check().expect("valid");
        let db = Arc::new(LazyDatabase::new(dir.path().join("soma.redb")));
        let shared = Shared::new(&config, db);
        let probe = scope("./secret-probe.wasm", None);
        let mut st = state(&shared, &["from-env", "from-file"], &probe, "t");
        assert_eq!(st.get("from-env".into()).expect("granted"), env_value);
        let e = st.get("from-file".into()).expect_err("not granted to it");
        assert!(
            matches!(&e, SecretError::Denied(m) if m.contains("not granted to this capsule")),
            "{e:?}"
        );
        let e = st.get("other".into()).expect_err("not asked for");
        assert!(
            matches!(&e, SecretError::Denied(m) if m.contains("did not ask")),
            "{e:?}"
        );
        let acme = scope("ghcr.io/acme/fetch:1.0", None);
        let mut st = state(&shared, &["from-file"], &acme, "t");
        assert_eq!(
            st.get("from-file".into()).expect("granted"),
            "file-value-2",
            "one trailing newline dropped"
        );
        assert!(
            st.redactor.is_armed(),
            "a value read is masked from then on"
        );
        assert_eq!(
            st.redactor.redact("x file-value-2 y"),
            "x [REDACTED:from-file] y"
        );
        // Asked for and granted by the operator, but not by the node.
        let node: Restriction = serde_json::from_str(r#"{"secrets": ["other"]}"#).expect("json");
        let mut st = state(&shared, &["from-env"], &scope("./probe", Some(&node)), "t");
        let e = st.get("from-env".into()).expect_err("node narrows");
        assert!(
            matches!(&e, SecretError::Denied(m) if m.contains("DAG node")),
            "{e:?}"
        );
        assert!(format!("{shared:?}").contains("[REDACTED]"));
        assert!(!format!("{shared:?}").contains(&env_value));
    }

    #[cfg(unix)]
    #[test]
    fn files_others_may_read_are_refused_naming_the_mode_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_private(dir.path(), "open", "v", 0o644);
        let config = Config {
            define: vec![Define {
                name: "open".into(),
                env: None,
                file: Some(file.clone()),
                grant: vec!["*".into()],
            }],
            ..Config::default()
        };
        let e = config.check().expect_err("world-readable");
        let m = e.to_string();
        assert!(m.contains("mode 0644") && m.contains("chmod 600"), "{m}");
        let key = write_private(dir.path(), "key", KEY, 0o640);
        let config = Config {
            key_file: Some(key),
            ..Config::default()
        };
        let m = config.check().expect_err("group-readable key").to_string();
        assert!(m.contains("secrets.key_file") && m.contains("0640"), "{m}");
        let config = Config {
            define: vec![Define {
                name: "missing".into(),
                env: Some("SOMA_TEST_SECRET_NOT_SET_ANYWHERE".into()),
                file: None,
                grant: vec![],
            }],
            ..Config::default()
        };
        let m = config.check().expect_err("unset").to_string();
        assert!(m.contains("SOMA_TEST_SECRET_NOT_SET_ANYWHERE"), "{m}");
    }

    #[test]
    fn tenant_secrets_are_sealed_per_tenant_and_open_only_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write_private(dir.path(), "key", &format!("{KEY}\n"), 0o600);
        let path = dir.path().join("soma.redb");
        let config = Config {
            key_file: Some(key.clone()),
            max_per_tenant: 2,
            ..Config::default()
        };
        let db = Arc::new(LazyDatabase::new(path.clone()));
        let shared = Shared::new(&config, db);
        let value = SecretValue::new("tenant-value-needle-93".into());
        let info = shared
            .set_tenant_secret("acme", "api-key", &value, vec!["*probe*".into()], 7)
            .expect("set");
        assert_eq!(info.updated_ms, 7);
        assert_eq!(
            shared.list_tenant_secrets("acme").expect("list"),
            [TenantSecretInfo {
                name: "api-key".into(),
                grant: vec!["*probe*".into()],
                updated_ms: 7,
            }]
        );
        assert!(
            shared
                .list_tenant_secrets("globex")
                .expect("list")
                .is_empty()
        );
        let probe = scope("./secret-probe.wasm", None);
        let mut own = state(&shared, &["api-key"], &probe, "acme");
        assert_eq!(
            own.get("api-key".into()).expect("own"),
            "tenant-value-needle-93"
        );
        let mut other = state(&shared, &["api-key"], &probe, "globex");
        assert!(matches!(
            other.get("api-key".into()),
            Err(SecretError::NotFound(_))
        ));
        let mut elsewhere = state(&shared, &["api-key"], &scope("./other.wasm", None), "acme");
        assert!(matches!(
            elsewhere.get("api-key".into()),
            Err(SecretError::Denied(_))
        ));
        // Bounded per tenant; replacing one is not a new one.
        shared
            .set_tenant_secret("acme", "api-key", &value, vec!["*probe*".into()], 8)
            .expect("replace");
        shared
            .set_tenant_secret("acme", "second", &value, vec![], 8)
            .expect("second");
        assert!(matches!(
            shared.set_tenant_secret("acme", "third", &value, vec![], 8),
            Err(StoreError::TooMany { limit: 2 })
        ));
        let big = SecretValue::new("x".repeat(config.max_value_bytes + 1));
        assert!(matches!(
            shared.set_tenant_secret("acme", "big", &big, vec![], 8),
            Err(StoreError::TooLarge { .. })
        ));
        drop((own, other, elsewhere, shared));
        // At rest the value is not in the file.
        let bytes = std::fs::read(&path).expect("db file");
        let needle = b"tenant-value-needle-93";
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        // Another key cannot open it, and says so.
        std::fs::write(&key, OTHER_KEY).expect("rekey");
        let shared = Shared::new(&config, Arc::new(LazyDatabase::new(path)));
        let mut st = state(&shared, &["api-key"], &probe, "acme");
        let e = st.get("api-key".into()).expect_err("wrong key");
        assert!(
            matches!(&e, SecretError::Unavailable(m) if m.contains("another key")),
            "{e:?}"
        );
        assert!(
            shared
                .delete_tenant_secret("acme", "api-key")
                .expect("delete")
        );
        assert!(
            !shared
                .delete_tenant_secret("acme", "api-key")
                .expect("gone")
        );
    }

    #[test]
    fn without_a_key_tenant_secrets_are_refused_saying_what_to_configure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Shared::new(
            &Config::default(),
            Arc::new(LazyDatabase::new(dir.path().join("soma.redb"))),
        );
        let e = shared
            .set_tenant_secret("acme", "k", &SecretValue::new("v".into()), vec![], 1)
            .expect_err("no key");
        assert!(e.to_string().contains("secrets.key_file"), "{e}");
        let define = Config {
            define: vec![Define {
                name: "op".into(),
                env: Some("PATH".into()),
                file: None,
                grant: vec![],
            }],
            key_file: Some(write_private(dir.path(), "key", KEY, 0o600)),
            ..Config::default()
        };
        let shared = Shared::new(
            &define,
            Arc::new(LazyDatabase::new(dir.path().join("soma.redb"))),
        );
        assert!(matches!(
            shared.set_tenant_secret("acme", "op", &SecretValue::new("v".into()), vec![], 1),
            Err(StoreError::OperatorDefined { .. })
        ));
        assert_eq!(
            format!("{:?}", SecretValue::new("hunter2".into())),
            "[REDACTED]"
        );
    }
}
