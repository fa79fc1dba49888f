//! The template language of node inputs, `for_each` and the run's output.
//!
//! Inside any JSON string, `{{ expr }}` (whitespace inside the braces
//! optional) is replaced by a value:
//!
//! ```text
//! expr    := root segment*
//! root    := "input" ("." NAME segment*)?     the run's (bound) input
//!          | "nodes." ID ".output"            a finished node's output
//!          | "item"                           the element (for_each nodes)
//!          | "index"                          its position, from 0 (no path)
//! segment := "." NAME | "[" DIGITS "]"        NAME, ID: [A-Za-z0-9_-]+
//! ```
//!
//! A string that is one whole expression (surrounding whitespace allowed)
//! becomes the referenced value with its JSON type; a string mixing text and
//! expressions interpolates them (strings verbatim, other values as compact
//! JSON). There is no escape for a literal `{{`: a string holding `{{` is
//! always a template. Object keys are never templated.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value};

use super::source::{push_field, push_index};

/// What a reference starts from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Root {
    /// `input`: the run's bound input object.
    Input,
    /// `nodes.ID.output`: the output of node ID.
    Node(String),
    /// `item`: the current element of a `for_each` fan-out.
    Item,
    /// `index`: the current element's position (a number, from 0).
    Index,
}

/// One step into a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// `.name`: an object's field.
    Field(String),
    /// `[n]`: an array's element.
    Index(usize),
}

/// A parsed `{{ expr }}`. Displays as written without the braces, e.g.
/// `nodes.x.output.a[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateRef {
    /// Where the path starts.
    pub root: Root,
    /// The steps from the root.
    pub path: Vec<Segment>,
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Input => f.write_str("input"),
            Self::Node(id) => write!(f, "nodes.{id}.output"),
            Self::Item => f.write_str("item"),
            Self::Index => f.write_str("index"),
        }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(name) => write!(f, ".{name}"),
            Self::Index(index) => write!(f, "[{index}]"),
        }
    }
}

impl fmt::Display for TemplateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root)?;
        self.path
            .iter()
            .try_for_each(|segment| write!(f, "{segment}"))
    }
}

/// A piece of a parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part<'a> {
    /// Literal text, verbatim.
    Text(&'a str),
    /// A `{{ expr }}`.
    Expr(TemplateRef),
}

/// A malformed template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {offset} of the string)")]
pub struct TemplateError {
    /// 0-based offset, in characters, of the problem within the string.
    pub offset: usize,
    /// What was found and what was expected.
    pub message: String,
}

/// Whether `text` holds a template at all (cheap: a substring search).
pub fn is_templated(text: &str) -> bool {
    text.contains("{{")
}

/// Split `text` into literal text and expressions. Allocates one `Vec`
/// (and the references' names); literal text is borrowed.
///
/// # Errors
///
/// [`TemplateError`] for an unclosed `{{` or an expression outside the
/// grammar, naming what was expected and where.
pub fn parse(text: &str) -> Result<Vec<Part<'_>>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = 0;
    while let Some(found) = text[rest..].find("{{") {
        let open = rest + found;
        if open > rest {
            parts.push(Part::Text(&text[rest..open]));
        }
        let (reference, end) = Cursor { text, at: open }.expression()?;
        parts.push(Part::Expr(reference));
        rest = end;
    }
    if rest < text.len() {
        parts.push(Part::Text(&text[rest..]));
    }
    Ok(parts)
}

/// The reference, if `text` is one whole `{{ expr }}` (surrounding
/// whitespace allowed); `None` if it holds no expression, or text besides
/// it, or several.
///
/// # Errors
///
/// [`TemplateError`] if `text` is not a valid template.
pub fn whole(text: &str) -> Result<Option<TemplateRef>, TemplateError> {
    let mut found = None;
    for part in parse(text)? {
        match part {
            Part::Text(t) if t.trim().is_empty() => {}
            Part::Expr(reference) if found.is_none() => found = Some(reference),
            _ => return Ok(None),
        }
    }
    Ok(found)
}

/// A byte cursor over one `{{ … }}`; `at` starts on the `{{`.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn error(&self, at: usize, message: impl Into<String>) -> TemplateError {
        TemplateError {
            offset: self.text[..at].chars().count(),
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A run of `[A-Za-z0-9_-]`, possibly empty.
    fn name(&mut self) -> &'a str {
        let text = self.text;
        let start = self.at;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            self.at += 1;
        }
        &text[start..self.at]
    }

    fn unexpected(&self, expected: &str) -> TemplateError {
        match self.text[self.at..].chars().next() {
            Some(c) => self.error(self.at, format!("unexpected `{c}`: expected {expected}")),
            None => self.error(self.at, format!("unexpected end: expected {expected}")),
        }
    }

    /// Parse `{{ expr }}`; returns the reference and the offset after `}}`.
    fn expression(mut self) -> Result<(TemplateRef, usize), TemplateError> {
        let open = self.at;
        if !self.text[open + 2..].contains("}}") {
            return Err(self.error(open, "unclosed `{{`: expected `}}` after the expression"));
        }
        self.at += 2;
        self.skip_space();
        let root_at = self.at;
        let root = match self.name() {
            "input" => Root::Input,
            "item" => Root::Item,
            "index" => Root::Index,
            "nodes" => {
                if self.peek() != Some(b'.') {
                    return Err(self.unexpected("`.ID.output` after `nodes`"));
                }
                self.at += 1;
                let id = self.name().to_owned();
                if id.is_empty() {
                    return Err(self.unexpected("a node id after `nodes.`"));
                }
                let output_at = self.at;
                if self.peek() != Some(b'.') || {
                    self.at += 1;
                    self.name() != "output"
                } {
                    return Err(
                        self.error(output_at, format!("expected `.output` after `nodes.{id}`"))
                    );
                }
                Root::Node(id)
            }
            "" => {
                return Err(self.unexpected(
                    "a reference: `input.NAME`, `nodes.ID.output`, `item` or `index`",
                ));
            }
            other => {
                return Err(self.error(
                    root_at,
                    format!(
                        "unknown reference `{other}`: expected `input.NAME`, \
                         `nodes.ID.output`, `item` or `index`"
                    ),
                ));
            }
        };
        let mut path = Vec::new();
        loop {
            match self.peek() {
                Some(b'.') => {
                    self.at += 1;
                    let name = self.name();
                    if name.is_empty() {
                        return Err(self.unexpected("a field name after `.`"));
                    }
                    path.push(Segment::Field(name.to_owned()));
                }
                Some(b'[') => {
                    let bracket = self.at;
                    if root == Root::Input && path.is_empty() {
                        return Err(self.error(bracket, "expected `.NAME` after `input`"));
                    }
                    self.at += 1;
                    let start = self.at;
                    while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                        self.at += 1;
                    }
                    let index = self.text[start..self.at].parse::<usize>().map_err(|_| {
                        self.error(start, "expected a non-negative integer index in `[…]`")
                    })?;
                    if self.peek() != Some(b']') {
                        return Err(self.unexpected("`]`"));
                    }
                    self.at += 1;
                    path.push(Segment::Index(index));
                }
                _ => break,
            }
            if root == Root::Index {
                return Err(self.error(root_at, "`index` is a number; it takes no path"));
            }
        }
        self.skip_space();
        if !self.text[self.at..].starts_with("}}") {
            return Err(self.unexpected("`.field`, `[index]` or `}}`"));
        }
        Ok((TemplateRef { root, path }, self.at + 2))
    }
}

/// Every string in `value` that holds a template (recursively; object keys
/// are not templated), with its JSON pointer relative to `value`, in
/// document order. Borrows the strings; allocates one pointer per string.
pub fn templated_strings(value: &Value) -> Vec<(String, &str)> {
    fn walk<'v>(value: &'v Value, pointer: &mut String, found: &mut Vec<(String, &'v str)>) {
        match value {
            Value::String(text) if is_templated(text) => found.push((pointer.clone(), text)),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let len = pointer.len();
                    push_index(pointer, index);
                    walk(item, pointer, found);
                    pointer.truncate(len);
                }
            }
            Value::Object(members) => {
                for (name, member) in members {
                    let len = pointer.len();
                    push_field(pointer, name);
                    walk(member, pointer, found);
                    pointer.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(value, &mut String::new(), &mut found);
    found
}

/// Every reference in every string of `value` (recursively; object keys are
/// not templated), each with the JSON pointer (relative to `value`) of the
/// string that holds it, in document order.
///
/// # Errors
///
/// The pointer of the first malformed template string, and its error.
pub fn references(value: &Value) -> Result<Vec<(String, TemplateRef)>, (String, TemplateError)> {
    let mut found = Vec::new();
    for (pointer, text) in templated_strings(value) {
        match parse(text) {
            Ok(parts) => found.extend(parts.into_iter().filter_map(|part| match part {
                Part::Expr(reference) => Some((pointer.clone(), reference)),
                Part::Text(_) => None,
            })),
            Err(error) => return Err((pointer, error)),
        }
    }
    Ok(found)
}

/// What a template is rendered against. Implemented by the scheduler.
pub trait Context {
    /// The run's bound input object.
    fn input(&self) -> &Value;
    /// The output of node `id`, if it has finished.
    fn node_output(&self, id: &str) -> Option<&Value>;
    /// The current `for_each` element; `None` outside a fan-out.
    fn item(&self) -> Option<&Value>;
    /// The current `for_each` element's position; `None` outside a fan-out.
    fn index(&self) -> Option<usize>;
    /// Most bytes one render may produce from references (strings
    /// interpolated, values copied, as compact JSON); past it the render
    /// fails with [`RenderError::limit`]. Default: [`DEFAULT_MAX_RENDERED_BYTES`].
    fn max_bytes(&self) -> usize {
        DEFAULT_MAX_RENDERED_BYTES
    }
}

/// The default of `dag.max_rendered_input_bytes`: 1 MiB, the default call
/// input cap (`limits.max_input_bytes`).
pub const DEFAULT_MAX_RENDERED_BYTES: usize = 1 << 20;

/// The compact-JSON size of `value`, or `None` once it passes `limit`.
/// Walks at most `limit` bytes' worth of the value: an oversized value is
/// refused without being measured (or copied) whole. Does not allocate.
pub fn json_size_within(value: &Value, limit: usize) -> Option<usize> {
    fn take(left: &mut usize, n: usize) -> bool {
        match left.checked_sub(n) {
            Some(rest) => {
                *left = rest;
                true
            }
            None => false,
        }
    }
    fn walk(value: &Value, left: &mut usize) -> bool {
        match value {
            Value::Null => take(left, 4),
            Value::Bool(_) => take(left, 5),
            Value::Number(_) => take(left, 8),
            Value::String(s) => take(left, s.len().saturating_add(2)),
            Value::Array(items) => {
                take(left, 2) && items.iter().all(|item| take(left, 1) && walk(item, left))
            }
            Value::Object(members) => {
                take(left, 2)
                    && members.iter().all(|(name, member)| {
                        take(left, name.len().saturating_add(4)) && walk(member, left)
                    })
            }
        }
    }
    let mut left = limit;
    walk(value, &mut left).then(|| limit - left)
}

/// A template that could not be rendered: what is missing, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", at(pointer))]
pub struct RenderError {
    /// JSON pointer of the string within the rendered value (`""`: the
    /// value itself).
    pub pointer: String,
    /// The reference and what was missing, e.g. `nodes.tests.output.cases:
    /// no field `cases` (the output has fields: a, b)`.
    pub message: String,
}

impl RenderError {
    /// The render would produce more than `limit` bytes.
    pub fn limit(limit: usize) -> Self {
        Self {
            pointer: String::new(),
            message: format!(
                "the rendered value would exceed {limit} bytes (dag.max_rendered_input_bytes): \
                 refer to smaller values, or to fewer of them"
            ),
        }
    }

    /// Whether this is the render byte cap ([`RenderError::limit`]).
    pub fn is_limit(&self) -> bool {
        self.message.contains("(dag.max_rendered_input_bytes)")
    }
}

fn at(pointer: &str) -> String {
    if pointer.is_empty() {
        String::new()
    } else {
        format!(" (at {pointer})")
    }
}

impl TemplateRef {
    /// Look the reference up in `ctx`. Borrows when it can (only `index`
    /// makes a value); does not clone the referenced value.
    ///
    /// # Errors
    ///
    /// A message naming the reference and what was missing.
    pub fn resolve<'c>(&self, ctx: &'c dyn Context) -> Result<Cow<'c, Value>, String> {
        let (root, what): (&'c Value, &str) = match &self.root {
            Root::Input => (ctx.input(), "the input"),
            Root::Node(id) => match ctx.node_output(id) {
                Some(output) => (output, "the output"),
                None => return Err(format!("{self}: node `{id}` has no output yet")),
            },
            Root::Item => match ctx.item() {
                Some(item) => (item, "the item"),
                None => return Err(format!("{self}: `item` used outside for_each")),
            },
            Root::Index => {
                return match ctx.index() {
                    Some(index) => Ok(Cow::Owned(Value::from(index))),
                    None => Err(format!("{self}: `index` used outside for_each")),
                };
            }
        };
        let mut current = root;
        for (step, segment) in self.path.iter().enumerate() {
            let container = || {
                if step == 0 {
                    what.to_owned()
                } else {
                    let prefix = TemplateRef {
                        root: self.root.clone(),
                        path: self.path[..step].to_vec(),
                    };
                    format!("`{prefix}`")
                }
            };
            current = match (segment, current) {
                (Segment::Field(name), Value::Object(members)) => match members.get(name) {
                    Some(member) => member,
                    None => {
                        return Err(format!(
                            "{self}: no field `{name}` ({} {})",
                            container(),
                            describe_fields(members)
                        ));
                    }
                },
                (Segment::Index(index), Value::Array(items)) => match items.get(*index) {
                    Some(item) => item,
                    None => {
                        return Err(format!(
                            "{self}: index {index} is out of range ({} has {} element{})",
                            container(),
                            items.len(),
                            if items.len() == 1 { "" } else { "s" }
                        ));
                    }
                },
                (Segment::Field(_), other) => {
                    return Err(format!(
                        "{self}: {} is {}, not an object",
                        container(),
                        kind_of(other)
                    ));
                }
                (Segment::Index(_), other) => {
                    return Err(format!(
                        "{self}: {} is {}, not an array",
                        container(),
                        kind_of(other)
                    ));
                }
            };
        }
        Ok(Cow::Borrowed(current))
    }
}

fn describe_fields(members: &Map<String, Value>) -> String {
    const SHOWN: usize = 20;
    if members.is_empty() {
        return "is an empty object".to_owned();
    }
    let mut names: Vec<&str> = members.keys().take(SHOWN).map(String::as_str).collect();
    if members.len() > SHOWN {
        names.push("…");
    }
    format!("has fields: {}", names.join(", "))
}

/// "a string", "an array", … — for messages about a JSON value's type.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Render every templated string in `value` against `ctx`. A string that is
/// exactly one `{{ expr }}` (surrounding whitespace allowed) becomes the
/// referenced JSON value (any type); a string mixing text and expressions
/// interpolates: strings verbatim, other values as compact JSON.
///
/// Cost: one walk of `value` (a substring search per string) and one
/// clone of it; only templated strings are parsed, and containers with no
/// template inside are cloned as a whole, not rebuilt.
///
/// # Errors
///
/// [`RenderError`] naming the first reference that could not be resolved
/// (or template that does not parse) and the pointer of its string.
pub fn render(value: &Value, ctx: &dyn Context) -> Result<Value, RenderError> {
    let mut left = ctx.max_bytes();
    Ok(render_changed(value, ctx, &mut left)?.unwrap_or_else(|| value.clone()))
}

/// The rendered value, or `None` if nothing in `value` is templated.
/// Pointers in errors are built while unwinding, so success costs nothing.
/// `left`: bytes references may still produce.
fn render_changed(
    value: &Value,
    ctx: &dyn Context,
    left: &mut usize,
) -> Result<Option<Value>, RenderError> {
    match value {
        Value::String(text) if is_templated(text) => render_text(text, ctx, left).map(Some),
        Value::Array(items) => {
            let mut rendered: Option<Vec<Value>> = None;
            for (index, item) in items.iter().enumerate() {
                let changed = render_changed(item, ctx, left).map_err(|mut e| {
                    let mut segment = String::new();
                    push_index(&mut segment, index);
                    e.pointer.insert_str(0, &segment);
                    e
                })?;
                match (changed, &mut rendered) {
                    (Some(new), None) => {
                        let mut out = Vec::with_capacity(items.len());
                        out.extend(items[..index].iter().cloned());
                        out.push(new);
                        rendered = Some(out);
                    }
                    (Some(new), Some(out)) => out.push(new),
                    (None, Some(out)) => out.push(item.clone()),
                    (None, None) => {}
                }
            }
            Ok(rendered.map(Value::Array))
        }
        Value::Object(members) => {
            let mut rendered: Option<Map<String, Value>> = None;
            for (position, (name, member)) in members.iter().enumerate() {
                let changed = render_changed(member, ctx, left).map_err(|mut e| {
                    let mut segment = String::new();
                    push_field(&mut segment, name);
                    e.pointer.insert_str(0, &segment);
                    e
                })?;
                match (changed, &mut rendered) {
                    (Some(new), None) => {
                        let mut out: Map<String, Value> = members
                            .iter()
                            .take(position)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        out.insert(name.clone(), new);
                        rendered = Some(out);
                    }
                    (Some(new), Some(out)) => {
                        out.insert(name.clone(), new);
                    }
                    (None, Some(out)) => {
                        out.insert(name.clone(), member.clone());
                    }
                    (None, None) => {}
                }
            }
            Ok(rendered.map(Value::Object))
        }
        _ => Ok(None),
    }
}

/// Render one templated string: typed if it is one whole expression,
/// interpolated otherwise.
fn render_text(text: &str, ctx: &dyn Context, left: &mut usize) -> Result<Value, RenderError> {
    let fail = |message: String| RenderError {
        pointer: String::new(),
        message,
    };
    let limit = ctx.max_bytes();
    let spend = |left: &mut usize, n: usize| match left.checked_sub(n) {
        Some(rest) => {
            *left = rest;
            Ok(())
        }
        None => Err(RenderError::limit(limit)),
    };
    let parts = parse(text).map_err(|e| fail(format!("bad template: {e}")))?;
    let only_expr = parts
        .iter()
        .filter(|part| !matches!(part, Part::Text(t) if t.trim().is_empty()))
        .count()
        == 1;
    let mut out = String::with_capacity(text.len());
    for part in &parts {
        match part {
            Part::Expr(reference) => {
                let value = reference.resolve(ctx).map_err(fail)?;
                let size = json_size_within(&value, *left).ok_or(RenderError::limit(limit))?;
                spend(left, size)?;
                if only_expr {
                    return Ok(value.into_owned());
                }
                match &*value {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
            }
            Part::Text(t) => {
                spend(left, t.len())?;
                out.push_str(t);
            }
        }
    }
    Ok(Value::String(out))
}

/// Render a string that must be one whole expression (a `for_each`),
/// returning the referenced value.
///
/// # Errors
///
/// [`RenderError`] if `text` is not one whole expression or its reference
/// cannot be resolved.
pub fn render_whole(text: &str, ctx: &dyn Context) -> Result<Value, RenderError> {
    let fail = |message: String| RenderError {
        pointer: String::new(),
        message,
    };
    match whole(text) {
        Ok(Some(reference)) => {
            let value = reference.resolve(ctx).map_err(fail)?;
            json_size_within(&value, ctx.max_bytes())
                .ok_or_else(|| RenderError::limit(ctx.max_bytes()))?;
            Ok(value.into_owned())
        }
        Ok(None) => Err(fail(format!(
            "`{text}` must be one whole `{{{{ … }}}}` expression"
        ))),
        Err(e) => Err(fail(format!("bad template: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    struct Fixture {
        input: Value,
        outputs: Map<String, Value>,
        item: Option<(Value, usize)>,
    }

    impl Context for Fixture {
        fn input(&self) -> &Value {
            &self.input
        }
        fn node_output(&self, id: &str) -> Option<&Value> {
            self.outputs.get(id)
        }
        fn item(&self) -> Option<&Value> {
            self.item.as_ref().map(|(item, _)| item)
        }
        fn index(&self) -> Option<usize> {
            self.item.as_ref().map(|(_, index)| *index)
        }
    }

    fn fixture() -> Fixture {
        Fixture {
            input: json!({"goal": "a calculator", "n": 3}),
            outputs: json!({
                "tests": {"a": 1, "b": [10, 20, {"deep": true}]},
                "text": "hello",
            })
            .as_object()
            .cloned()
            .unwrap(),
            item: None,
        }
    }

    fn reference(text: &str) -> TemplateRef {
        whole(text).unwrap().unwrap()
    }

    /// A context with a 100 KB input and a render cap of 1 MB.
    struct Capped(Value);

    impl Context for Capped {
        fn input(&self) -> &Value {
            &self.0
        }
        fn node_output(&self, _: &str) -> Option<&Value> {
            None
        }
        fn item(&self) -> Option<&Value> {
            None
        }
        fn index(&self) -> Option<usize> {
            None
        }
        fn max_bytes(&self) -> usize {
            1_000_000
        }
    }

    #[test]
    fn rendering_stops_at_the_byte_cap() {
        let ctx = Capped(json!({"big": "z".repeat(100_000)}));
        // Interpolated twenty times, and copied twenty times as values.
        let text = Value::String("{{ input.big }}".repeat(20));
        let copies = Value::Array(vec![json!("{{ input.big }}"); 20]);
        for value in [text, copies] {
            let error = render(&value, &ctx).unwrap_err();
            assert!(error.is_limit(), "{error}");
            assert!(error.to_string().contains("dag.max_rendered_input_bytes"));
        }
        let ok = render(&Value::String("{{ input.big }}".repeat(5)), &ctx).unwrap();
        assert_eq!(ok.as_str().map(str::len), Some(500_000));
        assert_eq!(json_size_within(&json!({"a": [1, "xy"]}), 100), Some(23));
        assert_eq!(json_size_within(&json!("z".repeat(50)), 10), None);
    }

    #[test]
    fn parses_every_root_and_segment() {
        let r = reference("{{nodes.x-1.output.a_b[0].c}}");
        assert_eq!(r.root, Root::Node("x-1".to_owned()));
        assert_eq!(
            r.path,
            vec![
                Segment::Field("a_b".to_owned()),
                Segment::Index(0),
                Segment::Field("c".to_owned())
            ]
        );
        assert_eq!(r.to_string(), "nodes.x-1.output.a_b[0].c");
        assert_eq!(reference("  {{ input.goal }}\n").to_string(), "input.goal");
        assert_eq!(reference("{{ input }}").path, vec![]);
        assert_eq!(reference("{{ item[2].x }}").to_string(), "item[2].x");
        assert_eq!(reference("{{\tindex\n}}").root, Root::Index);
        assert_eq!(whole("a {{ index }}").unwrap(), None);
        assert_eq!(whole("{{ index }}{{ item }}").unwrap(), None);
        assert_eq!(whole("no template").unwrap(), None);
        let parts = parse("x {{ input.a }} y }} {").unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], Part::Text("x "));
        assert_eq!(parts[2], Part::Text(" y }} {"));
    }

    #[test]
    fn bad_templates_say_what_and_where() {
        let cases = [
            ("ab {{ input.goal", 3, "unclosed `{{`"),
            ("{{ }}", 3, "expected a reference"),
            ("{{ foo.bar }}", 3, "unknown reference `foo`"),
            (
                "é {{ nodes.x.outpt }}",
                12,
                "expected `.output` after `nodes.x`",
            ),
            ("{{ nodes }}", 8, "`.ID.output`"),
            ("{{ nodes..output }}", 9, "a node id"),
            (
                "{{ input.goal extra }}",
                14,
                "expected `.field`, `[index]` or `}}`",
            ),
            ("{{ input[0] }}", 8, "expected `.NAME` after `input`"),
            ("{{ item[x] }}", 8, "non-negative integer"),
            ("{{ item[-1] }}", 8, "non-negative integer"),
            ("{{ item[1 }}", 9, "expected `]`"),
            ("{{ item. }}", 8, "a field name"),
            ("{{ index.a }}", 3, "takes no path"),
            ("{{ input.a }", 0, "unclosed"),
        ];
        for (text, offset, message) in cases {
            let error = parse(text).unwrap_err();
            assert!(
                error.message.contains(message),
                "{text:?}: {error} does not contain {message:?}"
            );
            assert_eq!(error.offset, offset, "{text:?}: {error}");
        }
    }

    #[test]
    fn references_carry_pointers() {
        let value = json!({
            "a": "{{ input.goal }} and {{ nodes.x.output }}",
            "b": [1, {"c/d": "{{ item.name }}"}],
            "{{ keys are not templated }}": "plain"
        });
        let found = references(&value).unwrap();
        let found: Vec<(String, String)> = found
            .into_iter()
            .map(|(pointer, r)| (pointer, r.to_string()))
            .collect();
        assert_eq!(
            found,
            vec![
                ("/a".to_owned(), "input.goal".to_owned()),
                ("/a".to_owned(), "nodes.x.output".to_owned()),
                ("/b/1/c~1d".to_owned(), "item.name".to_owned()),
            ]
        );
        let (pointer, error) = references(&json!({"x": ["{{ nope }}"]})).unwrap_err();
        assert_eq!(pointer, "/x/0");
        assert_eq!(error.offset, 3);
    }

    #[test]
    fn whole_templates_keep_their_type() {
        let ctx = fixture();
        let value = json!({
            "n": "{{ input.n }}",
            "tests": " {{ nodes.tests.output }} ",
            "b1": "{{ nodes.tests.output.b[1] }}",
            "deep": "{{ nodes.tests.output.b[2].deep }}",
            "plain": [1, "two", null],
        });
        assert_eq!(
            render(&value, &ctx).unwrap(),
            json!({
                "n": 3,
                "tests": {"a": 1, "b": [10, 20, {"deep": true}]},
                "b1": 20,
                "deep": true,
                "plain": [1, "two", null],
            })
        );
    }

    #[test]
    fn mixed_templates_interpolate() {
        let ctx = fixture();
        let value = json!(
            "Build {{ input.goal }} ({{ input.n }} parts, {{nodes.tests.output.b}}): {{ nodes.text.output }}"
        );
        assert_eq!(
            render(&value, &ctx).unwrap(),
            json!("Build a calculator (3 parts, [10,20,{\"deep\":true}]): hello")
        );
    }

    #[test]
    fn untemplated_values_render_unchanged() {
        let ctx = fixture();
        let value = json!({"a": [1, 2, {"b": "c {x} }}"}], "d": null});
        assert_eq!(render(&value, &ctx).unwrap(), value);
        let partly = json!({"a": [1, 2], "b": "{{ input.n }}", "c": {"d": 4}});
        assert_eq!(
            render(&partly, &ctx).unwrap(),
            json!({"a": [1, 2], "b": 3, "c": {"d": 4}})
        );
    }

    #[test]
    fn item_and_index() {
        let mut ctx = fixture();
        let value = json!({"case": "{{ item }}", "name": "case {{ index }}: {{ item.name }}", "i": "{{ index }}"});
        let error = render(&value, &ctx).unwrap_err();
        assert_eq!(
            error.to_string(),
            "item: `item` used outside for_each (at /case)"
        );
        ctx.item = Some((json!({"name": "add"}), 2));
        assert_eq!(
            render(&value, &ctx).unwrap(),
            json!({"case": {"name": "add"}, "name": "case 2: add", "i": 2})
        );
        assert_eq!(
            render_whole("{{ nodes.tests.output.b }}", &ctx).unwrap(),
            json!([10, 20, {"deep": true}])
        );
        assert!(
            render_whole("x {{ item }}", &ctx)
                .unwrap_err()
                .message
                .contains("one whole")
        );
    }

    #[test]
    fn missing_values_are_named() {
        let ctx = fixture();
        let cases = [
            (
                "{{ nodes.tests.output.cases }}",
                "nodes.tests.output.cases: no field `cases` (the output has fields: a, b)",
            ),
            (
                "{{ nodes.tests.output.b[2].x }}",
                "nodes.tests.output.b[2].x: no field `x` (`nodes.tests.output.b[2]` has fields: deep)",
            ),
            (
                "{{ nodes.tests.output.b[5] }}",
                "nodes.tests.output.b[5]: index 5 is out of range (`nodes.tests.output.b` has 3 elements)",
            ),
            (
                "{{ nodes.tests.output.a.x }}",
                "nodes.tests.output.a.x: `nodes.tests.output.a` is a number, not an object",
            ),
            (
                "{{ nodes.text.output[0] }}",
                "nodes.text.output[0]: the output is a string, not an array",
            ),
            (
                "{{ nodes.later.output }}",
                "nodes.later.output: node `later` has no output yet",
            ),
            ("{{ index }}", "index: `index` used outside for_each"),
            (
                "{{ input.nope }}",
                "input.nope: no field `nope` (the input has fields: goal, n)",
            ),
        ];
        for (text, message) in cases {
            let error = render(&json!({"k": [text]}), &ctx).unwrap_err();
            assert_eq!(error.message, message);
            assert_eq!(error.pointer, "/k/0");
        }
    }
}
