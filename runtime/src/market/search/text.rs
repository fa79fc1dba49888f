//! Words and the vocabulary: how text becomes terms, and how one query word
//! finds the terms it matches (exactly, as a prefix, or within a few edits).
//!
//! A word is a maximal run of Unicode letters and digits, lowercased;
//! everything else separates words, so no character has a meaning of its own
//! (there is no query syntax to abuse). Words longer than [`MAX_WORD_CHARS`]
//! are not indexed.

use std::collections::HashMap;

/// The longest word that is indexed or accepted in a query, in characters.
pub const MAX_WORD_CHARS: usize = 64;

/// The most vocabulary terms one query word expands to (typo and prefix
/// matches together); the best are kept (fewest edits, then most listings).
pub const MAX_EXPANSIONS: usize = 64;

/// Words dropped from a query of several words (they match nearly every
/// README and would only make "all words must match" fail on short docs).
const STOP_WORDS: [&str; 16] = [
    "a", "an", "and", "are", "as", "at", "by", "for", "from", "in", "is", "of", "on", "or", "the",
    "to",
];

/// Whether `word` (lowercased) is a stop word.
pub(crate) fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.contains(&word)
}

/// The raw words of `text` (not lowercased), in order. Allocates nothing.
pub(crate) fn raw_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Puts the indexed form of the raw word `raw` into `out` (lowercased);
/// `false` if it is too long to be indexed. Allocates only for a
/// non-ASCII word.
pub(crate) fn lowercase_into(raw: &str, out: &mut String) -> bool {
    out.clear();
    if raw.is_ascii() {
        if raw.len() > MAX_WORD_CHARS {
            return false;
        }
        out.push_str(raw);
        out.make_ascii_lowercase();
    } else {
        if raw.chars().count() > MAX_WORD_CHARS {
            return false;
        }
        out.push_str(&raw.to_lowercase());
    }
    true
}

/// The lowercased words of `text` that are short enough to index: what
/// the indexer counts, one string per word.
#[cfg(test)]
pub(crate) fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    raw_words(text).filter_map(|raw| {
        let mut word = String::new();
        if lowercase_into(raw, &mut word) {
            Some(word)
        } else {
            None
        }
    })
}

/// How many edits a query word of `chars` characters tolerates: none up to
/// 3 characters, one from 4 to 7, two from 8 on. An edit is an insertion, a
/// deletion, a substitution or a swap of two neighbours.
pub fn max_edits(chars: usize) -> u8 {
    match chars {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    }
}

/// A term id: an index into [`Vocab`]'s terms.
pub(crate) type TermId = u32;

/// How a vocabulary term matched a query word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum MatchKind {
    /// The same word.
    Exact,
    /// The query word is a strict prefix of the term.
    Prefix,
    /// Within this many edits (1 or 2).
    Edits(u8),
}

impl MatchKind {
    /// The factor a term's text score is multiplied by for this kind of
    /// match: exact 1, prefix 0.75, one edit 0.6, two edits 0.4.
    pub(crate) fn weight(self) -> f32 {
        match self {
            Self::Exact => 1.0,
            Self::Prefix => 0.75,
            Self::Edits(1) => 0.6,
            Self::Edits(_) => 0.4,
        }
    }
}

/// Every term ever indexed, with a sorted order for prefix and typo walks.
/// Terms are never removed until a rebuild (a term no live listing uses has
/// no postings and is skipped).
#[derive(Debug, Default)]
pub(crate) struct Vocab {
    texts: Vec<Box<str>>,
    ids: HashMap<Box<str>, TermId>,
    /// Term ids in byte order of their text (= code point order).
    sorted: Vec<TermId>,
    /// Ids added since the last [`Vocab::settle`], not yet in `sorted`.
    pending: Vec<TermId>,
}

impl Vocab {
    /// The id of `term`, adding it if new. Call [`Vocab::settle`] after a
    /// batch of additions, before matching.
    pub(crate) fn intern(&mut self, term: &str) -> TermId {
        if let Some(&id) = self.ids.get(term) {
            return id;
        }
        let id = TermId::try_from(self.texts.len()).unwrap_or(TermId::MAX);
        let text: Box<str> = term.into();
        self.texts.push(text.clone());
        self.ids.insert(text, id);
        self.pending.push(id);
        id
    }

    /// The id of `term` if it was ever indexed.
    pub(crate) fn get(&self, term: &str) -> Option<TermId> {
        self.ids.get(term).copied()
    }

    /// The text of a term.
    pub(crate) fn text(&self, id: TermId) -> &str {
        &self.texts[id as usize]
    }

    /// How many terms there are.
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    /// Merges the terms added since the last call into the sorted order:
    /// sorts the new ones, then one linear merge.
    pub(crate) fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let texts = &self.texts;
        let mut new = std::mem::take(&mut self.pending);
        new.sort_unstable_by(|a, b| texts[*a as usize].cmp(&texts[*b as usize]));
        let old = std::mem::take(&mut self.sorted);
        let mut merged = Vec::with_capacity(old.len() + new.len());
        let (mut i, mut j) = (0, 0);
        while i < old.len() && j < new.len() {
            if texts[old[i] as usize] <= texts[new[j] as usize] {
                merged.push(old[i]);
                i += 1;
            } else {
                merged.push(new[j]);
                j += 1;
            }
        }
        merged.extend_from_slice(&old[i..]);
        merged.extend_from_slice(&new[j..]);
        self.sorted = merged;
    }

    /// The terms `word` matches, with how: itself, the terms it is a prefix
    /// of (if `prefix`), and the terms within `max_edits` edits. Each term
    /// appears once with its best match. Does not allocate per term visited;
    /// cost grows with the terms sharing a live prefix with `word`, not with
    /// the whole vocabulary (a dead prefix skips its whole range).
    pub(crate) fn matches(
        &self,
        word: &str,
        prefix: bool,
        max_edits: u8,
    ) -> Vec<(TermId, MatchKind)> {
        let mut out: HashMap<TermId, MatchKind> = HashMap::new();
        let mut note = |id: TermId, kind: MatchKind| {
            out.entry(id)
                .and_modify(|k| *k = (*k).min(kind))
                .or_insert(kind);
        };
        if let Some(id) = self.get(word) {
            note(id, MatchKind::Exact);
        }
        if prefix {
            let start = self.sorted.partition_point(|&id| self.text(id) < word);
            for &id in &self.sorted[start..] {
                let text = self.text(id);
                if !text.starts_with(word) {
                    break;
                }
                if text.len() > word.len() {
                    note(id, MatchKind::Prefix);
                }
            }
        }
        if max_edits > 0 {
            self.within_edits(word, max_edits, &mut |id, d| {
                note(
                    id,
                    if d == 0 {
                        MatchKind::Exact
                    } else {
                        MatchKind::Edits(d)
                    },
                );
            });
        }
        out.into_iter().collect()
    }

    /// Calls `found(id, distance)` for every term within `k` edits of
    /// `word` (optimal string alignment distance: insert, delete,
    /// substitute, swap neighbours). Walks the sorted terms keeping one DP
    /// row per character of the current term, reusing the rows of the
    /// prefix it shares with the previous term; when a row's minimum
    /// exceeds `k`, no term with that prefix can match, and the walk jumps
    /// past all of them by binary search.
    fn within_edits(&self, word: &str, k: u8, found: &mut dyn FnMut(TermId, u8)) {
        let query: Vec<char> = word.chars().collect();
        let m = query.len();
        let width = m + 1;
        // rows[i * width + j]: distance between the term's first i chars and
        // the query's first j chars. Row 0 is 0..=m.
        let max_depth = m + k as usize + 1;
        let mut rows = vec![0u8; (max_depth + 1) * width];
        for (j, cell) in rows.iter_mut().take(width).enumerate() {
            *cell = u8::try_from(j).unwrap_or(u8::MAX);
        }
        let mut chars: Vec<char> = Vec::with_capacity(MAX_WORD_CHARS);
        let mut valid = 0usize; // rows 0..=valid hold the prefix chars[..valid]
        let mut pos = 0usize;
        while pos < self.sorted.len() {
            let id = self.sorted[pos];
            let text = self.text(id);
            // Reuse the rows of the prefix shared with the previous term.
            let mut common = 0;
            for (a, b) in chars.iter().zip(text.chars()) {
                if *a != b {
                    break;
                }
                common += 1;
            }
            let common = common.min(valid);
            chars.truncate(common);
            chars.extend(text.chars().skip(common));
            valid = common;
            let mut dead_at = None;
            for i in (common + 1)..=chars.len() {
                if i > max_depth {
                    dead_at = Some(i);
                    break;
                }
                let c = chars[i - 1];
                let (before, current) = rows.split_at_mut(i * width);
                let prev = &before[(i - 1) * width..];
                let prev2 = if i >= 2 {
                    Some(&before[(i - 2) * width..(i - 1) * width])
                } else {
                    None
                };
                let row = &mut current[..width];
                row[0] = u8::try_from(i).unwrap_or(u8::MAX);
                let mut min = row[0];
                for j in 1..=m {
                    let cost = u8::from(query[j - 1] != c);
                    let mut d = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
                    if let Some(p2) = prev2
                        && j >= 2
                        && c == query[j - 2]
                        && chars[i - 2] == query[j - 1]
                    {
                        d = d.min(p2[j - 2] + 1);
                    }
                    let d = d.min(k + 1); // saturate: only ≤ k matters
                    row[j] = d;
                    min = min.min(d);
                }
                valid = i;
                if min > k {
                    dead_at = Some(i);
                    break;
                }
            }
            match dead_at {
                None => {
                    let d = rows[chars.len() * width + m];
                    if d <= k {
                        found(id, d);
                    }
                    pos += 1;
                }
                Some(i) => {
                    // No term starting with chars[..i] matches: skip them.
                    let dead: String = chars[..i].iter().collect();
                    let skip = self.sorted[pos..]
                        .partition_point(|&t| self.text(t).starts_with(dead.as_str()));
                    pos += skip.max(1);
                    valid = i - 1;
                    chars.truncate(i - 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(terms: &[&str]) -> Vocab {
        let mut v = Vocab::default();
        for t in terms {
            v.intern(t);
        }
        v.settle();
        v
    }

    fn osa(a: &str, b: &str) -> usize {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = (d[i - 1][j] + 1)
                    .min(d[i][j - 1] + 1)
                    .min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
                }
            }
        }
        d[a.len()][b.len()]
    }

    #[test]
    fn words_are_lowercased_runs_of_letters_and_digits() {
        let w: Vec<String> =
            words("Summarize-PDF: wasi:http/outgoing-handler@0.2.0, Größe").collect();
        assert_eq!(
            w,
            [
                "summarize",
                "pdf",
                "wasi",
                "http",
                "outgoing",
                "handler",
                "0",
                "2",
                "0",
                "größe"
            ]
        );
        let long = "x".repeat(MAX_WORD_CHARS + 1);
        assert_eq!(words(&long).count(), 0);
    }

    #[test]
    fn edit_walk_finds_exactly_the_terms_a_brute_force_finds() {
        let terms = [
            "summarize",
            "summary",
            "summarise",
            "sumarize",
            "summarizer",
            "smmarize",
            "usmmarize",
            "translate",
            "translator",
            "transform",
            "pdf",
            "pdfs",
            "http",
            "https",
            "llm",
            "lmm",
            "calculator",
            "calculate",
            "calcuator",
            "tokenize",
            "tokenizer",
            "größe",
            "grosse",
            "a",
            "ab",
            "abc",
            "summ",
            "sum",
        ];
        let v = vocab(&terms);
        for word in [
            "summarize",
            "sumarize",
            "translat",
            "calculator",
            "pdf",
            "http",
            "größe",
            "lmm",
            "x",
        ] {
            for k in 1..=2u8 {
                let mut got: Vec<(String, u8)> = Vec::new();
                v.within_edits(word, k, &mut |id, d| got.push((v.text(id).to_owned(), d)));
                got.sort();
                let mut want: Vec<(String, u8)> = terms
                    .iter()
                    .filter_map(|t| {
                        let d = osa(t, word);
                        (d <= k as usize).then(|| ((*t).to_owned(), d as u8))
                    })
                    .collect();
                want.sort();
                assert_eq!(got, want, "word {word}, k {k}");
            }
        }
    }

    #[test]
    fn matches_mark_exact_prefix_and_typo() {
        let v = vocab(&["summarize", "summary", "sum", "translate"]);
        let mut m = v.matches("summ", true, max_edits(4));
        m.sort();
        let named: Vec<(&str, MatchKind)> = m.iter().map(|(id, k)| (v.text(*id), *k)).collect();
        assert!(named.contains(&("summarize", MatchKind::Prefix)));
        assert!(named.contains(&("summary", MatchKind::Prefix)));
        assert!(named.contains(&("sum", MatchKind::Edits(1))));
        let m = v.matches("translaet", false, max_edits(9));
        assert_eq!(m.len(), 1);
        assert_eq!(v.text(m[0].0), "translate");
        assert_eq!(m[0].1, MatchKind::Edits(1));
    }

    #[test]
    fn settle_keeps_the_order_across_batches() {
        let mut v = vocab(&["m", "c", "x"]);
        for t in ["a", "z", "d"] {
            v.intern(t);
        }
        v.settle();
        let order: Vec<&str> = v.sorted.iter().map(|id| v.text(*id)).collect();
        assert_eq!(order, ["a", "c", "d", "m", "x", "z"]);
    }
}
