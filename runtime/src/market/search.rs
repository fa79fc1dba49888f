//! Search over published listings: full text with typo tolerance, facet
//! filters with counts, and a ranking that blends text relevance with
//! installs, success rate and review status.
//!
//! The store fills the index with one [`SearchDoc`] per published version
//! ([`SearchIndex::upsert`]); the index shows, per listing, only its newest
//! non-yanked version (the newest stable one if there is one) and hides the
//! listing if that version is deprecated. [`SearchIndex::search`] answers a
//! [`SearchQuery`] with a [`SearchAnswer`]. An index lives in memory
//! ([`SearchIndex::new`]) or in a directory ([`SearchIndex::open`] for the
//! one writer, [`SearchIndex::open_read_only`] for readers), by default
//! [`default_dir`] under the node's data directory.
//!
//! Why a hand-written index and not `tantivy`, the formula, the match rules
//! and every cap: `docs/marketplace-search.md`. In short: a word matches
//! itself, within 1 edit from 4 characters and 2 edits from 8
//! ([`max_edits`]), and the last word of a query also as a prefix; all
//! words must match somewhere in the name, keywords, summary or README;
//! the score is
//! `review × (0.7 × relevance / best relevance + 0.2 × popularity + 0.1 × success)`.

mod dir;
mod index;
mod text;

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::{capsule::CapsuleKind, names::UnknownName, store::DataDir};

pub use text::{MAX_EXPANSIONS, MAX_WORD_CHARS, max_edits};

/// The longest query text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 1024;
/// The most distinct words a query may have (stop words included).
pub const MAX_QUERY_WORDS: usize = 16;
/// The most hits one answer may ask for.
pub const MAX_LIMIT: usize = 100;
/// The deepest page: `offset` at most this.
pub const MAX_OFFSET: usize = 1000;
/// The hits an answer has when the query does not say.
pub const DEFAULT_LIMIT: usize = 20;
/// The most values one facet filter may list.
pub const MAX_FILTER_VALUES: usize = 16;
/// The longest facet filter value, in bytes.
pub const MAX_FILTER_VALUE_BYTES: usize = 256;
/// The most values an answer counts per facet (the most frequent first).
pub const MAX_FACET_VALUES: usize = 50;
/// How much of a README is indexed, in bytes (the rest is not searched).
pub const MAX_README_INDEXED_BYTES: usize = 64 * 1024;
/// How much of a summary is indexed, in bytes.
pub const MAX_SUMMARY_INDEXED_BYTES: usize = 4 * 1024;
/// The longest author or name part of a listing id, in bytes.
pub const MAX_LISTING_PART_BYTES: usize = 64;

/// The index directory under a node's data directory: `<data>/market/search`.
pub fn default_dir(data: &DataDir) -> PathBuf {
    data.root().join("market").join("search")
}

/// One published version of a listing, as the store describes it to the
/// index. Plain data: the store fills it from the listing file, the
/// component and the review; the index never reads anything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchDoc {
    /// The listing id, `author/name`.
    pub listing: String,
    /// The version (semver).
    pub version: String,
    /// One line: what the capsule does.
    pub summary: String,
    /// The README (Markdown); the first [`MAX_README_INDEXED_BYTES`] are
    /// searched.
    #[serde(default)]
    pub readme: String,
    /// The author's keywords.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// The author's categories (a facet).
    #[serde(default)]
    pub categories: Vec<String>,
    /// What the capsule says it is in `describe()` (a facet).
    pub kind: CapsuleKind,
    /// How calls are priced (a facet).
    pub price: PriceModel,
    /// The SPDX license id (a facet, matched without regard to case).
    pub license: String,
    /// The component's imported interfaces, e.g. `soma:capsule/llm@0.2.0`,
    /// `wasi:http/outgoing-handler@0.2.6` (a facet).
    #[serde(default)]
    pub imports: Vec<String>,
    /// The component's exported interfaces (a facet).
    #[serde(default)]
    pub exports: Vec<String>,
    /// What `describe()` asks for, as `soma inspect` words: `kv`,
    /// `llm:small`, `http:example.com`, … (a facet).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The review status (a facet, and part of the ranking).
    pub review: ReviewState,
    /// Installs so far (ranking: log-scaled).
    #[serde(default)]
    pub installs: u64,
    /// Share of calls that succeeded over the measured window, 0–1; `None`
    /// before any call (ranked as 0.8).
    #[serde(default)]
    pub success_rate: Option<f64>,
    /// Yanked: hidden from search (still installable by digest).
    #[serde(default)]
    pub yanked: bool,
    /// Deprecated: hidden from search when it is the version shown.
    #[serde(default)]
    pub deprecated: bool,
}

crate::names::named_enum! {
    /// How a listing's calls are priced: the model's name, a facet. Serialized
    /// as `free`, `per-call`, `per-1k-tokens`, `per-event`.
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
        utoipa::ToSchema,
    )]
    pub enum PriceModel: "price model" {
        /// No charge.
        #[serde(rename = "free")]
        Free = "free",
        /// A price per call.
        #[serde(rename = "per-call")]
        PerCall = "per-call",
        /// A price per 1,000 LLM tokens the capsule uses.
        #[serde(rename = "per-1k-tokens")]
        PerKiloTokens = "per-1k-tokens",
        /// A price per billable event the capsule emits.
        #[serde(rename = "per-event")]
        PerEvent = "per-event",
    }
}

crate::names::named_enum! {
    /// A listing version's review status: verified (passed review and its
    /// re-tests), under maintenance (failing re-tests; ranked lower), or not
    /// reviewed. Serialized as `verified`, `under-maintenance`, `unreviewed`.
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
        utoipa::ToSchema,
    )]
    #[serde(rename_all = "kebab-case")]
    pub enum ReviewState: "review state" {
        /// Passed the automated review (and any manual approval) and its re-tests.
        Verified = "verified",
        /// Published, but its nightly re-tests fail.
        UnderMaintenance = "under-maintenance",
        /// Published without a review.
        Unreviewed = "unreviewed",
    }
}

impl ReviewState {
    /// The factor the whole score is multiplied by: verified 1.0,
    /// unreviewed 0.8, under maintenance 0.5.
    pub fn weight(self) -> f64 {
        match self {
            Self::Verified => 1.0,
            Self::Unreviewed => 0.8,
            Self::UnderMaintenance => 0.5,
        }
    }
}

/// Parses a name the way a person types it on the command line: trimmed,
/// any case (`--price PER-CALL`); the names themselves are lowercase.
fn parse_any_case<T: FromStr>(s: &str) -> Result<T, T::Err> {
    s.trim().to_ascii_lowercase().parse()
}

/// Parses a capsule kind by its name (`worker`, `planner`, `gate`), in any case.
pub fn parse_kind(s: &str) -> Result<CapsuleKind, UnknownName> {
    parse_any_case(s)
}

/// Parses a price model by its name, in any case.
pub fn parse_price(s: &str) -> Result<PriceModel, UnknownName> {
    parse_any_case(s)
}

/// Parses a review state by its name, in any case.
pub fn parse_review(s: &str) -> Result<ReviewState, UnknownName> {
    parse_any_case(s)
}

/// A facet: a field listings can be filtered by and counted on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Facet {
    /// [`SearchDoc::categories`].
    Category,
    /// [`SearchDoc::kind`].
    Kind,
    /// [`SearchDoc::price`].
    Price,
    /// [`SearchDoc::license`].
    License,
    /// [`SearchDoc::imports`]: a filter `ns:pkg/iface@ver` matches that
    /// version, `ns:pkg/iface` any version, `ns:pkg` any interface of the
    /// package.
    Imports,
    /// [`SearchDoc::exports`], matched like imports.
    Exports,
    /// [`SearchDoc::capabilities`]: a filter `llm:small` matches that word,
    /// `llm` any `llm…` capability.
    Capability,
    /// [`SearchDoc::review`].
    Review,
}

impl Facet {
    /// Every facet, in declaration order.
    pub const ALL: [Self; 8] = [
        Self::Category,
        Self::Kind,
        Self::Price,
        Self::License,
        Self::Imports,
        Self::Exports,
        Self::Capability,
        Self::Review,
    ];

    /// The serde name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Category => "category",
            Self::Kind => "kind",
            Self::Price => "price",
            Self::License => "license",
            Self::Imports => "imports",
            Self::Exports => "exports",
            Self::Capability => "capability",
            Self::Review => "review",
        }
    }
}

impl fmt::Display for Facet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Facet filters: a listing passes when, for every facet with values, it
/// has at least one of them (AND across facets, OR within one). Text values
/// are matched without regard to case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Filters {
    /// Categories.
    pub category: Vec<String>,
    /// Capsule kinds.
    pub kind: Vec<CapsuleKind>,
    /// Price models.
    pub price: Vec<PriceModel>,
    /// SPDX license ids.
    pub license: Vec<String>,
    /// Imported interfaces (see [`Facet::Imports`]).
    pub imports: Vec<String>,
    /// Exported interfaces.
    pub exports: Vec<String>,
    /// Capabilities (see [`Facet::Capability`]).
    pub capability: Vec<String>,
    /// Review states.
    pub review: Vec<ReviewState>,
}

impl Filters {
    /// The filter values per facet, as lowercase keys (facets without
    /// values left out).
    fn keys(&self) -> Vec<(Facet, Vec<String>)> {
        let text = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().to_lowercase())
                .collect::<Vec<_>>()
        };
        let all = [
            (Facet::Category, text(&self.category)),
            (
                Facet::Kind,
                self.kind.iter().map(|k| k.name().to_owned()).collect(),
            ),
            (
                Facet::Price,
                self.price.iter().map(|p| p.name().to_owned()).collect(),
            ),
            (Facet::License, text(&self.license)),
            (Facet::Imports, text(&self.imports)),
            (Facet::Exports, text(&self.exports)),
            (Facet::Capability, text(&self.capability)),
            (
                Facet::Review,
                self.review.iter().map(|r| r.name().to_owned()).collect(),
            ),
        ];
        all.into_iter().filter(|(_, v)| !v.is_empty()).collect()
    }

    /// Checks the caps: at most [`MAX_FILTER_VALUES`] values per facet, each
    /// at most [`MAX_FILTER_VALUE_BYTES`].
    fn check(&self) -> Result<(), SearchError> {
        let texts = [
            (Facet::Category, &self.category),
            (Facet::License, &self.license),
            (Facet::Imports, &self.imports),
            (Facet::Exports, &self.exports),
            (Facet::Capability, &self.capability),
        ];
        let counts = [
            (Facet::Kind, self.kind.len()),
            (Facet::Price, self.price.len()),
            (Facet::Review, self.review.len()),
        ];
        for (facet, count) in texts.iter().map(|(f, v)| (*f, v.len())).chain(counts) {
            if count > MAX_FILTER_VALUES {
                return Err(SearchError::TooManyFilterValues {
                    facet,
                    count,
                    max: MAX_FILTER_VALUES,
                });
            }
        }
        for (facet, values) in texts {
            if let Some(v) = values.iter().find(|v| v.len() > MAX_FILTER_VALUE_BYTES) {
                return Err(SearchError::FilterValueTooLong {
                    facet,
                    len: v.len(),
                    max: MAX_FILTER_VALUE_BYTES,
                });
            }
        }
        Ok(())
    }

    /// Whether no facet has a value.
    pub fn is_empty(&self) -> bool {
        self.keys().is_empty()
    }
}

/// What to search for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SearchQuery {
    /// Free text (at most [`MAX_QUERY_BYTES`], [`MAX_QUERY_WORDS`] words);
    /// empty: every listing that passes the filters.
    pub text: String,
    /// Facet filters.
    pub filters: Filters,
    /// Hits to return (0 for counts only; at most [`MAX_LIMIT`]).
    pub limit: usize,
    /// Hits to skip (paging; at most [`MAX_OFFSET`]).
    pub offset: usize,
}

impl Default for SearchQuery {
    fn default() -> Self {
        Self {
            text: String::new(),
            filters: Filters::default(),
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

impl SearchQuery {
    /// A text query with the default limit and no filters.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }
}

/// The answer to a [`SearchQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchAnswer {
    /// How many listings match the text and the filters.
    pub total: usize,
    /// The requested page of them, best first.
    pub hits: Vec<SearchHit>,
    /// Per facet, how many of the `total` listings have each value (at most
    /// [`MAX_FACET_VALUES`] values per facet, the most frequent first).
    pub facets: FacetCounts,
    /// How each query word was understood: the indexed terms it matched.
    pub words: Vec<WordMatch>,
}

/// One listing in an answer: the version shown and why it ranks where it
/// does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    /// `author/name`.
    pub listing: String,
    /// The version shown: the newest non-yanked one.
    pub version: String,
    /// Its summary.
    pub summary: String,
    /// Its kind.
    pub kind: CapsuleKind,
    /// Its price model.
    pub price: PriceModel,
    /// Its license.
    pub license: String,
    /// Its categories.
    pub categories: Vec<String>,
    /// Its keywords.
    pub keywords: Vec<String>,
    /// Its review status.
    pub review: ReviewState,
    /// Its installs.
    pub installs: u64,
    /// Its success rate, if measured.
    pub success_rate: Option<f64>,
    /// The ranking score (see the module doc); higher is better.
    pub score: f64,
    /// The text relevance alone (BM25F over name, keywords, summary,
    /// README; 0 for a query without text).
    pub relevance: f64,
}

/// Counts per facet value among the matching listings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FacetCounts {
    /// By category.
    pub category: Vec<FacetCount>,
    /// By capsule kind.
    pub kind: Vec<FacetCount>,
    /// By price model.
    pub price: Vec<FacetCount>,
    /// By license.
    pub license: Vec<FacetCount>,
    /// By imported interface (full names).
    pub imports: Vec<FacetCount>,
    /// By exported interface (full names).
    pub exports: Vec<FacetCount>,
    /// By capability word.
    pub capability: Vec<FacetCount>,
    /// By review status.
    pub review: Vec<FacetCount>,
}

impl FacetCounts {
    /// The counts of one facet.
    pub fn get(&self, facet: Facet) -> &[FacetCount] {
        match facet {
            Facet::Category => &self.category,
            Facet::Kind => &self.kind,
            Facet::Price => &self.price,
            Facet::License => &self.license,
            Facet::Imports => &self.imports,
            Facet::Exports => &self.exports,
            Facet::Capability => &self.capability,
            Facet::Review => &self.review,
        }
    }

    /// The count of one value of a facet (0 if absent; compared without
    /// regard to case).
    pub fn count(&self, facet: Facet, value: &str) -> usize {
        self.get(facet)
            .iter()
            .find(|c| c.value.eq_ignore_ascii_case(value))
            .map_or(0, |c| c.count)
    }

    fn get_mut(&mut self, facet: Facet) -> &mut Vec<FacetCount> {
        match facet {
            Facet::Category => &mut self.category,
            Facet::Kind => &mut self.kind,
            Facet::Price => &mut self.price,
            Facet::License => &mut self.license,
            Facet::Imports => &mut self.imports,
            Facet::Exports => &mut self.exports,
            Facet::Capability => &mut self.capability,
            Facet::Review => &mut self.review,
        }
    }
}

/// One facet value and how many matching listings have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FacetCount {
    /// The value, spelled as the first listing that had it.
    pub value: String,
    /// Matching listings with it.
    pub count: usize,
}

/// How one query word was matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WordMatch {
    /// The word (lowercased).
    pub word: String,
    /// The indexed terms it matched, best first (exact, prefix, then by
    /// edits; at most 8 shown).
    pub terms: Vec<String>,
}

/// Why the search index refused something. Query errors name the cap that
/// was exceeded; the caps are the `MAX_*` constants of this module.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query text is longer than [`MAX_QUERY_BYTES`].
    #[error("the query is {len} bytes; at most {max} are accepted")]
    QueryTooLong {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The query has more than [`MAX_QUERY_WORDS`] distinct words.
    #[error("the query has {count} distinct words; at most {max} are accepted")]
    TooManyWords {
        /// How many.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A query word is longer than [`MAX_WORD_CHARS`] characters.
    #[error(
        "a query word is {chars} characters long (it starts `{start}`); words longer than {max} are not indexed"
    )]
    WordTooLong {
        /// Its first characters.
        start: String,
        /// Its length in characters.
        chars: usize,
        /// The cap.
        max: usize,
    },
    /// `limit` is above [`MAX_LIMIT`].
    #[error("limit {limit} is above the maximum {max}")]
    LimitTooLarge {
        /// The limit asked for.
        limit: usize,
        /// The cap.
        max: usize,
    },
    /// `offset` is above [`MAX_OFFSET`].
    #[error("offset {offset} is above the maximum {max}; narrow the query instead of paging")]
    OffsetTooLarge {
        /// The offset asked for.
        offset: usize,
        /// The cap.
        max: usize,
    },
    /// A facet filter lists more than [`MAX_FILTER_VALUES`] values.
    #[error("the {facet} filter has {count} values; at most {max} are accepted")]
    TooManyFilterValues {
        /// The facet.
        facet: Facet,
        /// How many values.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A facet filter value is longer than [`MAX_FILTER_VALUE_BYTES`].
    #[error("a {facet} filter value is {len} bytes; at most {max} are accepted")]
    FilterValueTooLong {
        /// The facet.
        facet: Facet,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A document's listing id is not `author/name`.
    #[error("listing id `{listing}` is invalid: {reason}")]
    InvalidListing {
        /// The id given (cut to 200 bytes).
        listing: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A document's version is not semver.
    #[error("listing {listing}: version `{version}` is not semver")]
    InvalidVersion {
        /// The listing.
        listing: String,
        /// The version given.
        version: String,
        /// The parser's complaint.
        #[source]
        source: semver::Error,
    },
    /// The index directory does not exist or holds no index.
    #[error(
        "no search index at {}: publish a listing first, or give --index the directory of an index",
        dir.display()
    )]
    NoIndex {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory holds an index of another format version.
    #[error(
        "{}: search index format {found}, this soma reads format {expected}; rebuild the index",
        dir.display()
    )]
    Format {
        /// The directory.
        dir: PathBuf,
        /// The format found.
        found: String,
        /// The format this build writes.
        expected: u32,
    },
    /// Another process holds the index open for writing.
    #[error(
        "{} is open for writing by another process (one writer at a time; readers use open_read_only)",
        dir.display()
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The index was opened read-only.
    #[error("this search index was opened read-only")]
    ReadOnly,
    /// Reading or writing the index directory failed.
    #[error("search index {}: {what}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A listing file of the index is not valid JSON of the expected shape.
    #[error("search index file {} is damaged; rebuild the index", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
}

/// The search index: every published version the store gave it, the
/// version shown per listing, and the inverted index over those.
///
/// Writes ([`upsert`](Self::upsert), [`remove`](Self::remove),
/// [`rebuild`](Self::rebuild)) update memory and, for an index opened from a
/// directory, that directory before they return. Searching never touches
/// disk.
#[derive(Debug, Default)]
pub struct SearchIndex {
    core: index::Core,
    dir: Option<dir::IndexDir>,
    read_only: bool,
}

impl SearchIndex {
    /// An empty index in memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens (creating it if needed) the index in `dir` for writing: takes
    /// the directory's writer lock (held until drop; [`SearchError::Locked`]
    /// if another process holds it), reads every listing file and builds
    /// the inverted index. Cost: reading and indexing every listing (see the
    /// bench's `open` figure).
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        let (dir, listings) = dir::IndexDir::open_writer(dir)?;
        let core = index::Core::build(listings.into_iter().flatten())?;
        Ok(Self {
            core,
            dir: Some(dir),
            read_only: false,
        })
    }

    /// Opens the index in `dir` as a snapshot for searching, without the
    /// writer lock (a writer may be running; each listing is read whole,
    /// old or new). [`SearchError::NoIndex`] if there is none.
    pub fn open_read_only(dir: &Path) -> Result<Self, SearchError> {
        let listings = dir::IndexDir::read(dir)?;
        let core = index::Core::build(listings.into_iter().flatten())?;
        Ok(Self {
            core,
            dir: None,
            read_only: true,
        })
    }

    /// Adds a published version, or replaces the document of the same
    /// listing and version (same semver precedence): new installs, success
    /// rate, review status, yanked or deprecated. Re-indexes that listing
    /// only; with a directory, rewrites its one file (fsync'd). Cost: the
    /// listing's words, plus one pass over the posting lists of the terms
    /// of the version it replaces in the index, plus one pass over every
    /// listing's length norms (the average lengths moved).
    pub fn upsert(&mut self, doc: SearchDoc) -> Result<(), SearchError> {
        self.writable()?;
        let listing = doc.listing.clone();
        self.core.upsert(doc)?;
        if let Some(dir) = &self.dir {
            dir.write_listing(&listing, self.core.versions(&listing))?;
        }
        Ok(())
    }

    /// Removes a listing, every version. Returns whether it was there.
    pub fn remove(&mut self, listing: &str) -> Result<bool, SearchError> {
        self.writable()?;
        let found = self.core.remove(listing);
        if found && let Some(dir) = &self.dir {
            dir.remove_listing(listing)?;
        }
        Ok(found)
    }

    /// Replaces the whole index with `docs` (every published version of
    /// every listing), e.g. from the store's catalog. With a directory,
    /// rewrites every listing file, deletes the others, then syncs once.
    pub fn rebuild(
        &mut self,
        docs: impl IntoIterator<Item = SearchDoc>,
    ) -> Result<(), SearchError> {
        self.writable()?;
        let core = index::Core::build(docs)?;
        if let Some(dir) = &self.dir {
            dir.replace_all(core.all_versions())?;
        }
        self.core = core;
        Ok(())
    }

    /// Answers a query. Never touches disk; works in per-thread arrays of
    /// one entry per listing that are reused across queries (only the
    /// matches, the hits and the counts are allocated). Cost: the posting
    /// lists of the query's terms (or, for filters, the listings of the
    /// filter values), then the matching listings. Errors only for a query
    /// over the caps.
    pub fn search(&self, query: &SearchQuery) -> Result<SearchAnswer, SearchError> {
        self.core.search(query)
    }

    /// How many listings the index knows (shown or not).
    pub fn listings(&self) -> usize {
        self.core.listings()
    }

    /// How many listings search can show (those with a version shown).
    pub fn shown(&self) -> usize {
        self.core.shown()
    }

    /// The indexed document of `listing` at `version`, shown or not.
    pub fn version(&self, listing: &str, version: &str) -> Option<&SearchDoc> {
        self.core
            .versions(listing)
            .into_iter()
            .find(|d| d.version == version)
    }

    /// The version of `listing` that search shows, if any.
    pub fn shown_version(&self, listing: &str) -> Option<&SearchDoc> {
        self.core.shown_version(listing)
    }

    fn writable(&self) -> Result<(), SearchError> {
        if self.read_only {
            Err(SearchError::ReadOnly)
        } else {
            Ok(())
        }
    }
}
