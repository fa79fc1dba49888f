//! `notebook`: a tiny kv-backed notebook that exercises every host
//! capability a capsule has: kv (both scopes), log, events, llm, stdout,
//! preopened directories.
//!
//! Input: `{"op": "put" | "get" | "list" | "put-then-fail" | "ask" | "spam" | "read" | "write"
//! | "kv-set" | "kv-get" | "kv-delete" | "kv-list" | "fill", ...}`; the `kv-*` ops and
//! `fill` take a `scope` (`capsule` or `run`).

use serde::Deserialize;
use soma_sdk::{
    Capsule, Error, Info, events, json,
    kv::{self, Scope},
    llm, log,
};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Op {
    /// Store `value` at `key` (capsule scope) and on the run blackboard.
    Put { key: String, value: String },
    /// Read `key` from the capsule scope.
    Get { key: String },
    /// List keys under `prefix`.
    List { prefix: String },
    /// Store, then fail: the write must not persist.
    PutThenFail { key: String, value: String },
    /// Ask an LLM model (exercises grants and `unavailable`).
    Ask { model: String, question: String },
    /// Log and emit `n` lines/events and print to stdout (exercises caps).
    Spam { n: u32 },
    /// Read a file (exercises preopened directories).
    Read { path: String },
    /// Write a file (exercises read-only vs writable grants).
    Write { path: String, text: String },
    /// Set `key` in `scope` (`capsule` or `run`).
    KvSet {
        scope: ScopeName,
        key: String,
        value: String,
    },
    /// Read `key` from `scope`.
    KvGet { scope: ScopeName, key: String },
    /// Delete `key` from `scope`; answers whether it existed.
    KvDelete { scope: ScopeName, key: String },
    /// List up to `limit` keys of `scope` starting with `prefix`.
    KvList {
        scope: ScopeName,
        prefix: String,
        limit: u32,
    },
    /// Write `count` values of `bytes` bytes each under `prefix` in this one
    /// call, stopping at the first refusal (exercises the per-call bound on
    /// pending writes); answers how many were written and the refusal —
    /// as its output, or, with `fail`, as the message of an error (so that
    /// nothing is committed).
    Fill {
        scope: ScopeName,
        prefix: String,
        count: u32,
        bytes: u32,
        #[serde(default)]
        fail: bool,
    },
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum ScopeName {
    Capsule,
    Run,
}

impl From<ScopeName> for Scope {
    fn from(s: ScopeName) -> Self {
        match s {
            ScopeName::Capsule => Scope::Capsule,
            ScopeName::Run => Scope::Run,
        }
    }
}

struct Notebook;

impl Capsule for Notebook {
    fn info() -> Info {
        Info::worker("notebook", env!("CARGO_PKG_VERSION"))
            .description("A kv-backed notebook")
            .wants_kv()
            .wants_llm_model("small")
            .wants_dir("/data")
    }

    fn run(input: &str) -> Result<String, Error> {
        match json::parse::<Op>(input)? {
            Op::Put { key, value } => {
                kv::set(Scope::Capsule, &key, value.as_bytes())?;
                kv::set(Scope::Run, &key, value.as_bytes())?;
                log::log(log::Level::Info, "stored", &[("key", &key)]);
                events::emit(
                    "stored",
                    &serde_json::json!({ "key": key, "bytes": value.len() }),
                );
                json::output(&serde_json::json!({ "stored": key }))
            }
            Op::Get { key } => {
                let value = kv::get(Scope::Capsule, &key)?
                    .map(|v| String::from_utf8_lossy(&v).into_owned());
                json::output(&serde_json::json!({ "key": key, "value": value }))
            }
            Op::List { prefix } => json::output(&kv::list_keys(Scope::Capsule, &prefix, 100)?),
            Op::PutThenFail { key, value } => {
                kv::set(Scope::Capsule, &key, value.as_bytes())?;
                Err(Error::new(
                    "deliberate",
                    format!("wrote {key} and then failed"),
                ))
            }
            Op::Ask { model, question } => {
                match llm::Chat::new(&model).user(&question).max_tokens(64).send() {
                    Ok(c) => json::output(&serde_json::json!({ "answer": c.text })),
                    Err(e) => Err(e.into()),
                }
            }
            Op::Spam { n } => {
                for i in 0..n {
                    log::info(&format!("line {i}"));
                    events::progress(u64::from(i), u64::from(n), "spamming");
                    println!("stdout line {i}");
                }
                json::output(&n)
            }
            Op::Read { path } => std::fs::read_to_string(&path)
                .map_err(|e| Error::new("io", format!("cannot read {path}: {e}"))),
            Op::KvSet { scope, key, value } => {
                kv::set(scope.into(), &key, value.as_bytes())?;
                json::output(&serde_json::json!({ "set": key }))
            }
            Op::KvGet { scope, key } => {
                let value =
                    kv::get(scope.into(), &key)?.map(|v| String::from_utf8_lossy(&v).into_owned());
                json::output(&serde_json::json!({ "key": key, "value": value }))
            }
            Op::KvDelete { scope, key } => {
                json::output(&serde_json::json!({ "existed": kv::delete(scope.into(), &key)? }))
            }
            Op::KvList {
                scope,
                prefix,
                limit,
            } => json::output(&kv::list_keys(scope.into(), &prefix, limit)?),
            Op::Fill {
                scope,
                prefix,
                count,
                bytes,
                fail,
            } => {
                let value = vec![b'x'; bytes as usize];
                let mut written = 0u32;
                let mut refused = None;
                for i in 0..count {
                    match kv::set(scope.into(), &format!("{prefix}{i}"), &value) {
                        Ok(()) => written += 1,
                        Err(e) => {
                            refused = Some(e.to_string());
                            break;
                        }
                    }
                }
                let report = serde_json::json!({ "written": written, "refused": refused });
                if fail {
                    return Err(Error::new("filled", report.to_string()));
                }
                json::output(&report)
            }
            Op::Write { path, text } => std::fs::write(&path, text)
                .map_err(|e| Error::new("io", format!("cannot write {path}: {e}")))
                .and_then(|()| json::output(&serde_json::json!({ "written": path }))),
        }
    }
}

soma_sdk::capsule!(Notebook);
