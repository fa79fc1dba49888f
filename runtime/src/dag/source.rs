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

use saphyr::{MarkedYaml, Scalar, YamlData, YamlLoader};
use saphyr_parser::{BufferedInput, Event, Parser, Span, SpannedEventReceiver};
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

/// The stack the parse runs on, whatever the caller's thread has. The
/// worst text the pre-scan lets through (block nesting over
/// [`MAX_INDENT_COLUMNS`] columns with 250 flow levels inside) takes under
/// 1 MiB of stack in an optimised build and 2–4 MiB unoptimised (the
/// suite's `ci` profile builds this crate at `opt-level = 0`); a tokio
/// blocking thread has 2 MiB. Reserved, not committed: only the pages the
/// parse touches are used.
const PARSE_STACK: usize = 16 << 20;

/// How much a document may hold once loaded, aliases expanded: the bound
/// on the memory one parse can take, whatever the text's size. Operators
/// set it with `dag.max_spec_nodes` and `dag.max_spec_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most values (scalars, mappings, sequences, keys) in all.
    pub max_nodes: usize,
    /// Most bytes of strings, keys and the JSON pointers the loader keeps
    /// for positions, in all.
    pub max_bytes: usize,
}

impl Default for Budget {
    /// 200,000 values and 16 MiB: a 20,000-node spec uses about half.
    fn default() -> Self {
        Self {
            max_nodes: crate::config::dag::DEFAULT_MAX_SPEC_NODES,
            max_bytes: crate::config::dag::DEFAULT_MAX_SPEC_BYTES,
        }
    }
}

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
    /// The loaded document would hold more values than the budget allows
    /// (YAML aliases count once per use).
    #[error(
        "the document expands to more than {limit} values (aliases count once per use); \
         the limit is dag.max_spec_nodes"
    )]
    TooManyValues {
        /// Where the expansion crossed the limit.
        position: Position,
        /// The limit.
        limit: usize,
    },
    /// The loaded document would hold more bytes than the budget allows.
    #[error(
        "the document expands to more than {limit} bytes of strings and keys (aliases count \
         once per use); the limit is dag.max_spec_bytes"
    )]
    TooManyBytes {
        /// Where the expansion crossed the limit.
        position: Position,
        /// The limit.
        limit: usize,
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
            | Self::Unsupported { position, .. }
            | Self::TooManyValues { position, .. }
            | Self::TooManyBytes { position, .. } => Some(*position),
            Self::TooLarge { .. } | Self::DocumentCount { .. } => None,
        }
    }
}

/// [`load_within`] with the default [`Budget`].
///
/// # Errors
///
/// As [`load_within`].
pub fn load(text: &str) -> Result<(Value, Positions), SourceError> {
    load_within(text, &Budget::default())
}

/// Parse YAML or JSON `text` into a JSON value and the position of each of
/// its values. Called once per spec: allocates the value and one pointer
/// string per value; time is linear in the text (at most [`MAX_BYTES`]),
/// memory is bounded by `budget` however the text uses aliases. The parse
/// runs on a thread of its own (`PARSE_STACK`) while this one waits, for
/// up to a few hundred ms: call it off the async workers.
///
/// # Errors
///
/// [`SourceError`] for oversized or too deeply nested text, a document
/// that expands past `budget`, syntax errors, non-string or duplicate
/// keys, unsupported tags, non-finite numbers, and streams that do not
/// hold exactly one document.
pub fn load_within(text: &str, budget: &Budget) -> Result<(Value, Positions), SourceError> {
    if text.len() > MAX_BYTES {
        return Err(SourceError::TooLarge {
            size: text.len(),
            limit: MAX_BYTES,
        });
    }
    check_indentation(text)?;
    // The parser's descent is recursive: give it a stack of its own, so
    // that the caller's (a blocking-pool thread, a test thread) does not
    // decide whether hostile nesting overflows. If no thread can be
    // started, parse on this one.
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("soma-dag-parse".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, || parse(text, budget))
        {
            Ok(parsing) => parsing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => {
                tracing::warn!("dag: no thread for the parse ({e}); parsing on the caller's stack");
                parse(text, budget)
            }
        }
    })
}

/// The parse proper of [`load_within`], after its cheap checks.
fn parse(text: &str, budget: &Budget) -> Result<(Value, Positions), SourceError> {
    let documents = load_documents(text, budget)?;
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

/// Load every document of `text` with saphyr's loader, counting what the
/// loader would build before it builds it (see [`Metered`]).
fn load_documents<'i>(text: &'i str, budget: &Budget) -> Result<Vec<MarkedYaml<'i>>, SourceError> {
    let syntax = |e: saphyr::ScanError| SourceError::Syntax {
        position: Position::from_marker(e.marker()),
        message: e.info().to_owned(),
    };
    let mut loader = YamlLoader::default();
    loader.alias_limit(budget.max_nodes);
    let mut metered = Metered {
        loader,
        budget: *budget,
        used: Tally::default(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        exceeded: None,
    };
    let mut parser = Parser::new(BufferedInput::new(text.chars()));
    let parsed = parser.load(&mut metered, true);
    if let Some(e) = metered.exceeded {
        return Err(e);
    }
    parsed.map_err(syntax)?;
    if let Some(e) = metered.loader.error() {
        return Err(syntax(e.clone()));
    }
    Ok(metered.loader.into_documents())
}

/// Values and bytes counted by [`Metered`].
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    nodes: usize,
    bytes: usize,
}

/// An open collection, as [`Metered`] follows it.
#[derive(Debug)]
struct Open {
    /// Its anchor id (0: none).
    anchor: usize,
    /// The tally before it started.
    before: Tally,
    /// The length of its JSON pointer.
    pointer: usize,
    /// A mapping (else a sequence).
    mapping: bool,
    /// In a mapping: the next node is a key.
    key_next: bool,
    /// In a mapping: the length of the current key.
    key_len: usize,
    /// In a sequence: the next index.
    index: usize,
}

/// Forwards parser events to saphyr's loader while counting the values,
/// string bytes and pointer bytes the loaded document (and its positions)
/// will hold. An alias counts its anchor's whole subtree again; once the
/// count passes the budget, no further event reaches the loader, so an
/// alias bomb is refused before it is expanded.
struct Metered<'i> {
    loader: YamlLoader<'i, MarkedYaml<'i>>,
    budget: Budget,
    used: Tally,
    stack: Vec<Open>,
    /// Anchor id → its subtree's values and bytes, pointers relative to
    /// the anchor's own.
    anchors: HashMap<usize, Tally>,
    exceeded: Option<SourceError>,
}

impl Metered<'_> {
    /// The pointer length of the next node in the innermost collection
    /// (`scalar_len`: the node's length if it is a scalar), advancing it.
    fn slot(&mut self, scalar_len: usize) -> usize {
        let Some(open) = self.stack.last_mut() else {
            return 0;
        };
        if open.mapping {
            if open.key_next {
                open.key_next = false;
                open.key_len = scalar_len;
                // The key's position is kept under the member's pointer.
                open.pointer.saturating_add(1).saturating_add(scalar_len)
            } else {
                open.key_next = true;
                open.pointer.saturating_add(1).saturating_add(open.key_len)
            }
        } else {
            open.index += 1;
            open.pointer
                .saturating_add(1)
                .saturating_add(digits(open.index))
        }
    }

    fn add(&mut self, nodes: usize, bytes: usize, span: &Span) {
        self.used.nodes = self.used.nodes.saturating_add(nodes);
        self.used.bytes = self.used.bytes.saturating_add(bytes);
        let position = Position::from_marker(&span.start);
        if self.used.nodes > self.budget.max_nodes {
            self.exceeded = Some(SourceError::TooManyValues {
                position,
                limit: self.budget.max_nodes,
            });
        } else if self.used.bytes > self.budget.max_bytes {
            self.exceeded = Some(SourceError::TooManyBytes {
                position,
                limit: self.budget.max_bytes,
            });
        }
    }

    fn open(&mut self, anchor: usize, mapping: bool, span: &Span) {
        let pointer = self.slot(0);
        let before = self.used;
        self.add(1, pointer, span);
        self.stack.push(Open {
            anchor,
            before,
            pointer,
            mapping,
            key_next: true,
            key_len: 0,
            index: 0,
        });
    }

    fn close(&mut self) {
        if let Some(open) = self.stack.pop()
            && open.anchor > 0
        {
            let nodes = self.used.nodes.saturating_sub(open.before.nodes);
            let bytes = self
                .used
                .bytes
                .saturating_sub(open.before.bytes)
                .saturating_sub(nodes.saturating_mul(open.pointer));
            self.anchors.insert(open.anchor, Tally { nodes, bytes });
        }
    }
}

fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

impl<'i> SpannedEventReceiver<'i> for Metered<'i> {
    fn on_event(&mut self, event: Event<'i>, span: Span) {
        if self.exceeded.is_some() {
            return;
        }
        match &event {
            Event::Scalar(text, _, anchor, _) => {
                let pointer = self.slot(text.len());
                self.add(1, text.len().saturating_add(pointer), &span);
                if *anchor > 0 {
                    self.anchors.insert(
                        *anchor,
                        Tally {
                            nodes: 1,
                            bytes: text.len(),
                        },
                    );
                }
            }
            Event::Alias(anchor) => {
                let pointer = self.slot(0);
                let anchored = self
                    .anchors
                    .get(anchor)
                    .copied()
                    .unwrap_or(Tally { nodes: 1, bytes: 0 });
                let bytes = anchored
                    .bytes
                    .saturating_add(anchored.nodes.saturating_mul(pointer));
                self.add(anchored.nodes, bytes, &span);
            }
            Event::SequenceStart(anchor, _) => self.open(*anchor, false, &span),
            Event::MappingStart(anchor, _) => self.open(*anchor, true, &span),
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            _ => {}
        }
        if self.exceeded.is_none() {
            SpannedEventReceiver::on_event(&mut self.loader, event, span);
        }
    }
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
    fn alias_bombs_are_refused_before_they_expand() {
        // Nine levels of ten aliases each: 10^9 copies of a 1 KiB string.
        let mut text = format!("a0: &a0 \"{}\"\n", "x".repeat(1024));
        for k in 1..10 {
            let uses = vec![format!("*a{}", k - 1); 10].join(", ");
            text.push_str(&format!("a{k}: &a{k} [{uses}]\n"));
        }
        assert!(text.len() < 2000);
        let start = std::time::Instant::now();
        let error = load(&text).unwrap_err();
        assert!(
            matches!(
                error,
                SourceError::TooManyValues { .. } | SourceError::TooManyBytes { .. }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("dag.max_spec_"), "{error}");
        assert!(error.position().is_some());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn aliased_strings_and_long_keys_count_their_bytes() {
        let budget = Budget {
            max_nodes: 1_000_000,
            max_bytes: 1 << 20,
        };
        // 200 uses of a 10 KiB string: few values, 2 MiB of bytes.
        let uses = vec!["*s"; 200].join(", ");
        let text = format!("s: &s \"{}\"\nall: [{uses}]\n", "y".repeat(10 << 10));
        assert!(matches!(
            load_within(&text, &budget),
            Err(SourceError::TooManyBytes { .. })
        ));
        // A 10 KiB key (explicit: implicit keys stop at 1024 characters)
        // over 200 values: each value's pointer holds the key.
        let items = vec!["0"; 200].join(", ");
        let text = format!("? \"{}\"\n: [{items}]\n", "k".repeat(10 << 10));
        assert!(matches!(
            load_within(&text, &budget),
            Err(SourceError::TooManyBytes { .. })
        ));
        // Within the budget, aliases still load.
        let (value, _) = load_within("b: &b {x: [1, 2]}\nc: [*b, *b]\n", &budget).unwrap();
        assert_eq!(value["c"][1], json!({"x": [1, 2]}));
        let tight = Budget {
            max_nodes: 8,
            max_bytes: 1 << 20,
        };
        assert!(matches!(
            load_within("b: &b {x: [1, 2]}\nc: [*b, *b]\n", &tight),
            Err(SourceError::TooManyValues { limit: 8, .. })
        ));
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
        // The parse runs on a stack of its own (`PARSE_STACK`): a caller
        // with a 256 KiB stack is fine.
        let result = std::thread::Builder::new()
            .stack_size(256 << 10)
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
