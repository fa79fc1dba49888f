//! `word-count`: counts the words, lines, chars and bytes of a text and lists
//! its most frequent words.
//!
//! Input `{"text": "..."}`, output
//! `{"words": N, "lines": N, "chars": N, "bytes": N, "top": [{"word": "the", "count": 3}, ...]}`.
//! See [`count`] for the exact rules. Error code: `bad-input`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use soma_sdk::{Capsule, Error, Info, json};

/// How many of the most frequent words [`count`] reports.
pub const TOP_N: usize = 5;

const INPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "text": { "type": "string", "description": "The text to count" }
  },
  "required": ["text"]
}"#;

const OUTPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "words": { "type": "integer", "minimum": 0, "description": "Runs of letters and digits (inner apostrophes kept)" },
    "lines": { "type": "integer", "minimum": 0, "description": "Newlines, plus one for a final unterminated line" },
    "chars": { "type": "integer", "minimum": 0, "description": "Unicode scalar values" },
    "bytes": { "type": "integer", "minimum": 0, "description": "UTF-8 bytes" },
    "top": {
      "type": "array",
      "maxItems": 5,
      "description": "Most frequent lowercase words, ties broken alphabetically",
      "items": {
        "type": "object",
        "properties": {
          "word": { "type": "string" },
          "count": { "type": "integer", "minimum": 1 }
        },
        "required": ["word", "count"]
      }
    }
  },
  "required": ["words", "lines", "chars", "bytes", "top"]
}"#;

/// The counts of one text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Number of words.
    pub words: usize,
    /// Number of lines.
    pub lines: usize,
    /// Number of Unicode scalar values.
    pub chars: usize,
    /// Number of UTF-8 bytes.
    pub bytes: usize,
    /// The [`TOP_N`] most frequent words, most frequent first.
    pub top: Vec<WordCount>,
}

/// One word and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WordCount {
    /// The lowercased word.
    pub word: String,
    /// Its number of occurrences.
    pub count: usize,
}

/// Count `text`.
///
/// - A word is a maximal run of alphanumeric chars (Unicode-aware); an
///   apostrophe (`'` or `’`) between two alphanumerics belongs to the word,
///   so `don't` is one word. Words are lowercased and `’` becomes `'`.
/// - Lines are newlines, plus one if the text does not end with a newline
///   (so `""` has 0 lines and `"a"` has 1).
/// - `top` holds the [`TOP_N`] most frequent words, ties broken alphabetically.
pub fn count(text: &str) -> Counts {
    let mut freq: HashMap<String, usize> = HashMap::new();
    let mut words = 0;
    let mut word = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if is_apostrophe(c)
            && !word.is_empty()
            && chars.peek().is_some_and(|n| n.is_alphanumeric())
        {
            word.push('\'');
        } else if !word.is_empty() {
            words += 1;
            *freq.entry(std::mem::take(&mut word)).or_default() += 1;
        }
    }
    if !word.is_empty() {
        words += 1;
        *freq.entry(word).or_default() += 1;
    }

    let mut top: Vec<WordCount> = freq
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    top.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top.truncate(TOP_N);

    Counts {
        words,
        lines: text.matches('\n').count() + usize::from(!text.is_empty() && !text.ends_with('\n')),
        chars: text.chars().count(),
        bytes: text.len(),
        top,
    }
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}')
}

#[derive(Deserialize)]
struct Input {
    text: String,
}

struct WordCounter;

impl Capsule for WordCounter {
    fn info() -> Info {
        Info::worker("word-count", env!("CARGO_PKG_VERSION"))
            .description(
                "Counts words, lines, chars and bytes of a text and lists its most frequent words",
            )
            .input_schema(INPUT_SCHEMA)
            .output_schema(OUTPUT_SCHEMA)
    }

    fn run(input: &str) -> Result<String, Error> {
        let input: Input = json::parse(input)?;
        json::output(&count(&input.text))
    }
}

soma_sdk::capsule!(WordCounter);

#[cfg(test)]
mod tests {
    use super::*;

    fn top(text: &str) -> Vec<(String, usize)> {
        count(text)
            .top
            .into_iter()
            .map(|w| (w.word, w.count))
            .collect()
    }

    fn words(text: &str) -> Vec<String> {
        // With distinct words, `top` lists them all alphabetically.
        top(text).into_iter().map(|(w, _)| w).collect()
    }

    #[test]
    fn empty_text() {
        let c = count("");
        assert_eq!((c.words, c.lines, c.chars, c.bytes), (0, 0, 0, 0));
        assert!(c.top.is_empty());
        assert_eq!(count(" \t ").words, 0);
    }

    #[test]
    fn lines() {
        assert_eq!(count("a").lines, 1);
        assert_eq!(count("a\n").lines, 1);
        assert_eq!(count("a\nb").lines, 2);
        assert_eq!(count("a\r\nb\r\n").lines, 2);
        assert_eq!(count("\n\n").lines, 2);
        assert_eq!(count("\n\nx").lines, 3);
    }

    #[test]
    fn chars_and_bytes() {
        let c = count("héllo wörld 🦀");
        assert_eq!((c.chars, c.bytes), (13, 18));
    }

    #[test]
    fn word_boundaries() {
        assert_eq!(count("Hello, world! 42 times-over").words, 5);
        assert_eq!(words("a_b c-d"), ["a", "b", "c", "d"]);
        assert_eq!(words("x1 2y"), ["2y", "x1"]);
    }

    #[test]
    fn apostrophes_inside_words() {
        assert_eq!(words("Don't stop"), ["don't", "stop"]);
        assert_eq!(words("don’t"), ["don't"]);
        assert_eq!(
            words("'quoted' dogs' o''clock"),
            ["clock", "dogs", "o", "quoted"]
        );
        assert_eq!(count("rock 'n' roll").words, 3);
        assert_eq!(count("' '' '").words, 0);
    }

    #[test]
    fn unicode_words_are_lowercased() {
        assert_eq!(words("Straße STRASSE"), ["strasse", "straße"]);
        assert_eq!(top("Ünïcode ünïcode ÜNÏCODE"), [("ünïcode".to_owned(), 3)]);
        assert_eq!(words("日本語 テキスト"), ["テキスト", "日本語"]);
        assert_eq!(words("İ"), ["i\u{307}"]);
    }

    #[test]
    fn top_is_by_count_then_alphabetical() {
        let text = "the cat and the dog and THE bird, a fish; a cow";
        let expected = [("the", 3), ("a", 2), ("and", 2), ("bird", 1), ("cat", 1)];
        let expected: Vec<_> = expected.iter().map(|&(w, n)| (w.to_owned(), n)).collect();
        assert_eq!(top(text), expected);
        assert_eq!(count(text).words, 12);
    }

    #[test]
    fn run_outputs_json() {
        let out = <WordCounter as Capsule>::run(r#"{"text": "b a b\nc"}"#);
        let expected = r#"{"words":4,"lines":2,"chars":7,"bytes":7,"top":[{"word":"b","count":2},{"word":"a","count":1},{"word":"c","count":1}]}"#;
        assert_eq!(out, Ok(expected.to_owned()));
    }

    #[test]
    fn bad_input() {
        for input in ["hello", "{}", r#"{"text": 1}"#, ""] {
            let code = <WordCounter as Capsule>::run(input).map_err(|e| e.code);
            assert_eq!(code, Err("bad-input".to_owned()), "{input:?}");
        }
    }

    #[test]
    fn info_schemas_are_json() {
        let info = soma_sdk::CapsuleInfo::from(WordCounter::info());
        assert_eq!(info.name, "word-count");
        for schema in [&info.input_schema, &info.output_schema] {
            assert!(
                json::parse::<serde::de::IgnoredAny>(schema).is_ok(),
                "{schema}"
            );
        }
    }
}
