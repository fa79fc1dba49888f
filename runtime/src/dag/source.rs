//! Spec source text (YAML 1.2, or JSON — JSON is YAML) → a
//! [`serde_json::Value`] plus the line and column of every value.
//!
//! One parser (saphyr's span-marked loader) handles both formats. The value
//! is plain JSON: mappings with string keys, integers, finite floats, bools,
//! null, strings. Aliases are resolved (saphyr bounds alias expansion at
//! 100,000 nodes); tags other than the core schema's (`!!str`, `!!int`, …)
//! are refused on collections and ignored on scalars; duplicate keys and
//! non-string keys are errors with their position.
//!
//! Hostile input is bounded before it reaches the parser, whose descent is
//! recursive: at most [`MAX_BYTES`] of text, and a cheap line scan refuses
//! text whose block structure could nest past a few hundred levels (saphyr
//! itself caps flow nesting at 255). The exact limit, [`MAX_DEPTH`] nested
//! collections, is checked on the parsed tree.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

/// Largest accepted source text, in bytes (4 MiB).
pub const MAX_BYTES: usize = 4 << 20;

/// Deepest accepted nesting of mappings and sequences (the root collection
/// is level 1), as in `serde_json`'s default recursion limit.
pub const MAX_DEPTH: usize = 128;

/// Most distinct indentation columns the pre-parse scan accepts: a bound on
/// the depth of the parser's recursion (block nesting ≤ 2 × this + 255 flow
/// levels), well above what [`MAX_DEPTH`] levels need.
const MAX_INDENT_COLUMNS: usize = 256;

/// A place in the source text: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl Position {
    fn from_marker(marker: &saphyr::Marker) -> Self {
        Self {
            line: saturate(marker.line()),
            column: saturate(marker.col().saturating_add(1)),
        }
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Where each value of a loaded document starts, keyed by JSON pointer
/// (RFC 6901: `""` is the root, `/nodes/0/id`, `~0` for `~`, `~1` for `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl Positions {
    /// The position of the value at `pointer`, or — if there is none — of
    /// the value at its deepest existing prefix (so an error about a missing
    /// field points at the object that lacks it). `None` only for an empty
    /// map (a value that did not come from text). Does not allocate.
    pub fn get(&self, pointer: &str) -> Option<Position> {
        let mut prefix = pointer;
        loop {
            if let Some(position) = self.values.get(prefix) {
                return Some(*position);
            }
            match prefix.rfind('/') {
                Some(cut) => prefix = &prefix[..cut],
                None => return None,
            }
        }
    }

    /// The position of the key of the object member at `pointer` (exact
    /// pointers only; `None` for array elements and the root).
    pub fn key(&self, pointer: &str) -> Option<Position> {
        self.keys.get(pointer).copied()
    }

    /// How many values have a position.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no value has a position.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Why source text is not a JSON-like document. The position (if any) is
/// not part of the message: see [`SourceError::position`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// More than [`MAX_BYTES`] of text.
    #[error("the document is {size} bytes; at most {limit} bytes (4 MiB) are accepted")]
    TooLarge {
        /// Size of the text in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Nested deeper than [`MAX_DEPTH`] (or indented in too many steps to
    /// be parsed safely).
    #[error("the document nests deeper than {limit} levels of mappings and sequences")]
    TooDeep {
        /// Where the nesting crossed the limit.
        position: Option<Position>,
        /// The limit.
        limit: usize,
    },
    /// Not well-formed YAML (or JSON).
    #[error("syntax error: {message}")]
    Syntax {
        /// Where the parser stopped.
        position: Position,
        /// What the parser found.
        message: String,
    },
    /// A mapping key that is not a string (JSON objects have string keys).
    #[error("mapping keys must be strings; found {found} (quote it: \"…\")")]
    NonStringKey {
        /// Where the key is.
        position: Position,
        /// The key's kind and value, e.g. "integer `1`".
        found: String,
    },
    /// The same key twice in one mapping.
    #[error("duplicate key `{key}` in this mapping")]
    DuplicateKey {
        /// Where the second occurrence is.
        position: Position,
        /// The key.
        key: String,
    },
    /// A YAML construct with no JSON equivalent.
    #[error("{what} is not supported here")]
    Unsupported {
        /// Where it is.
        position: Position,
        /// What it is, e.g. "the YAML tag `!foo`".
        what: String,
    },
    /// No document, or more than one.
    #[error("expected exactly one document, found {found}")]
    DocumentCount {
        /// How many documents the text holds.
        found: usize,
    },
}

impl SourceError {
    /// Where in the text the problem is, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::TooDeep { position, .. } => *position,
            Self::Syntax { position, .. }
            | Self::NonStringKey { position, .. }
            | Self::DuplicateKey { position, .. }
            | Self::Unsupported { position, .. } => Some(*position),
            Self::TooLarge { .. } | Self::DocumentCount { .. } => None,
        }
    }
}

/// Parse YAML or JSON `text` into a JSON value and the position of each of
/// its values. Called once per spec file: allocates the value and one
/// pointer string per value; time and memory are linear in the text, which
/// is at most [`MAX_BYTES`].
///
/// # Errors
///
/// [`SourceError`] for oversized or too deeply nested text, syntax errors,
/// non-string or duplicate keys, unsupported tags, non-finite numbers, and
/// streams that do not hold exactly one document.
pub fn load(text: &str) -> Result<(Value, Positions), SourceError> {
    if text.len() > MAX_BYTES {
        return Err(SourceError::TooLarge {
            size: text.len(),
            limit: MAX_BYTES,
        });
    }
    check_indentation(text)?;
    let documents = MarkedYaml::load_from_str(text).map_err(|e| SourceError::Syntax {
        position: Position::from_marker(e.marker()),
        message: e.info().to_owned(),
    })?;
    let [document] = documents.as_slice() else {
        return Err(SourceError::DocumentCount {
            found: documents.len(),
        });
    };
    if matches!(document.data, YamlData::BadValue) {
        // An empty stream loads as one `BadValue` document.
        return Err(SourceError::DocumentCount { found: 0 });
    }
    let mut positions = Positions::default();
    let mut pointer = String::new();
    let value = convert(document, &mut pointer, 0, &mut positions)?;
    Ok((value, positions))
}

/// Refuse text whose block structure could make the parser recurse deeply.
///
/// The scanner's indentation stack holds strictly increasing columns, each
/// the column of a token that starts a line's content or follows a compact
/// `- `, `? ` or `: ` indicator at the start of a line (saphyr refuses block
/// collections anywhere else on a line). So the number of distinct such
/// columns bounds the block nesting. Over-counting (e.g. indented lines of a
/// block scalar) only makes the bound looser.
fn check_indentation(text: &str) -> Result<(), SourceError> {
    let mut columns = BTreeSet::new();
    // saphyr breaks lines at `\n` and `\r` alike; every prefix character
    // is ASCII, so byte offsets are character columns.
    for (index, line) in text.split(['\n', '\r']).enumerate() {
        let bytes = line.as_bytes();
        let blank = |at: usize| matches!(bytes.get(at), Some(b' ' | b'\t'));
        let mut at = 0;
        while blank(at) {
            at += 1;
        }
        columns.insert(at);
        while matches!(bytes.get(at), Some(b'-' | b'?' | b':'))
            && (at + 1 == bytes.len() || blank(at + 1) || bytes.get(at + 1) == Some(&0))
        {
            at += 1;
            while blank(at) {
                at += 1;
            }
            columns.insert(at);
        }
        if columns.len() > MAX_INDENT_COLUMNS {
            return Err(SourceError::TooDeep {
                position: Some(Position {
                    line: saturate(index + 1),
                    column: saturate(at + 1),
                }),
                limit: MAX_DEPTH,
            });
        }
    }
    Ok(())
}

/// Convert one node; `pointer` is its JSON pointer (restored on return);
/// `depth` is the number of enclosing collections. Recursion is bounded by
/// [`MAX_DEPTH`].
fn convert(
    node: &MarkedYaml<'_>,
    pointer: &mut String,
    depth: usize,
    positions: &mut Positions,
) -> Result<Value, SourceError> {
    let position = Position::from_marker(&node.span.start);
    positions.values.insert(pointer.clone(), position);
    let unsupported = |what: String| SourceError::Unsupported { position, what };
    match &node.data {
        YamlData::Value(scalar) => scalar_to_json(scalar).ok_or_else(|| {
            unsupported(format!(
                "the non-finite number `{}` (JSON has no NaN or infinity)",
                scalar_text(scalar)
            ))
        }),
        YamlData::Sequence(items) => {
            enter(depth, position)?;
            let mut array = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let len = pointer.len();
                push_index(pointer, index);
                array.push(convert(item, pointer, depth + 1, positions)?);
                pointer.truncate(len);
            }
            Ok(Value::Array(array))
        }
        YamlData::Mapping(mapping) => {
            enter(depth, position)?;
            let mut object = Map::new();
            for (key, value) in mapping {
                let key_position = Position::from_marker(&key.span.start);
                let name = match &key.data {
                    YamlData::Value(Scalar::String(name)) => name,
                    YamlData::Value(other) => {
                        return Err(SourceError::NonStringKey {
                            position: key_position,
                            found: format!("{} `{}`", scalar_kind(other), scalar_text(other)),
                        });
                    }
                    _ => {
                        return Err(SourceError::NonStringKey {
                            position: key_position,
                            found: "a mapping or sequence".to_owned(),
                        });
                    }
                };
                let len = pointer.len();
                push_field(pointer, name);
                positions.keys.insert(pointer.clone(), key_position);
                let converted = convert(value, pointer, depth + 1, positions)?;
                pointer.truncate(len);
                if object.insert(name.to_string(), converted).is_some() {
                    return Err(SourceError::DuplicateKey {
                        position: key_position,
                        key: name.to_string(),
                    });
                }
            }
            Ok(Value::Object(object))
        }
        YamlData::Tagged(tag, _) => Err(unsupported(format!("the YAML tag `{tag}`"))),
        YamlData::Alias(_) => Err(unsupported("an unresolved alias".to_owned())),
        YamlData::Representation(text, _, _) => {
            Err(unsupported(format!("the unparsed scalar `{text}`")))
        }
        YamlData::BadValue => Err(unsupported(
            "a value that does not match its tag (or an unknown alias)".to_owned(),
        )),
    }
}

fn enter(depth: usize, position: Position) -> Result<(), SourceError> {
    if depth >= MAX_DEPTH {
        Err(SourceError::TooDeep {
            position: Some(position),
            limit: MAX_DEPTH,
        })
    } else {
        Ok(())
    }
}

fn scalar_to_json(scalar: &Scalar<'_>) -> Option<Value> {
    Some(match scalar {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => Value::Number(Number::from_f64(f.into_inner())?),
        Scalar::String(s) => Value::String(s.to_string()),
    })
}

fn scalar_kind(scalar: &Scalar<'_>) -> &'static str {
    match scalar {
        Scalar::Null => "null",
        Scalar::Boolean(_) => "the boolean",
        Scalar::Integer(_) => "the integer",
        Scalar::FloatingPoint(_) => "the number",
        Scalar::String(_) => "the string",
    }
}

fn scalar_text(scalar: &Scalar<'_>) -> String {
    match scalar {
        Scalar::Null => "null".to_owned(),
        Scalar::Boolean(b) => b.to_string(),
        Scalar::Integer(i) => i.to_string(),
        Scalar::FloatingPoint(f) => f.into_inner().to_string(),
        Scalar::String(s) => s.to_string(),
    }
}

/// Append `/name` (escaped per RFC 6901) to a JSON pointer.
pub fn push_field(pointer: &mut String, name: &str) {
    pointer.push('/');
    for c in name.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// Append `/index` to a JSON pointer.
pub fn push_index(pointer: &mut String, index: usize) {
    use fmt::Write as _;
    let _ = write!(pointer, "/{index}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn at(line: u32, column: u32) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn yaml_becomes_json_with_positions() {
        let text = "\
version: 1
name: demo
nodes:
  - id: a
    input: { n: 3, f: 1.5, t: true, z: null, s: \"x\" }
  - id: b/c~d
empty: []
";
        let (value, positions) = load(text).unwrap();
        assert_eq!(
            value,
            json!({
                "version": 1, "name": "demo",
                "nodes": [
                    {"id": "a", "input": {"n": 3, "f": 1.5, "t": true, "z": null, "s": "x"}},
                    {"id": "b/c~d"}
                ],
                "empty": []
            })
        );
        assert_eq!(positions.get(""), at(1, 1));
        assert_eq!(positions.get("/version"), at(1, 10));
        assert_eq!(positions.get("/nodes/0/id"), at(4, 9));
        assert_eq!(positions.key("/nodes/0/id"), at(4, 5));
        assert_eq!(positions.get("/nodes/0/input/f"), at(5, 23));
        assert_eq!(positions.get("/nodes/1/id"), at(6, 9));
        // Missing → deepest existing prefix.
        assert_eq!(positions.get("/nodes/1/capsule"), positions.get("/nodes/1"));
        assert_eq!(positions.get("/nodes/7/x"), positions.get("/nodes"));
        assert_eq!(positions.get("/nodes/0/input/n"), at(5, 17));
    }

    #[test]
    fn pointers_are_escaped() {
        let (_, positions) = load("\"a/b\": {\"c~d\": 1}\n").unwrap();
        assert_eq!(positions.get("/a~1b/c~0d"), at(1, 16));
    }

    #[test]
    fn json_is_yaml() {
        let text = "{\n  \"a\": [1, 2.5, \"x\", false, null],\n  \"b\": {}\n}\n";
        let (value, positions) = load(text).unwrap();
        assert_eq!(value, json!({"a": [1, 2.5, "x", false, null], "b": {}}));
        assert_eq!(positions.get("/a/2"), at(2, 17));
    }

    #[test]
    fn aliases_are_resolved() {
        let (value, _) = load("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(value, json!({"base": {"x": 1}, "other": {"x": 1}}));
    }

    #[test]
    fn bad_documents_are_refused_with_positions() {
        let cases: &[(&str, Option<Position>, &str)] = &[
            ("a: 1\nb: [1, 2\n", None, "syntax error"),
            ("a: 1\na: 2\n", at(2, 1), "duplicate"),
            ("a: 1\n1: 2\n", at(2, 1), "keys must be strings"),
            ("a:\n  [1]: 2\n", at(2, 3), "keys must be strings"),
            ("a: !foo {x: 1}\n", None, "tag"),
            ("a: .nan\n", at(1, 4), "non-finite"),
            ("a: *nope\n", None, ""),
            ("", None, "found 0"),
            ("a: 1\n---\nb: 2\n", None, "found 2"),
        ];
        for (text, position, message) in cases {
            let error = load(text).unwrap_err();
            assert!(
                error.to_string().contains(message),
                "{text:?}: {error} does not contain {message:?}"
            );
            if position.is_some() {
                assert_eq!(error.position(), *position, "{text:?}: {error}");
            }
        }
        let error = load("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(error.position().is_some());
    }

    #[test]
    fn oversize_is_refused() {
        let text = "#".repeat(MAX_BYTES + 1);
        assert!(matches!(load(&text), Err(SourceError::TooLarge { .. })));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing() {
        // Each runs on the default 2 MiB test-thread stack.
        let compact = format!("{}x\n", "- ".repeat(1_000_000));
        let mut indented = String::new();
        for depth in 0..2000 {
            indented.push_str(&" ".repeat(depth));
            indented.push_str("a:\n");
        }
        let flow = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let json_deep = format!("{}1{}", "[".repeat(129), "]".repeat(129));
        let json_ok = format!("{}1{}", "[".repeat(128), "]".repeat(128));
        // The worst the pre-scan lets through: block nesting over 255
        // columns, alternating mappings and indentless sequences (508
        // levels), with 250 flow levels inside.
        let mut worst = String::new();
        for depth in 0..MAX_INDENT_COLUMNS - 2 {
            worst.push_str(&" ".repeat(depth));
            worst.push_str("a:\n");
            worst.push_str(&" ".repeat(depth));
            worst.push_str("- \n");
        }
        worst.pop();
        worst.push_str(&"[".repeat(250));
        worst.push_str(&"]".repeat(250));
        worst.push('\n');
        for text in [&compact, &indented, &flow, &json_deep] {
            let error = load(text).unwrap_err();
            assert!(
                matches!(
                    error,
                    SourceError::TooDeep { .. } | SourceError::Syntax { .. }
                ),
                "{error}"
            );
        }
        // The worst case went through the parser: the error is the tree
        // check's, at the collection 128 levels down, not the pre-scan's.
        // It fits in half the default stack of a spawned thread.
        let result = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || load(&worst))
            .unwrap()
            .join()
            .unwrap();
        match result {
            Err(SourceError::TooDeep {
                position: Some(position),
                ..
            }) => assert_eq!(position.line, 129, "{position}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(load(&json_deep), Err(SourceError::TooDeep { .. })));
        load(&json_ok).unwrap();
    }
}
