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
//!
//! Globs and the repository being checked are both brought to their
//! canonical form first ([`super::name`]): `LOCALHOST:5000`, `127.0.0.1:5000`
//! and `[::1]:5000` are all `localhost:5000`, `reg.example:443` is
//! `reg.example`, so respelling a registry cannot reach a weaker rule.
//!
//! `signed_identity` (per rule, or `[trust] signed_identity` for every rule)
//! decides whether the repository a signature names (its payload's
//! `critical.identity.docker-reference`) must be the one being pulled:
//! `any` (cosign's behaviour, the default) or `match-repository` (a digest
//! signed for repository A is refused under repository B).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    PublicKey, VerifyError,
    name::{canonical_globs, canonical_repository, glob_matches},
};

/// `[trust]` in `soma.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Whether a signature must name the repository being pulled, for rules
    /// that do not say (`signed_identity` on the rule wins). Default `any`
    /// (cosign-compatible: the signed `docker-reference` is not compared).
    pub signed_identity: SignedIdentity,
    /// Rules, first match wins.
    pub rules: Vec<TrustRule>,
}

/// What a signature's `critical.identity.docker-reference` must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignedIdentity {
    /// Anything: a signature vouches for a digest wherever it is pulled from
    /// (what `cosign verify --key` does).
    #[default]
    Any,
    /// The canonical repository the signature names must be the canonical
    /// repository being pulled, so a digest signed for `acme/a` is refused
    /// under `acme/b` even when both trust the same key.
    MatchRepository,
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
    /// Whether the signature must name the repository being pulled; unset
    /// means `[trust] signed_identity` (default `any`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_identity: Option<SignedIdentity>,
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
        /// The canonical repository a signature must name, when the rule
        /// asks for `match-repository`.
        identity: Option<String>,
    },
}

/// A loaded policy: canonical globs with their keys read from disk.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// The canonical globs (one, or two for a port wildcard).
    globs: Vec<String>,
    requirement: Requirement,
    signed_identity: SignedIdentity,
}

impl TrustConfig {
    /// Check every rule's glob has a canonical form and its keys/unsigned
    /// choice is coherent, without reading key files (`soma config check`).
    /// The message names the rule.
    pub fn check(&self) -> Result<(), String> {
        for rule in &self.rules {
            canonical_globs(&rule.repository)
                .map_err(|why| format!("trust.rules repository {:?}: {why}", rule.repository))?;
            if rule.accept_unsigned != rule.keys.is_empty() {
                return Err(format!(
                    "trust.rules repository {:?}: give either keys or accept_unsigned = true",
                    rule.repository
                ));
            }
        }
        Ok(())
    }
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
                    identity: None,
                },
            };
            let globs = canonical_globs(&rule.repository).map_err(|why| {
                VerifyError::BadPolicy(format!("rule repository {:?}: {why}", rule.repository))
            })?;
            rules.push(Rule {
                globs,
                requirement,
                signed_identity: rule.signed_identity.unwrap_or(config.signed_identity),
            });
        }
        Ok(Self { rules })
    }

    /// The same policy with every rule requiring `identity` (tests and
    /// `--key` pulls that opt into `match-repository`).
    pub fn with_signed_identity(mut self, identity: SignedIdentity) -> Self {
        for rule in &mut self.rules {
            rule.signed_identity = identity;
        }
        self
    }

    /// A policy trusting exactly `keys` for every repository (`soma verify --key`).
    pub fn keys(keys: Vec<PublicKey>) -> Self {
        Self {
            rules: vec![Rule {
                globs: vec!["**".into()],
                requirement: Requirement::Signed {
                    keys,
                    all_of: false,
                    rule: Some("--key".into()),
                    identity: None,
                },
                signed_identity: SignedIdentity::Any,
            }],
        }
    }

    /// A policy requiring a signature by every one of `keys` for every
    /// repository (`require = "all-of"`): what the marketplace's install and
    /// `market:` resolution use (author + marketplace key). `rule` names the
    /// rule in refusals. Cost: nothing (no I/O).
    pub fn all_of(keys: Vec<PublicKey>, rule: &str) -> Self {
        Self {
            rules: vec![Rule {
                globs: vec!["**".into()],
                requirement: Requirement::Signed {
                    keys,
                    all_of: true,
                    rule: Some(rule.to_owned()),
                    identity: None,
                },
                signed_identity: SignedIdentity::Any,
            }],
        }
    }

    /// A policy accepting everything unsigned (tests and explicit opt-outs only).
    pub fn accept_unsigned() -> Self {
        Self {
            rules: vec![Rule {
                globs: vec!["**".into()],
                requirement: Requirement::AcceptUnsigned,
                signed_identity: SignedIdentity::Any,
            }],
        }
    }

    /// What `repository` (`registry/repo`, any spelling) needs: the first
    /// rule matching its canonical name, else "signed by a trusted key" with
    /// no trusted keys (always refused). A name that has no canonical form
    /// gets the refusing default. Cost: one canonicalization and a glob match
    /// per rule tried; no I/O.
    pub fn requirement(&self, repository: &str) -> Requirement {
        let refuse = Requirement::Signed {
            keys: Vec::new(),
            all_of: false,
            rule: None,
            identity: None,
        };
        let Ok(canonical) = canonical_repository(repository) else {
            return refuse;
        };
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.globs.iter().any(|g| glob_matches(g, &canonical)))
        else {
            return refuse;
        };
        match (&rule.requirement, rule.signed_identity) {
            (
                Requirement::Signed {
                    keys, all_of, rule, ..
                },
                SignedIdentity::MatchRepository,
            ) => Requirement::Signed {
                keys: keys.clone(),
                all_of: *all_of,
                rule: rule.clone(),
                identity: Some(canonical),
            },
            (requirement, _) => requirement.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(glob: &str, requirement: Requirement) -> Rule {
        Rule {
            globs: canonical_globs(glob).expect("glob"),
            requirement,
            signed_identity: SignedIdentity::Any,
        }
    }

    fn signed(rule_name: &str) -> Requirement {
        Requirement::Signed {
            keys: vec![],
            all_of: false,
            rule: Some(rule_name.into()),
            identity: None,
        }
    }

    #[test]
    fn first_match_wins_and_default_refuses() {
        let p = TrustPolicy {
            rules: vec![
                rule("localhost:*/scratch/*", Requirement::AcceptUnsigned),
                rule("**", signed("**")),
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
                signed_identity: None,
            }],
            ..TrustConfig::default()
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

    /// The attack of issue 12: a strict rule for `localhost:*` and a weak
    /// fallback. Every spelling of the loopback registry gets the strict rule.
    #[test]
    fn respelling_a_registry_does_not_reach_a_weaker_rule() {
        let p = TrustPolicy {
            rules: vec![
                rule("localhost:*/**", signed("localhost:*/**")),
                rule("reg.example/acme/**", signed("reg.example/acme/**")),
                rule("**", Requirement::AcceptUnsigned),
            ],
        };
        let strict = |r: &Requirement| matches!(r, Requirement::Signed { rule: Some(_), .. });
        for spelling in [
            "localhost:5000/acme/x",
            "LOCALHOST:5000/acme/x",
            "Localhost.:5000/acme/x",
            "127.0.0.1:5000/acme/x",
            "127.1:5000/acme/x",
            "2130706433:5000/acme/x",
            "0x7f.0.0.1:5000/acme/x",
            "0.0.0.0:5000/acme/x",
            "[::1]:5000/acme/x",
            "[::ffff:127.0.0.1]:5000/acme/x",
            "localhost/acme/x",
            "localhost:80/acme/x",
            "REG.EXAMPLE/acme/x",
            "reg.example:443/acme/x",
            "reg.example./acme/x",
        ] {
            assert!(
                strict(&p.requirement(spelling)),
                "{spelling} reached the fallback"
            );
        }
        // Other hosts, ports and repositories still reach the fallback.
        for other in [
            "reg.example:8443/acme/x",
            "reg.example/globex/x",
            "ghcr.io/acme/x",
        ] {
            assert!(
                matches!(p.requirement(other), Requirement::AcceptUnsigned),
                "{other}"
            );
        }
        // Unparseable names get the refusing default, never the fallback.
        assert!(matches!(
            p.requirement("no-registry"),
            Requirement::Signed { rule: None, .. }
        ));
    }

    #[test]
    fn match_repository_carries_the_canonical_name() {
        let cfg = TrustConfig {
            signed_identity: SignedIdentity::MatchRepository,
            rules: vec![TrustRule {
                repository: "localhost:*/**".into(),
                keys: vec![],
                require: Require::AnyOf,
                accept_unsigned: true,
                signed_identity: None,
            }],
        };
        // Unsigned rules carry no identity check.
        let p = TrustPolicy::from_config(&cfg).expect("policy");
        assert!(matches!(
            p.requirement("127.0.0.1:5000/a"),
            Requirement::AcceptUnsigned
        ));
        let p = TrustPolicy {
            rules: vec![rule("**", signed("**"))],
        }
        .with_signed_identity(SignedIdentity::MatchRepository);
        assert!(matches!(
            p.requirement("LOCALHOST:5000/a/b:1"),
            Requirement::Signed { identity: Some(ref i), .. } if i == "localhost:5000/a/b"
        ));
        assert!(matches!(
            TrustPolicy {
                rules: vec![rule("**", signed("**"))],
            }
            .requirement("localhost:5000/a"),
            Requirement::Signed { identity: None, .. }
        ));
    }

    #[test]
    fn config_check_names_the_bad_rule() {
        let rule = |repository: &str, keys: Vec<PathBuf>, accept_unsigned| TrustConfig {
            rules: vec![TrustRule {
                repository: repository.into(),
                keys,
                require: Require::AnyOf,
                accept_unsigned,
                signed_identity: None,
            }],
            ..TrustConfig::default()
        };
        assert!(rule("LOCALHOST:*/**", vec![], true).check().is_ok());
        assert!(rule("reg/**", vec!["k.pub".into()], false).check().is_ok());
        for (bad, why) in [
            (rule("reg:abc/**", vec![], true), "not a port number"),
            (rule("reg", vec![], true), "names no repository"),
            (
                rule("reg/**", vec![], false),
                "either keys or accept_unsigned",
            ),
            (
                rule("reg/**", vec!["k.pub".into()], true),
                "either keys or accept_unsigned",
            ),
        ] {
            let err = bad.check().expect_err(why);
            assert!(
                err.contains(why) && err.contains("trust.rules repository"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_globs_are_refused_at_load() {
        let cfg = TrustConfig {
            rules: vec![TrustRule {
                repository: "reg:abc/**".into(),
                keys: vec![],
                require: Require::AnyOf,
                accept_unsigned: true,
                signed_identity: None,
            }],
            ..TrustConfig::default()
        };
        assert!(matches!(
            TrustPolicy::from_config(&cfg),
            Err(VerifyError::BadPolicy(m)) if m.contains("reg:abc")
        ));
    }
}
