//! The OpenAPI 3.1 description of the daemon's HTTP API, served at
//! `GET /v1/openapi.json`. Hand-written (`openapi.json` beside this file)
//! and kept honest by the tests below: every route of
//! [`super::api::ROUTES`] is documented, nothing else is, and every `$ref`
//! resolves.

/// The document, as JSON text. Embedded at compile time; free to call.
pub fn document() -> &'static str {
    include_str!("openapi.json")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn parsed() -> Value {
        serde_json::from_str(document()).expect("openapi.json is JSON")
    }

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// (method, path) of every operation in the document.
    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("path item");
                item.keys()
                    .filter(|k| METHODS.contains(&k.as_str()))
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = parsed();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
        let documented = operations(&doc);
        let routed: BTreeSet<(String, String)> = super::super::api::ROUTES
            .iter()
            .map(|(m, p)| (m.to_ascii_lowercase(), (*p).to_owned()))
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "openapi.json documents routes the daemon does not serve: {unrouted:?}"
        );
    }

    #[test]
    fn authenticated_routes_document_their_refusals() {
        let doc = parsed();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"][0]["bearer"], Value::Array(Vec::new()));
        for (method, path) in operations(&doc) {
            let op = &doc["paths"][&path][&method];
            let open = op["security"] == Value::Array(Vec::new());
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no success response"
            );
            if open {
                assert!(
                    !path.starts_with("/v1/") || path == "/v1/openapi.json",
                    "{method} {path} is open"
                );
                continue;
            }
            assert!(
                op["x-soma-scope"].is_string(),
                "{method} {path}: no x-soma-scope"
            );
            for status in ["401", "403", "429"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: {status} is not documented"
                );
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} takes a body but does not document {status}"
                    );
                }
            }
            if path.contains("{id}") {
                assert!(
                    responses.contains_key("404"),
                    "{method} {path}: 404 is not documented"
                );
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = parsed();
        fn walk(v: &Value, doc: &Value, found: &mut usize) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let pointer = r.strip_prefix('#').expect("local $ref");
                        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
                        *found += 1;
                    }
                    map.values().for_each(|v| walk(v, doc, found));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc, found)),
                _ => {}
            }
        }
        let mut found = 0;
        walk(&doc, &doc, &mut found);
        assert!(found > 50, "only {found} references");
        assert!(doc["components"]["schemas"]["Error"]["properties"]["error"].is_object());
    }
}
