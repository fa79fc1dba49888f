//! The hostile subset: inputs generated from the capsule's input schema
//! and its first example that a well-behaved capsule answers with a
//! `capsule-error` (bad input), never with a trap or a limit kill.
//!
//! Three kinds, at most one input each (so the review stays in seconds):
//!
//! | kind | how |
//! |---|---|
//! | `wrong-type` | the first example with one property's value replaced by a value of another type (`42`, `"…"`, `[]`, `{}`, `null`, `true`: the first the schema rejects); or the whole input replaced if no property can be |
//! | `missing-required` | the first example without its first `required` property |
//! | `huge-string` | the first example with its first string property replaced by a string of `huge` bytes (within the input limit); the whole input a string if it has none |
//!
//! Whether each input really violates the schema is decided by the
//! validator, not assumed: only violating inputs must be refused; the huge
//! string may be valid and only must not trap or be killed.

use serde_json::Value;

/// One generated input.
#[derive(Debug, Clone)]
pub struct HostileInput {
    /// `wrong-type`, `missing-required` or `huge-string`.
    pub kind: &'static str,
    /// What was changed, e.g. `property "expr" set to 42`.
    pub change: String,
    /// The input.
    pub input: Value,
    /// Whether the input schema rejects it.
    pub violates: bool,
}

/// Values of every JSON type, tried in order for `wrong-type`.
fn other_types() -> [Value; 6] {
    [
        Value::from(42),
        Value::from("not the expected type"),
        Value::Array(Vec::new()),
        Value::Object(serde_json::Map::new()),
        Value::Null,
        Value::Bool(true),
    ]
}

/// Generate the hostile inputs for `schema` (`None`: the schema could not
/// be compiled, so nothing can be judged a violation) from `example`.
/// Cost: a handful of validations of small values plus one `huge`-byte
/// string.
pub fn generate(
    schema: Option<&jsonschema::Validator>,
    schema_doc: &Value,
    example: Option<&Value>,
    huge: usize,
) -> Vec<HostileInput> {
    let rejects = |v: &Value| schema.is_some_and(|s| !s.is_valid(v));
    let base = example
        .cloned()
        .unwrap_or(Value::Object(serde_json::Map::new()));
    let mut out = Vec::new();

    // wrong-type: a property first (reaches deeper into the capsule), else
    // the whole input.
    let mut wrong = None;
    if let Value::Object(fields) = &base {
        'fields: for key in property_names(schema_doc, fields) {
            for value in other_types() {
                let mut candidate = fields.clone();
                candidate.insert(key.clone(), value.clone());
                let candidate = Value::Object(candidate);
                if rejects(&candidate) {
                    wrong = Some((format!("property {key:?} set to {value}"), candidate));
                    break 'fields;
                }
            }
        }
    }
    if wrong.is_none() {
        wrong = other_types()
            .into_iter()
            .find(&rejects)
            .map(|v| (format!("the whole input replaced by {v}"), v));
    }
    if let Some((change, input)) = wrong {
        out.push(HostileInput {
            kind: "wrong-type",
            change,
            input,
            violates: true,
        });
    }

    // missing-required.
    let required = schema_doc
        .get("required")
        .and_then(Value::as_array)
        .and_then(|r| r.iter().find_map(Value::as_str));
    if let (Some(key), Value::Object(fields)) = (required, &base) {
        let mut candidate = fields.clone();
        candidate.remove(key);
        let input = Value::Object(candidate);
        out.push(HostileInput {
            kind: "missing-required",
            change: format!("required property {key:?} removed"),
            violates: rejects(&input),
            input,
        });
    }

    // huge-string.
    let text = Value::String("x".repeat(huge));
    let string_field = match &base {
        Value::Object(fields) => fields
            .iter()
            .find(|(_, v)| v.is_string())
            .map(|(k, _)| k.clone()),
        _ => None,
    };
    let (change, input) = match (string_field, &base) {
        (Some(key), Value::Object(fields)) => {
            let mut candidate = fields.clone();
            candidate.insert(key.clone(), text);
            (
                format!("property {key:?} set to a {huge}-byte string"),
                Value::Object(candidate),
            )
        }
        _ => (format!("the whole input a {huge}-byte string"), text),
    };
    out.push(HostileInput {
        kind: "huge-string",
        change,
        violates: rejects(&input),
        input,
    });
    out
}

/// The example's properties the schema declares (in the schema's order),
/// then its other properties.
fn property_names(schema_doc: &Value, fields: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut names: Vec<String> = schema_doc
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.keys()
                .filter(|k| fields.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for k in fields.keys() {
        if !names.contains(k) {
            names.push(k.clone());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_kind_is_generated_and_judged_by_the_schema() {
        let doc = json!({
            "type": "object",
            "properties": { "expr": { "type": "string" } },
            "required": ["expr"]
        });
        let validator = jsonschema::validator_for(&doc).expect("schema");
        let example = json!({ "expr": "1+2" });
        let got = generate(Some(&validator), &doc, Some(&example), 1000);
        let kinds: Vec<_> = got.iter().map(|h| (h.kind, h.violates)).collect();
        assert_eq!(
            kinds,
            [
                ("wrong-type", true),
                ("missing-required", true),
                ("huge-string", false)
            ]
        );
        assert_eq!(got[0].input, json!({ "expr": 42 }));
        assert_eq!(got[1].input, json!({}));
        assert_eq!(got[2].input["expr"].as_str().map(str::len), Some(1000));
    }

    #[test]
    fn an_open_schema_gets_only_the_huge_string() {
        let doc = json!({});
        let validator = jsonschema::validator_for(&doc).expect("schema");
        let got = generate(Some(&validator), &doc, Some(&json!("hi")), 10);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, "huge-string");
        assert!(!got[0].violates);
        assert_eq!(got[0].input, json!("xxxxxxxxxx"));
    }
}
