//! Checks shared by the crash and chaos tests: what a run's history says
//! was called, and what the ledger charged for it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// (node, attempt) of every call recorded in a run's history (events as
/// JSON, in order). Panics if a node started again after it completed,
/// unless a gate reset it (or its planner / `for_each` parent) in between.
pub fn recorded_calls(events: &[Value]) -> BTreeSet<(String, u64)> {
    let mut calls = BTreeSet::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    for e in events {
        let node = e["node"].as_str().unwrap_or_default().to_owned();
        match e["event"].as_str().unwrap_or_default() {
            "started" | "restarted" => {
                assert!(
                    !done.contains(&node),
                    "{node} executed again after it completed: {e}"
                );
            }
            "succeeded" | "expanded" => {
                done.insert(node.clone());
            }
            "reworked" => {
                for r in e["reset"].as_array().into_iter().flatten() {
                    let r = r.as_str().unwrap_or_default();
                    done.retain(|d| {
                        d != r
                            && !d.starts_with(&format!("{r}."))
                            && !d.starts_with(&format!("{r}["))
                    });
                }
            }
            _ => {}
        }
        if let Some(call) = e.get("call")
            && call["wall_us"].as_u64().unwrap_or(0) > 0
        {
            calls.insert((node, call["attempt"].as_u64().unwrap_or(0)));
        }
    }
    calls
}

/// (node, attempt) of every call the ledger charged wall time for
/// (entries as JSON). Panics if one was charged twice.
pub fn charged_calls(entries: &[Value]) -> BTreeSet<(String, u64)> {
    let mut charged: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for e in entries.iter().filter(|e| e["kind"] == "wall-time") {
        let key = (
            e["node"].as_str().unwrap_or_default().to_owned(),
            e["attempt"].as_u64().unwrap_or(0),
        );
        *charged.entry(key).or_default() += 1;
    }
    assert!(
        charged.values().all(|&n| n == 1),
        "double charge: {charged:?}"
    );
    charged.into_keys().collect()
}
