//! The trust policy: which repositories need which keys.
//!
//! ```toml
//! [[trust.rules]]
//! repository = "registry.example.com/acme/**"   # glob over registry/repository
//! keys = ["/etc/soma/keys/acme.pub", "/etc/soma/keys/ci.pub"]
//! require = "all-of"                            # or "any-of" (default)
//!
//! [[trust.rules]]
//! repository = "localhost:*/scratch/*"
//! accept_unsigned = true
//! ```
//!
//! Rules are tried in order; the first whose glob matches decides. `*`
//! matches within one path segment, `**` across segments. A repository no
//! rule matches needs a signature and has no trusted key, so it is refused:
//! the default for remote references is "signature required".

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{PublicKey, VerifyError};

/// `[trust]` in `soma.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Rules, first match wins.
    pub rules: Vec<TrustRule>,
}

/// One rule of the trust policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRule {
    /// Glob over `registry/repository`.
    pub repository: String,
    /// Public keys (`.pub` files) whose signatures are trusted.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Whether every key must have signed (`all-of`) or one suffices (`any-of`).
    #[serde(default)]
    pub require: Require,
    /// Accept artifacts without any signature (explicit opt-out).
    #[serde(default)]
    pub accept_unsigned: bool,
}

/// `any-of` or `all-of`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Require {
    /// One trusted key's signature suffices.
    #[default]
    AnyOf,
    /// Every listed key must have signed.
    AllOf,
}

/// What a repository needs before it may be pulled.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// Nothing: an `accept_unsigned` rule matched.
    AcceptUnsigned,
    /// Signatures by these keys.
    Signed {
        /// Trusted keys.
        keys: Vec<PublicKey>,
        /// All of them, or any.
        all_of: bool,
        /// Which rule (for messages), or `None` for the default.
        rule: Option<String>,
    },
}

/// A loaded policy: globs with their keys read from disk.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    rules: Vec<(String, Requirement)>,
}

impl TrustPolicy {
    /// Load the keys of every rule and check the rules make sense.
    pub fn from_config(config: &TrustConfig) -> Result<Self, VerifyError> {
        let mut rules = Vec::new();
        for rule in &config.rules {
            let requirement = match (rule.accept_unsigned, rule.keys.is_empty()) {
                (true, true) => Requirement::AcceptUnsigned,
                (true, false) => {
                    return Err(VerifyError::BadPolicy(format!(
                        "rule {:?} both lists keys and accepts unsigned artifacts; choose one",
                        rule.repository
                    )));
                }
                (false, true) => {
                    return Err(VerifyError::BadPolicy(format!(
                        "rule {:?} lists no keys; add keys or accept_unsigned = true",
                        rule.repository
                    )));
                }
                (false, false) => Requirement::Signed {
                    keys: rule
                        .keys
                        .iter()
                        .map(|p| PublicKey::load(p))
                        .collect::<Result<_, _>>()?,
                    all_of: rule.require == Require::AllOf,
                    rule: Some(rule.repository.clone()),
                },
            };
            rules.push((rule.repository.clone(), requirement));
        }
        Ok(Self { rules })
    }

    /// A policy trusting exactly `keys` for every repository (`soma verify --key`).
    pub fn keys(keys: Vec<PublicKey>) -> Self {
        Self {
            rules: vec![(
                "**".into(),
                Requirement::Signed {
                    keys,
                    all_of: false,
                    rule: Some("--key".into()),
                },
            )],
        }
    }

    /// A policy accepting everything unsigned (tests and explicit opt-outs only).
    pub fn accept_unsigned() -> Self {
        Self {
            rules: vec![("**".into(), Requirement::AcceptUnsigned)],
        }
    }

    /// What `repository` (`registry/repo`) needs: the first matching rule,
    /// else "signed by a trusted key" with no trusted keys (always refused).
    pub fn requirement(&self, repository: &str) -> Requirement {
        self.rules
            .iter()
            .find(|(glob, _)| glob_match(glob.as_bytes(), repository.as_bytes()))
            .map(|(_, r)| r.clone())
            .unwrap_or(Requirement::Signed {
                keys: Vec::new(),
                all_of: false,
                rule: None,
            })
    }
}

/// `*` matches any run without `/`; `**` matches anything.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    match glob {
        [] => text.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        [b'*', rest @ ..] => {
            let segment = text.iter().position(|&c| c == b'/').unwrap_or(text.len());
            (0..=segment).any(|i| glob_match(rest, &text[i..]))
        }
        [c, rest @ ..] => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"**", b"a/b/c"));
        assert!(glob_match(b"reg:*/acme/*", b"reg:5000/acme/calc"));
        assert!(!glob_match(b"reg:*/acme/*", b"reg:5000/acme/x/calc"));
        assert!(glob_match(b"reg:*/acme/**", b"reg:5000/acme/x/calc"));
        assert!(!glob_match(b"reg/acme/*", b"reg/other/calc"));
        assert!(glob_match(b"exact/name", b"exact/name"));
    }

    #[test]
    fn first_match_wins_and_default_refuses() {
        let p = TrustPolicy {
            rules: vec![
                ("localhost:*/scratch/*".into(), Requirement::AcceptUnsigned),
                (
                    "**".into(),
                    Requirement::Signed {
                        keys: vec![],
                        all_of: false,
                        rule: None,
                    },
                ),
            ],
        };
        assert!(matches!(
            p.requirement("localhost:5000/scratch/x"),
            Requirement::AcceptUnsigned
        ));
        assert!(matches!(
            p.requirement("localhost:5000/prod/x"),
            Requirement::Signed { .. }
        ));
        assert!(matches!(
            TrustPolicy::default().requirement("anything/x"),
            Requirement::Signed { ref keys, .. } if keys.is_empty()
        ));
    }

    #[test]
    fn rules_must_be_coherent() {
        let cfg = |keys: Vec<PathBuf>, accept_unsigned| TrustConfig {
            rules: vec![TrustRule {
                repository: "**".into(),
                keys,
                require: Require::AnyOf,
                accept_unsigned,
            }],
        };
        assert!(matches!(
            TrustPolicy::from_config(&cfg(vec![], false)),
            Err(VerifyError::BadPolicy(_))
        ));
        assert!(matches!(
            TrustPolicy::from_config(&cfg(vec!["x.pub".into()], true)),
            Err(VerifyError::BadPolicy(_))
        ));
        assert!(matches!(
            TrustPolicy::from_config(&cfg(vec!["/nonexistent.pub".into()], false)),
            Err(VerifyError::Io { .. })
        ));
        assert!(TrustPolicy::from_config(&cfg(vec![], true)).is_ok());
    }
}
