//! The shipped Grafana dashboards (`docs/deploy/grafana/*.json`), for the
//! tests that run their queries against the real Prometheus and ClickHouse.

use std::path::Path;

use serde_json::Value;

/// Every target's `field` (`expr` for PromQL, `rawSql` for ClickHouse) of
/// every shipped dashboard, as (`file: panel title`, query), files in name
/// order.
pub fn queries(field: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/grafana");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let dashboard: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(query) = target[field].as_str() {
                    let title = panel["title"].as_str().unwrap_or("?");
                    out.push((format!("{name}: {title}"), query.to_owned()));
                }
            }
        }
    }
    out
}
