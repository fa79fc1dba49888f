//! The in-memory index: listings with all their versions, one slot per
//! shown listing, posting lists per term, facet values per slot, and the
//! query evaluation (match, filter, count, rank, page).
//!
//! Sized for the marketplace (tens of thousands of listings): a query walks
//! the posting lists of its words' terms (a later word only scores the
//! slots every earlier word matched), filters through each facet value's
//! slot list, and counts and ranks the matches; per-slot BM25 length norms,
//! review weights and priors are dense arrays, and the per-query arrays are
//! reused per thread, so a query allocates nothing proportional to the
//! index.

use std::{cell::RefCell, cmp::Ordering, collections::HashMap, sync::Arc};

use semver::Version;

use super::{
    Facet, FacetCount, FacetCounts, MAX_FACET_VALUES, MAX_LIMIT, MAX_LISTING_PART_BYTES,
    MAX_OFFSET, MAX_QUERY_BYTES, MAX_QUERY_WORDS, MAX_README_INDEXED_BYTES,
    MAX_SUMMARY_INDEXED_BYTES, SearchAnswer, SearchDoc, SearchError, SearchHit, SearchQuery,
    WordMatch,
    text::{self, MAX_EXPANSIONS, MAX_WORD_CHARS, MatchKind, TermId, Vocab, max_edits},
};

/// The text fields, in posting order.
const FIELDS: usize = 4;
/// Field weights in BM25F: name (author and name), keywords, summary,
/// README.
const FIELD_WEIGHT: [f32; FIELDS] = [3.0, 2.5, 1.5, 1.0];
/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 length normalization.
const B: f32 = 0.75;
/// How many matched terms a [`WordMatch`] shows.
const SHOWN_TERMS: usize = 8;

/// Ranking weights: relevance, popularity, success (see the module doc of
/// `search` and `docs/marketplace-search.md`).
const W_RELEVANCE: f64 = 0.7;
const W_POPULARITY: f64 = 0.2;
const W_SUCCESS: f64 = 0.1;
/// The success rate assumed before any call is measured.
const UNKNOWN_SUCCESS: f64 = 0.8;
/// Installs at which popularity saturates at 1 (log-scaled): 10^6.
const POPULARITY_DECADES: f64 = 6.0;

/// An id into [`FacetDict`].
type ValueId = u32;

/// One term's occurrences in one slot: counts per field.
#[derive(Debug, Clone, Copy)]
struct Posting {
    slot: u32,
    tf: [u16; FIELDS],
}

/// One published version.
#[derive(Debug)]
struct Published {
    version: Version,
    doc: Arc<SearchDoc>,
}

/// A listing: its versions (newest first) and the slot of the one shown.
#[derive(Debug, Default)]
struct Listing {
    versions: Vec<Published>,
    slot: Option<u32>,
}

impl Listing {
    /// The version search shows: the newest non-yanked stable one, else
    /// the newest non-yanked pre-release; none if that one is deprecated.
    fn shown(&self) -> Option<&Arc<SearchDoc>> {
        let live = || self.versions.iter().filter(|p| !p.doc.yanked);
        let chosen = live()
            .find(|p| p.version.pre.is_empty())
            .or_else(|| live().next())?;
        (!chosen.doc.deprecated).then_some(&chosen.doc)
    }
}

/// A shown listing in the inverted index.
#[derive(Debug)]
struct Slot {
    doc: Arc<SearchDoc>,
    /// Words per field.
    lens: [u32; FIELDS],
    /// The distinct terms with a posting for this slot.
    terms: Vec<TermId>,
    /// Facet values counted for this slot (sorted, distinct).
    counted: Vec<ValueId>,
    /// Facet values a filter matches (sorted, distinct; a superset of
    /// `counted`: also interface names without version, packages, and
    /// capability names without argument).
    filtered: Vec<ValueId>,
}

/// Facet values, interned per facet by lowercase key; each keeps the
/// spelling of the first listing that had it.
#[derive(Debug, Default)]
struct FacetDict {
    ids: HashMap<(Facet, String), ValueId>,
    values: Vec<(Facet, String)>,
}

impl FacetDict {
    fn intern(&mut self, facet: Facet, display: &str) -> ValueId {
        let key = (facet, display.to_lowercase());
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = ValueId::try_from(self.values.len()).unwrap_or(ValueId::MAX);
        self.values.push((facet, display.to_owned()));
        self.ids.insert(key, id);
        id
    }

    fn get(&self, facet: Facet, key: &str) -> Option<ValueId> {
        self.ids.get(&(facet, key.to_owned())).copied()
    }
}

/// The index proper.
#[derive(Debug, Default)]
pub(crate) struct Core {
    listings: HashMap<String, Listing>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    vocab: Vocab,
    /// Posting lists by term id (unordered).
    postings: Vec<Vec<Posting>>,
    len_sum: [u64; FIELDS],
    shown: usize,
    facets: FacetDict,
    /// Per slot (dense, by slot number): the BM25 length norm per field,
    /// `1 - B + B × len / average len`. Recomputed by [`Core::settle`]
    /// whenever lengths change.
    norms: Vec<[f32; FIELDS]>,
    /// Per slot: `(review weight, prior)`; `(0, 0)` for a free slot.
    priors: Vec<(f64, f64)>,
    /// Per filterable facet value: the slots that have it (unordered).
    value_slots: Vec<Vec<u32>>,
}

/// Per-query working memory, reused across queries on the same thread so
/// a query allocates nothing proportional to the index. Every array is
/// all zeros between queries (a query resets exactly what it touched).
#[derive(Debug, Default)]
struct Scratch {
    /// Text relevance per slot.
    relevance: Vec<f32>,
    /// Best score of the current word per slot.
    best: Vec<f32>,
    /// Words matched per slot (text) or filters passed per slot (facets).
    matched: Vec<u8>,
    /// Filters passed per slot.
    passed: Vec<u8>,
    /// Slots with a non-zero `best` for the current word.
    touched: Vec<u32>,
    /// Slots matched by the first word: a superset of the candidates.
    first: Vec<u32>,
    /// Slots with a non-zero `passed`.
    passed_touched: Vec<u32>,
    /// Count per facet value.
    counts: Vec<usize>,
}

impl Scratch {
    /// Clears what a query touched, so every array is zero again.
    fn reset(&mut self) {
        for &s in &self.first {
            self.relevance[s as usize] = 0.0;
            self.matched[s as usize] = 0;
        }
        self.first.clear();
        for &s in &self.passed_touched {
            self.passed[s as usize] = 0;
        }
        self.passed_touched.clear();
        self.touched.clear();
    }

    fn fit(&mut self, slots: usize, values: usize) {
        if self.relevance.len() < slots {
            self.relevance.resize(slots, 0.0);
            self.best.resize(slots, 0.0);
            self.matched.resize(slots, 0);
            self.passed.resize(slots, 0);
        }
        if self.counts.len() < values {
            self.counts.resize(values, 0);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Core {
    /// An index of `docs` (every published version of every listing).
    /// Validates every document first; indexes each listing's shown version
    /// once.
    pub(crate) fn build(docs: impl IntoIterator<Item = SearchDoc>) -> Result<Self, SearchError> {
        let mut core = Self::default();
        for doc in docs {
            core.add_version(doc)?;
        }
        // In id order, so slots and facet spellings (first seen) do not
        // depend on the hash map's order.
        let mut shown: Vec<(String, Arc<SearchDoc>)> = core
            .listings
            .iter()
            .filter_map(|(id, l)| l.shown().map(|d| (id.clone(), Arc::clone(d))))
            .collect();
        shown.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (id, doc) in shown {
            let slot = core.index(doc);
            if let Some(listing) = core.listings.get_mut(&id) {
                listing.slot = Some(slot);
            }
        }
        core.settle();
        Ok(core)
    }

    /// Adds or replaces one version and re-indexes its listing.
    pub(crate) fn upsert(&mut self, doc: SearchDoc) -> Result<(), SearchError> {
        let id = doc.listing.clone();
        self.add_version(doc)?;
        self.refresh(&id);
        self.settle();
        Ok(())
    }

    /// Removes a listing and its slot. Whether it was there.
    pub(crate) fn remove(&mut self, listing: &str) -> bool {
        match self.listings.remove(listing) {
            Some(l) => {
                if let Some(slot) = l.slot {
                    self.unindex(slot);
                    self.settle();
                }
                true
            }
            None => false,
        }
    }

    /// After a batch of changes: merges new terms into the vocabulary's
    /// order and recomputes every slot's length norms (the average lengths
    /// moved). Cost: one pass over the slots.
    fn settle(&mut self) {
        self.vocab.settle();
        let docs = self.shown.max(1) as f32;
        let avg: [f32; FIELDS] = std::array::from_fn(|f| (self.len_sum[f] as f32 / docs).max(1.0));
        self.norms.resize(self.slots.len(), [1.0; FIELDS]);
        for (norm, slot) in self.norms.iter_mut().zip(&self.slots) {
            if let Some(s) = slot {
                *norm = std::array::from_fn(|f| 1.0 - B + B * s.lens[f] as f32 / avg[f]);
            }
        }
    }

    /// The versions of a listing, newest first.
    pub(crate) fn versions(&self, listing: &str) -> Vec<&SearchDoc> {
        self.listings
            .get(listing)
            .map(|l| l.versions.iter().map(|p| &*p.doc).collect())
            .unwrap_or_default()
    }

    /// Every listing with its versions, newest first.
    pub(crate) fn all_versions(&self) -> impl Iterator<Item = (&str, Vec<&SearchDoc>)> {
        self.listings.iter().map(|(id, l)| {
            (
                id.as_str(),
                l.versions.iter().map(|p| &*p.doc).collect::<Vec<_>>(),
            )
        })
    }

    pub(crate) fn listings(&self) -> usize {
        self.listings.len()
    }

    pub(crate) fn shown(&self) -> usize {
        self.shown
    }

    pub(crate) fn shown_version(&self, listing: &str) -> Option<&SearchDoc> {
        let slot = self.listings.get(listing)?.slot?;
        self.slots.get(slot as usize)?.as_ref().map(|s| &*s.doc)
    }

    /// Validates `doc` and stores it among its listing's versions
    /// (replacing the one of equal precedence). Does not re-index.
    fn add_version(&mut self, mut doc: SearchDoc) -> Result<(), SearchError> {
        check_listing_id(&doc.listing)?;
        let version =
            Version::parse(doc.version.trim()).map_err(|source| SearchError::InvalidVersion {
                listing: doc.listing.clone(),
                version: doc.version.clone(),
                source,
            })?;
        doc.success_rate = doc
            .success_rate
            .filter(|r| r.is_finite())
            .map(|r| r.clamp(0.0, 1.0));
        let listing = self.listings.entry(doc.listing.clone()).or_default();
        let published = Published {
            version,
            doc: Arc::new(doc),
        };
        match listing
            .versions
            .iter()
            .position(|p| p.version.cmp_precedence(&published.version) == Ordering::Equal)
        {
            Some(i) => listing.versions[i] = published,
            None => {
                listing.versions.push(published);
                listing
                    .versions
                    .sort_by(|a, b| b.version.cmp_precedence(&a.version));
            }
        }
        Ok(())
    }

    /// Re-indexes a listing after its versions changed.
    fn refresh(&mut self, id: &str) {
        let Some(listing) = self.listings.get(id) else {
            return;
        };
        let old = listing.slot;
        let shown = listing.shown().cloned();
        if let Some(slot) = old {
            self.unindex(slot);
        }
        let slot = shown.map(|doc| self.index(doc));
        if let Some(listing) = self.listings.get_mut(id) {
            listing.slot = slot;
        }
    }

    /// Puts a document into a free slot: postings, lengths, facet values,
    /// prior. Call `vocab.settle()` after a batch.
    fn index(&mut self, doc: Arc<SearchDoc>) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let mut lens = [0u32; FIELDS];
        let mut tfs: HashMap<TermId, [u16; FIELDS]> = HashMap::new();
        // One lowercase buffer for every word (`text::words` without its
        // allocation per word).
        let mut word = String::with_capacity(MAX_WORD_CHARS);
        let mut add = |field: usize, text: &str, vocab: &mut Vocab| {
            for raw in text::raw_words(text) {
                if !text::lowercase_into(raw, &mut word) {
                    continue;
                }
                lens[field] += 1;
                let id = vocab.intern(&word);
                let tf = tfs.entry(id).or_default();
                tf[field] = tf[field].saturating_add(1);
            }
        };
        add(0, &doc.listing, &mut self.vocab);
        for keyword in &doc.keywords {
            add(1, keyword, &mut self.vocab);
        }
        add(
            2,
            cut(&doc.summary, MAX_SUMMARY_INDEXED_BYTES),
            &mut self.vocab,
        );
        add(
            3,
            cut(&doc.readme, MAX_README_INDEXED_BYTES),
            &mut self.vocab,
        );
        let mut terms = Vec::with_capacity(tfs.len());
        if self.postings.len() < self.vocab.len() {
            self.postings.resize_with(self.vocab.len(), Vec::new);
        }
        for (id, tf) in tfs {
            self.postings[id as usize].push(Posting { slot, tf });
            terms.push(id);
        }
        for (sum, len) in self.len_sum.iter_mut().zip(lens) {
            *sum += u64::from(len);
        }
        let (counted, filtered) = self.facet_values(&doc);
        if self.value_slots.len() < self.facets.values.len() {
            self.value_slots
                .resize_with(self.facets.values.len(), Vec::new);
        }
        for &v in &filtered {
            self.value_slots[v as usize].push(slot);
        }
        let popularity = ((1.0 + doc.installs as f64).log10() / POPULARITY_DECADES).min(1.0);
        let success = doc.success_rate.unwrap_or(UNKNOWN_SUCCESS);
        let prior = W_POPULARITY * popularity + W_SUCCESS * success;
        let review_weight = doc.review.weight();
        if self.priors.len() <= slot as usize {
            self.priors.resize(slot as usize + 1, (0.0, 0.0));
        }
        self.priors[slot as usize] = (review_weight, prior);
        self.slots[slot as usize] = Some(Slot {
            doc,
            lens,
            terms,
            counted,
            filtered,
        });
        self.shown += 1;
        slot
    }

    /// Takes a slot out of the index and frees it.
    fn unindex(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        for term in s.terms {
            let list = &mut self.postings[term as usize];
            if let Some(i) = list.iter().position(|p| p.slot == slot) {
                list.swap_remove(i);
            }
        }
        for &v in &s.filtered {
            let list = &mut self.value_slots[v as usize];
            if let Some(i) = list.iter().position(|&x| x == slot) {
                list.swap_remove(i);
            }
        }
        self.priors[slot as usize] = (0.0, 0.0);
        for (sum, len) in self.len_sum.iter_mut().zip(s.lens) {
            *sum -= u64::from(len);
        }
        self.shown -= 1;
        self.free.push(slot);
    }

    /// A document's counted and filterable facet values.
    fn facet_values(&mut self, doc: &SearchDoc) -> (Vec<ValueId>, Vec<ValueId>) {
        let mut counted = Vec::new();
        let mut filtered = Vec::new();
        let dict = &mut self.facets;
        let mut value = |facet: Facet, value: &str| {
            let value = value.trim();
            if !value.is_empty() {
                let id = dict.intern(facet, value);
                counted.push(id);
                filtered.push(id);
            }
        };
        for c in &doc.categories {
            value(Facet::Category, c);
        }
        value(Facet::Kind, doc.kind.name());
        value(Facet::Price, doc.price.name());
        value(Facet::License, &doc.license);
        value(Facet::Review, doc.review.name());
        for c in &doc.capabilities {
            value(Facet::Capability, c);
        }
        for i in &doc.imports {
            value(Facet::Imports, i);
        }
        for e in &doc.exports {
            value(Facet::Exports, e);
        }
        // Wider filter keys: `llm` for `llm:small`; an interface without
        // its version, and its package.
        for c in &doc.capabilities {
            if let Some((name, _)) = c.trim().split_once(':') {
                filtered.push(self.facets.intern(Facet::Capability, name));
            }
        }
        for (facet, names) in [
            (Facet::Imports, &doc.imports),
            (Facet::Exports, &doc.exports),
        ] {
            for name in names {
                for key in interface_keys(name.trim()).into_iter().skip(1) {
                    filtered.push(self.facets.intern(facet, key));
                }
            }
        }
        counted.sort_unstable();
        counted.dedup();
        filtered.sort_unstable();
        filtered.dedup();
        (counted, filtered)
    }

    /// Answers a query: see [`super::SearchIndex::search`].
    pub(crate) fn search(&self, q: &SearchQuery) -> Result<SearchAnswer, SearchError> {
        if q.limit > MAX_LIMIT {
            return Err(SearchError::LimitTooLarge {
                limit: q.limit,
                max: MAX_LIMIT,
            });
        }
        if q.offset > MAX_OFFSET {
            return Err(SearchError::OffsetTooLarge {
                offset: q.offset,
                max: MAX_OFFSET,
            });
        }
        q.filters.check()?;
        let words = parse_words(&q.text)?;
        // Each facet filter as the value ids it accepts; a filter whose
        // values no listing has accepts nothing.
        let filters: Vec<Vec<ValueId>> = q
            .filters
            .keys()
            .into_iter()
            .map(|(facet, keys)| {
                let mut ids: Vec<ValueId> = keys
                    .iter()
                    .filter_map(|k| self.facets.get(facet, k))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            })
            .collect();
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.fit(self.slots.len(), self.facets.values.len());
            let answer = self.evaluate(q, &words, &filters, &mut scratch);
            scratch.reset();
            answer
        })
    }

    /// The body of [`Core::search`] over reusable scratch memory; leaves
    /// in `scratch` what [`Scratch::reset`] clears.
    fn evaluate(
        &self,
        q: &SearchQuery,
        words: &[(String, bool)],
        filters: &[Vec<ValueId>],
        scratch: &mut Scratch,
    ) -> Result<SearchAnswer, SearchError> {
        let Scratch {
            relevance,
            best,
            matched,
            passed,
            touched,
            first,
            passed_touched,
            counts,
        } = scratch;
        // Facet filters, through each value's slots: a slot passes when
        // every filter accepted it (`passed[slot] == filters`). A slot is
        // counted once per filter however many of its values match: the
        // filter's pass only raises slots the previous filters raised.
        let n_filters = u8::try_from(filters.len()).unwrap_or(u8::MAX);
        for (i, accepted) in filters.iter().enumerate() {
            let level = u8::try_from(i).unwrap_or(u8::MAX);
            for &v in accepted {
                for &slot in &self.value_slots[v as usize] {
                    let cell = &mut passed[slot as usize];
                    if *cell == level {
                        *cell = level + 1;
                        if level == 0 {
                            passed_touched.push(slot);
                        }
                    }
                }
            }
        }
        let passes = |slot: u32| filters.is_empty() || passed[slot as usize] == n_filters;

        let mut word_matches = Vec::with_capacity(words.len());
        let mut candidates: Vec<u32> = if words.is_empty() {
            if filters.is_empty() {
                self.live().map(|(i, _)| i).collect()
            } else {
                passed_touched
                    .iter()
                    .copied()
                    .filter(|&i| passes(i))
                    .collect()
            }
        } else {
            let docs = self.shown.max(1) as f32;
            for (w, (word, prefix)) in words.iter().enumerate() {
                let terms = self.expand(word, *prefix);
                word_matches.push(WordMatch {
                    word: word.clone(),
                    terms: terms
                        .iter()
                        .take(SHOWN_TERMS)
                        .map(|(t, _)| self.vocab.text(*t).to_owned())
                        .collect(),
                });
                let level = u8::try_from(w).unwrap_or(u8::MAX);
                for (term, kind) in terms {
                    let list = &self.postings[term as usize];
                    let df = list.len() as f32;
                    let idf = (1.0 + (docs - df + 0.5) / (df + 0.5)).ln();
                    let factor = idf * kind.weight();
                    for p in list {
                        let s = p.slot as usize;
                        // Only slots every earlier word matched can match.
                        if matched[s] != level {
                            continue;
                        }
                        let norm = &self.norms[s];
                        let mut tf = 0f32;
                        for (f, &count) in p.tf.iter().enumerate() {
                            if count > 0 {
                                tf += FIELD_WEIGHT[f] * f32::from(count) / norm[f];
                            }
                        }
                        let score = factor * tf * (K1 + 1.0) / (tf + K1);
                        let cell = &mut best[s];
                        if *cell == 0.0 {
                            touched.push(p.slot);
                        }
                        *cell = cell.max(score);
                    }
                }
                for &slot in touched.iter() {
                    let s = slot as usize;
                    relevance[s] += best[s];
                    matched[s] += 1;
                    best[s] = 0.0;
                }
                if w == 0 {
                    std::mem::swap(first, touched);
                }
                touched.clear();
            }
            let all = u8::try_from(words.len()).unwrap_or(u8::MAX);
            first
                .iter()
                .copied()
                .filter(|&i| matched[i as usize] == all && passes(i))
                .collect()
        };
        // Slot order: the answer does not depend on it, but keep it fixed.
        candidates.sort_unstable();
        candidates.dedup();

        let facets = self.count(&candidates, counts);
        let top_relevance = candidates
            .iter()
            .map(|&i| relevance[i as usize])
            .fold(0f32, f32::max);
        let mut ranked: Vec<(f64, u32)> = candidates
            .iter()
            .map(|&i| {
                let (review_weight, prior) = self.priors[i as usize];
                let text = if words.is_empty() || top_relevance <= 0.0 {
                    1.0
                } else {
                    f64::from(relevance[i as usize] / top_relevance)
                };
                (review_weight * (W_RELEVANCE * text + prior), i)
            })
            .collect();
        let better = |a: &(f64, u32), b: &(f64, u32)| {
            b.0.total_cmp(&a.0)
                .then_with(|| self.listing_of(a.1).cmp(self.listing_of(b.1)))
        };
        let end = (q.offset + q.limit).min(ranked.len());
        if end > 0 && end < ranked.len() {
            ranked.select_nth_unstable_by(end - 1, better);
            ranked.truncate(end);
        }
        ranked.sort_unstable_by(better);
        let hits = ranked
            .iter()
            .take(end)
            .skip(q.offset)
            .filter_map(|&(score, i)| {
                let slot = self.slots[i as usize].as_ref()?;
                let d = &slot.doc;
                Some(SearchHit {
                    listing: d.listing.clone(),
                    version: d.version.clone(),
                    summary: d.summary.clone(),
                    kind: d.kind,
                    price: d.price,
                    license: d.license.clone(),
                    categories: d.categories.clone(),
                    keywords: d.keywords.clone(),
                    review: d.review,
                    installs: d.installs,
                    success_rate: d.success_rate,
                    score,
                    relevance: f64::from(relevance[i as usize]),
                })
            })
            .collect();
        Ok(SearchAnswer {
            total: candidates.len(),
            hits,
            facets,
            words: word_matches,
        })
    }

    /// The live slots.
    fn live(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((u32::try_from(i).ok()?, s.as_ref()?)))
    }

    fn listing_of(&self, slot: u32) -> &str {
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map_or("", |s| s.doc.listing.as_str())
    }

    /// The terms a query word matches that some shown listing has: best
    /// match first, then the most listings, at most [`MAX_EXPANSIONS`].
    fn expand(&self, word: &str, prefix: bool) -> Vec<(TermId, MatchKind)> {
        let mut terms = self
            .vocab
            .matches(word, prefix, max_edits(word.chars().count()));
        terms.retain(|(t, _)| {
            self.postings
                .get(*t as usize)
                .is_some_and(|l| !l.is_empty())
        });
        terms.sort_unstable_by(|(a, ka), (b, kb)| {
            ka.cmp(kb)
                .then_with(|| {
                    self.postings[*b as usize]
                        .len()
                        .cmp(&self.postings[*a as usize].len())
                })
                .then_with(|| self.vocab.text(*a).cmp(self.vocab.text(*b)))
        });
        terms.truncate(MAX_EXPANSIONS);
        terms
    }

    /// Facet counts over the candidates, in `counts` (one cell per facet
    /// value, all zero on entry and on return).
    fn count(&self, candidates: &[u32], counts: &mut [usize]) -> FacetCounts {
        for &i in candidates {
            if let Some(slot) = &self.slots[i as usize] {
                for &v in &slot.counted {
                    counts[v as usize] += 1;
                }
            }
        }
        let mut out = FacetCounts::default();
        for (v, count) in counts.iter_mut().enumerate().take(self.facets.values.len()) {
            if *count > 0 {
                let (facet, value) = &self.facets.values[v];
                out.get_mut(*facet).push(FacetCount {
                    value: value.clone(),
                    count: *count,
                });
                *count = 0;
            }
        }
        for facet in Facet::ALL {
            let list = out.get_mut(facet);
            list.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
            list.truncate(MAX_FACET_VALUES);
        }
        out
    }
}

/// The query's words, lowercased and distinct, stop words dropped when
/// another word remains; the last one is also matched as a prefix when it
/// has 2 characters or more. Errors on the caps.
fn parse_words(text: &str) -> Result<Vec<(String, bool)>, SearchError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(SearchError::QueryTooLong {
            len: text.len(),
            max: MAX_QUERY_BYTES,
        });
    }
    let mut words: Vec<String> = Vec::new();
    for raw in text::raw_words(text) {
        let chars = raw.chars().count();
        if chars > MAX_WORD_CHARS {
            return Err(SearchError::WordTooLong {
                start: raw.chars().take(16).collect(),
                chars,
                max: MAX_WORD_CHARS,
            });
        }
        let word = raw.to_lowercase();
        if !words.contains(&word) {
            if words.len() == MAX_QUERY_WORDS {
                let count = text::raw_words(text)
                    .map(str::to_lowercase)
                    .collect::<std::collections::HashSet<_>>()
                    .len();
                return Err(SearchError::TooManyWords {
                    count,
                    max: MAX_QUERY_WORDS,
                });
            }
            words.push(word);
        }
    }
    if words.iter().any(|w| !text::is_stop_word(w)) {
        words.retain(|w| !text::is_stop_word(w));
    }
    let last = words.len().saturating_sub(1);
    Ok(words
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let prefix = i == last && w.chars().count() >= 2;
            (w, prefix)
        })
        .collect())
}

/// The filter keys of an interface name, lowercase: the full name, the
/// name without `@version`, and the package (`ns:pkg`).
fn interface_keys(name: &str) -> Vec<&str> {
    let mut keys = vec![name];
    let base = name.split_once('@').map_or(name, |(b, _)| b);
    if base != name {
        keys.push(base);
    }
    if let Some((package, _)) = base.split_once('/') {
        keys.push(package);
    }
    keys
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks a listing id: `author/name`, each part 1–64 bytes, no
/// whitespace, control characters or further `/`.
fn check_listing_id(id: &str) -> Result<(), SearchError> {
    let invalid = |reason| SearchError::InvalidListing {
        listing: cut(id, 200).to_owned(),
        reason,
    };
    let (author, name) = id
        .split_once('/')
        .ok_or_else(|| invalid("expected `author/name`"))?;
    if author.is_empty() || name.is_empty() {
        return Err(invalid("author and name must not be empty"));
    }
    if name.contains('/') {
        return Err(invalid("only one `/` separates author and name"));
    }
    if author.len() > MAX_LISTING_PART_BYTES || name.len() > MAX_LISTING_PART_BYTES {
        return Err(invalid("author and name are at most 64 bytes each"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("no whitespace or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_of_a_query_are_distinct_without_stop_words_and_the_last_is_a_prefix() {
        let w = parse_words("Summarize the PDF the pdf").expect("parse");
        assert_eq!(
            w,
            [("summarize".to_owned(), false), ("pdf".to_owned(), true)]
        );
        // Only stop words: kept.
        assert_eq!(
            parse_words("the").expect("parse"),
            [("the".to_owned(), true)]
        );
        assert_eq!(parse_words("a").expect("parse"), [("a".to_owned(), false)]);
        assert!(parse_words("  ()*:~^\"  ").expect("parse").is_empty());
    }

    #[test]
    fn interface_keys_are_full_versionless_and_package() {
        assert_eq!(
            interface_keys("wasi:http/outgoing-handler@0.2.6"),
            [
                "wasi:http/outgoing-handler@0.2.6",
                "wasi:http/outgoing-handler",
                "wasi:http"
            ]
        );
        assert_eq!(interface_keys("wasi:http"), ["wasi:http"]);
    }

    #[test]
    fn listing_ids_are_author_slash_name() {
        for ok in ["acme/summarize", "a/b", "Acme.Corp/sum_1-x"] {
            check_listing_id(ok).expect(ok);
        }
        for bad in [
            "acme",
            "/x",
            "x/",
            "a/b/c",
            "a b/c",
            "a/\u{7}",
            &format!("{}/x", "a".repeat(65)),
        ] {
            assert!(check_listing_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("größe", 3), "gr");
        assert_eq!(cut("abc", 10), "abc");
    }
}
