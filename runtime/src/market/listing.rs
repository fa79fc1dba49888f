//! `listing.toml`: what an author writes beside a capsule to list it.
//!
//! ```toml
//! name = "acme/summarize"            # author/name: lowercase, digits, '-'
//! version = "1.2.0"                  # semver; immutable once submitted
//! summary = "Summarize a document in three sentences."
//! readme = "README.md"               # a path (relative to this file), or:
//! # readme = { markdown = "# summarize\n…" }
//! keywords = ["summary", "llm"]
//! categories = ["text"]
//! license = "Apache-2.0"             # SPDX expression; required
//! source = "https://github.com/acme/summarize"
//!
//! [[examples]]                       # inputs the review runs
//! input = { text = "Soma runs capsules." }
//!
//! [price]                            # amounts in ledger micro-units
//! model = "per-call"                 # free | per-call | per-1k-tokens | per-event
//! micros = 2000
//! # model = "per-event"
//! # events = { summarized = 500 }    # only these event names are billable
//! ```
//!
//! [`Listing::load`] parses and validates; each refusal is a
//! [`ListingError`] naming the field and what to change. Money is in the
//! ledger's unit: integer micro-units ([`crate::ledger`]).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Most keywords a listing may have.
pub const MAX_KEYWORDS: usize = 20;
/// Most categories a listing may have.
pub const MAX_CATEGORIES: usize = 5;
/// Longest summary, in characters.
pub const MAX_SUMMARY_CHARS: usize = 280;
/// Largest README, in bytes.
pub const MAX_README_BYTES: usize = 256 * 1024;
/// Most example inputs.
pub const MAX_EXAMPLES: usize = 32;
/// Most billable event names in a per-event price table.
pub const MAX_EVENTS: usize = 32;

/// Why a listing file was refused. Every variant names the field (or the
/// file) and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// The file could not be read.
    #[error("cannot read the listing {path}")]
    Read {
        /// The listing file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse, or a field has the wrong type, is missing
    /// or unknown.
    #[error("{path}: {field}: {message}")]
    Syntax {
        /// The listing file.
        path: PathBuf,
        /// The field the parser stopped at (`(file)` if unknown).
        field: String,
        /// The parser's message (it names a missing or unknown field).
        message: String,
    },
    /// A field has a value the marketplace refuses.
    #[error("{path}: {field}: {problem}; {fix}")]
    Invalid {
        /// The listing file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
        /// What to write instead.
        fix: &'static str,
    },
    /// The README file could not be read.
    #[error("{path}: readme: cannot read {readme}")]
    Readme {
        /// The listing file.
        path: PathBuf,
        /// The README path.
        readme: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The README: a file beside the listing, or inline Markdown.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Readme {
    /// A path relative to the listing file.
    Path(PathBuf),
    /// Inline Markdown.
    Inline {
        /// The Markdown text.
        markdown: String,
    },
}

/// One example input: run by the review, shown on the listing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// A short name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The input, as JSON (a TOML value is converted).
    pub input: serde_json::Value,
}

/// How calls of the capsule are priced, in ledger micro-units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "model", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Price {
    /// No charge.
    #[default]
    Free,
    /// A fixed amount per call.
    PerCall {
        /// Micro-units per call.
        micros: u64,
    },
    /// An amount per 1000 LLM tokens the capsule uses.
    #[serde(rename = "per-1k-tokens")]
    PerKiloTokens {
        /// Micro-units per 1000 tokens.
        micros: u64,
    },
    /// An amount per billable event the capsule emits through `events`.
    PerEvent {
        /// Event name → micro-units per event. Only these names are billable.
        events: BTreeMap<String, u64>,
    },
}

impl Price {
    /// The price model's name as written in the listing (`per-call`, …).
    pub fn model(&self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::PerCall { .. } => "per-call",
            Self::PerKiloTokens { .. } => "per-1k-tokens",
            Self::PerEvent { .. } => "per-event",
        }
    }
}

/// The listing file as written (before validation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListingFile {
    name: String,
    version: String,
    summary: String,
    readme: Option<Readme>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    categories: Vec<String>,
    license: String,
    source: Option<String>,
    #[serde(default)]
    examples: Vec<Example>,
    #[serde(default)]
    price: Price,
}

/// A validated listing: what the marketplace stores with each version.
/// The README is kept as text (read from its file at load).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Listing {
    /// `author/name`.
    pub name: String,
    /// The semver version.
    pub version: semver::Version,
    /// One line.
    pub summary: String,
    /// Markdown (empty if none was given).
    pub readme: String,
    /// Search keywords.
    pub keywords: Vec<String>,
    /// Categories (facets).
    pub categories: Vec<String>,
    /// SPDX license expression.
    pub license: String,
    /// Source repository URL.
    pub source: Option<String>,
    /// Example inputs (the review runs each).
    pub examples: Vec<Example>,
    /// The price.
    pub price: Price,
}

impl Listing {
    /// The namespace (author) part of the name.
    pub fn author(&self) -> &str {
        self.name.split_once('/').map_or("", |(a, _)| a)
    }

    /// `author/name@version`: the version's id.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Read, parse and validate `path`; a README path is read relative to
    /// it. Cost: one or two small file reads.
    pub fn load(path: &Path) -> Result<Self, ListingError> {
        let text = std::fs::read_to_string(path).map_err(|source| ListingError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate `text`, the listing at `path` (for messages and
    /// for a README path). Cost: a README file read if it names one.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ListingError> {
        let file: ListingFile = toml::from_str(text).map_err(|e| ListingError::Syntax {
            path: path.to_owned(),
            field: named_field(e.message())
                .or_else(|| e.span().and_then(|s| field_at(text, s.start)))
                .unwrap_or_else(|| "(file)".to_owned()),
            message: e.message().to_owned(),
        })?;
        let invalid = |field, problem: String, fix| ListingError::Invalid {
            path: path.to_owned(),
            field,
            problem,
            fix,
        };
        check_name(&file.name).map_err(|problem| {
            invalid(
                "name",
                problem,
                "write author/name, each part lowercase letters, digits and '-' (e.g. acme/summarize)",
            )
        })?;
        let version = semver::Version::parse(&file.version).map_err(|e| {
            invalid(
                "version",
                format!("{:?} is not a semver version ({e})", file.version),
                "write MAJOR.MINOR.PATCH, e.g. 1.0.0",
            )
        })?;
        let summary = file.summary.trim().to_owned();
        if summary.is_empty()
            || summary.chars().count() > MAX_SUMMARY_CHARS
            || summary.contains('\n')
        {
            return Err(invalid(
                "summary",
                format!("must be one non-empty line of at most {MAX_SUMMARY_CHARS} characters"),
                "shorten it; put details in the README",
            ));
        }
        check_spdx(&file.license).map_err(|problem| {
            invalid(
                "license",
                problem,
                "give an SPDX license expression, e.g. MIT, Apache-2.0, MIT OR Apache-2.0, or LicenseRef-NAME for your own",
            )
        })?;
        if file.keywords.len() > MAX_KEYWORDS || file.keywords.iter().any(|k| !is_word(k)) {
            return Err(invalid(
                "keywords",
                format!("at most {MAX_KEYWORDS}, each 1–32 lowercase letters, digits or '-'"),
                "drop or respell the offending keywords",
            ));
        }
        if file.categories.len() > MAX_CATEGORIES || file.categories.iter().any(|c| !is_word(c)) {
            return Err(invalid(
                "categories",
                format!("at most {MAX_CATEGORIES}, each 1–32 lowercase letters, digits or '-'"),
                "drop or respell the offending categories",
            ));
        }
        if let Some(source) = &file.source
            && !(source.starts_with("https://") || source.starts_with("http://"))
        {
            return Err(invalid(
                "source",
                format!("{source:?} is not an http(s) URL"),
                "give the repository URL, e.g. https://github.com/acme/summarize",
            ));
        }
        if file.examples.len() > MAX_EXAMPLES {
            return Err(invalid(
                "examples",
                format!("{} examples; at most {MAX_EXAMPLES}", file.examples.len()),
                "keep the examples that cover distinct behaviour",
            ));
        }
        check_price(&file.price).map_err(|problem| {
            invalid(
                "price",
                problem,
                "write model = \"free\", or model = \"per-call\" | \"per-1k-tokens\" with micros = N, or model = \"per-event\" with events = { NAME = N }",
            )
        })?;
        let readme = match file.readme {
            None => String::new(),
            Some(Readme::Inline { markdown }) => markdown,
            Some(Readme::Path(readme)) => {
                let full = path.parent().unwrap_or(Path::new(".")).join(&readme);
                std::fs::read_to_string(&full).map_err(|source| ListingError::Readme {
                    path: path.to_owned(),
                    readme: full,
                    source,
                })?
            }
        };
        if readme.len() > MAX_README_BYTES {
            return Err(invalid(
                "readme",
                format!("{} bytes; at most {MAX_README_BYTES}", readme.len()),
                "shorten the README or link to longer documentation",
            ));
        }
        Ok(Self {
            name: file.name,
            version,
            summary,
            readme,
            keywords: file.keywords,
            categories: file.categories,
            license: file.license.trim().to_owned(),
            source: file.source,
            examples: file.examples,
            price: file.price,
        })
    }
}

/// The field a serde message names (``missing field `license` ``,
/// ``unknown field `bogus` ``), if it names one.
fn named_field(message: &str) -> Option<String> {
    let rest = message.split_once("field `")?.1;
    let (field, _) = rest.split_once('`')?;
    Some(field.to_owned())
}

/// The key of the `key = value` line containing byte `offset`, for naming
/// the field a TOML error points into.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty()).then(|| key.to_owned())
}

/// One lowercase word: 1–32 of `a-z 0-9 -`, not starting with `-`.
fn is_word(text: &str) -> bool {
    is_segment(text, 32)
}

fn is_segment(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Check an author (namespace) name: 1–39 of `a-z 0-9 -`.
pub fn check_author(author: &str) -> Result<(), String> {
    if is_segment(author, 39) {
        Ok(())
    } else {
        Err(format!(
            "author {author:?} must be 1–39 lowercase letters, digits or '-', not starting or ending with '-'"
        ))
    }
}

/// Check a capsule name: `author/name`, each part lowercase letters, digits
/// and `-` (so `registry/author/name` is a valid OCI repository).
pub fn check_name(name: &str) -> Result<(), String> {
    let Some((author, capsule)) = name.split_once('/') else {
        return Err(format!("{name:?} has no author namespace"));
    };
    check_author(author)?;
    if !is_segment(capsule, 64) {
        return Err(format!(
            "capsule name {capsule:?} must be 1–64 lowercase letters, digits or '-'"
        ));
    }
    Ok(())
}

pub(crate) fn check_price(price: &Price) -> Result<(), String> {
    match price {
        Price::Free => Ok(()),
        Price::PerCall { micros } | Price::PerKiloTokens { micros } if *micros == 0 => Err(
            format!("{} with micros = 0; use model = \"free\"", price.model()),
        ),
        Price::PerCall { .. } | Price::PerKiloTokens { .. } => Ok(()),
        Price::PerEvent { events } => {
            if events.is_empty() || events.len() > MAX_EVENTS {
                return Err(format!(
                    "per-event needs 1–{MAX_EVENTS} billable event names, {} given",
                    events.len()
                ));
            }
            for (name, micros) in events {
                if !is_event_name(name) {
                    return Err(format!(
                        "event name {name:?} must be 1–64 of a-z, 0-9, '-', '_', '.'"
                    ));
                }
                if *micros == 0 {
                    return Err(format!("event {name:?} costs 0; drop it from the table"));
                }
            }
            Ok(())
        }
    }
}

fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// SPDX license identifiers accepted without `LicenseRef-`: the ones
/// capsules are published under in practice (OSI-approved and common
/// source-available/public-domain ids). No SPDX crate builds offline from
/// the registry mirror, so the check is this list plus the expression
/// grammar (`AND`, `OR`, `WITH`, parentheses, a trailing `+`); anything
/// else can be written as `LicenseRef-NAME`.
pub const SPDX_IDS: &[&str] = &[
    "0BSD",
    "AFL-3.0",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "Apache-1.1",
    "Apache-2.0",
    "Artistic-2.0",
    "BlueOak-1.0.0",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-2-Clause-Patent",
    "BSD-3-Clause",
    "BSD-3-Clause-Clear",
    "BSD-4-Clause",
    "BSL-1.0",
    "BUSL-1.1",
    "CC-BY-4.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "CDDL-1.0",
    "CECILL-2.1",
    "ECL-2.0",
    "EPL-1.0",
    "EPL-2.0",
    "EUPL-1.1",
    "EUPL-1.2",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "ISC",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "MIT",
    "MIT-0",
    "MPL-1.1",
    "MPL-2.0",
    "MS-PL",
    "MS-RL",
    "MulanPSL-2.0",
    "NCSA",
    "OFL-1.1",
    "OSL-3.0",
    "PostgreSQL",
    "Python-2.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "UPL-1.0",
    "W3C",
    "WTFPL",
    "Zlib",
    "Elastic-2.0",
    "SSPL-1.0",
];

/// SPDX exception identifiers accepted after `WITH`.
pub const SPDX_EXCEPTIONS: &[&str] = &[
    "LLVM-exception",
    "Classpath-exception-2.0",
    "GCC-exception-3.1",
    "Autoconf-exception-3.0",
];

/// Check an SPDX license expression (see [`SPDX_IDS`]).
pub fn check_spdx(expression: &str) -> Result<(), String> {
    let spaced = expression.replace('(', " ( ").replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    if tokens.is_empty() {
        return Err("is empty".into());
    }
    // A tiny recursive-descent over: expr := term (("AND"|"OR") term)*;
    // term := "(" expr ")" | id ["WITH" exception].
    let mut pos = 0;
    expr(&tokens, &mut pos, 0)?;
    if pos != tokens.len() {
        return Err(format!("unexpected {:?}", tokens[pos]));
    }
    Ok(())
}

fn expr(tokens: &[&str], pos: &mut usize, depth: usize) -> Result<(), String> {
    if depth > 8 {
        return Err("parentheses nest too deep".into());
    }
    term(tokens, pos, depth)?;
    while let Some(&op) = tokens.get(*pos) {
        if op != "AND" && op != "OR" {
            break;
        }
        *pos += 1;
        term(tokens, pos, depth)?;
    }
    Ok(())
}

fn term(tokens: &[&str], pos: &mut usize, depth: usize) -> Result<(), String> {
    let Some(&token) = tokens.get(*pos) else {
        return Err("ends after an operator".into());
    };
    *pos += 1;
    if token == "(" {
        expr(tokens, pos, depth + 1)?;
        return match tokens.get(*pos) {
            Some(&")") => {
                *pos += 1;
                Ok(())
            }
            _ => Err("unbalanced parentheses".into()),
        };
    }
    let id = token.strip_suffix('+').unwrap_or(token);
    let custom = id.strip_prefix("LicenseRef-").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
    });
    if !custom && !SPDX_IDS.contains(&id) {
        return Err(format!("{token:?} is not a known SPDX license id"));
    }
    if tokens.get(*pos) == Some(&"WITH") {
        *pos += 1;
        match tokens.get(*pos) {
            Some(e) if SPDX_EXCEPTIONS.contains(e) => *pos += 1,
            Some(e) => return Err(format!("{e:?} is not a known SPDX exception")),
            None => return Err("WITH needs an exception id".into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"
name = "acme/summarize"
version = "1.2.0"
summary = "Summarize a document."
readme = { markdown = "# summarize" }
keywords = ["summary", "llm"]
categories = ["text"]
license = "MIT OR Apache-2.0"
source = "https://github.com/acme/summarize"

[[examples]]
input = { text = "hi" }

[price]
model = "per-event"
events = { summarized = 500 }
"##;

    fn parse(text: &str) -> Result<Listing, ListingError> {
        Listing::parse(text, Path::new("listing.toml"))
    }

    #[test]
    fn a_full_listing_parses_with_every_field() {
        let l = parse(GOOD).expect("parses");
        assert_eq!(l.id(), "acme/summarize@1.2.0");
        assert_eq!(l.author(), "acme");
        assert_eq!(l.readme, "# summarize");
        assert_eq!(l.examples[0].input, serde_json::json!({"text": "hi"}));
        assert_eq!(
            l.price,
            Price::PerEvent {
                events: BTreeMap::from([("summarized".to_owned(), 500)])
            }
        );
        let free =
            parse("name = \"a/b\"\nversion = \"0.1.0\"\nsummary = \"s\"\nlicense = \"MIT\"\n")
                .expect("minimal");
        assert_eq!(free.price, Price::Free);
    }

    #[test]
    fn a_readme_path_is_read_beside_the_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("README.md"), "# hello").expect("write");
        let listing = dir.path().join("listing.toml");
        std::fs::write(
            &listing,
            GOOD.replace(
                "readme = { markdown = \"# summarize\" }",
                "readme = \"README.md\"",
            ),
        )
        .expect("write");
        assert_eq!(Listing::load(&listing).expect("load").readme, "# hello");
        std::fs::remove_file(dir.path().join("README.md")).expect("rm");
        assert!(matches!(
            Listing::load(&listing),
            Err(ListingError::Readme { .. })
        ));
    }

    #[test]
    fn each_refusal_names_its_field_and_the_fix() {
        let cases = [
            (
                GOOD.replace("license = \"MIT OR Apache-2.0\"\n", ""),
                "license",
            ),
            (GOOD.replace("MIT OR Apache-2.0", "Nope-1.0"), "license"),
            (GOOD.replace("MIT OR Apache-2.0", "MIT AND"), "license"),
            (GOOD.replace("acme/summarize", "summarize"), "name"),
            (GOOD.replace("acme/summarize", "Acme/summarize"), "name"),
            (GOOD.replace("1.2.0", "1.2"), "version"),
            (GOOD.replace("https://github", "ftp://github"), "source"),
            (GOOD.replace("summarized = 500", "summarized = 0"), "price"),
            (GOOD.replace("per-event", "per-minute"), "model"),
            (GOOD.replace("\"llm\"", "\"LLM\""), "keywords"),
            (format!("{GOOD}\nbogus = 1\n"), "bogus"),
        ];
        for (text, field) in cases {
            let e = parse(&text).expect_err(field);
            let message = e.to_string();
            assert!(message.contains(field), "{field}: {message}");
            match e {
                ListingError::Invalid { fix, .. } => assert!(!fix.is_empty()),
                ListingError::Syntax { field: named, .. } => {
                    assert!(named == field || field == "model", "{named} for {field}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn spdx_expressions() {
        for ok in [
            "MIT",
            "Apache-2.0 WITH LLVM-exception",
            "(MIT OR Apache-2.0) AND BSD-3-Clause",
            "GPL-2.0-or-later",
            "LicenseRef-Acme-1",
        ] {
            check_spdx(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "mit",
            "MIT OR",
            "(MIT",
            "MIT WITH Foo",
            "LicenseRef-",
            "GPL",
        ] {
            assert!(check_spdx(bad).is_err(), "{bad}");
        }
    }
}
