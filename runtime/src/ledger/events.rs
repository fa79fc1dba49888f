//! The analytics events of appended entries, written to the outbox in the
//! same transaction as the entries (see `crate::analytics::outbox`).
//!
//! One `call` event per `wall-time` entry (one per metered call: its fuel
//! from the same call's `fuel` entry, its cost the sum of the call's fuel,
//! wall-time, HTTP and fee entries), one `llm-tokens` event per token entry
//! and one `market-fee` event per fee entry. Only entries actually inserted
//! make events: a replay (duplicate idempotency key) makes none, so the
//! outbox is exactly as idempotent as the ledger.
//!
//! A call's charge may carry [`CallFacts`]: its `call` event then names the
//! capsule and its peak memory, and each event the capsule emitted becomes
//! a `capsule-event` keyed `run/node/attempt/seq/<index>`, namespaced by
//! the capsule's name (its digest when the name is unknown) — written with
//! the call's wall-time entry, so only once.

use crate::analytics::{Body, CallFacts, Event, Site};

use super::{Charge, Entry, Kind};

fn site(e: &Entry) -> Site {
    Site {
        run: e.run.clone(),
        node: e.node.clone(),
        attempt: e.attempt,
        capsule_digest: e.capsule.clone(),
    }
}

/// The events of `inserted`, the entries of one request that were written
/// (`request` is the whole request, for a call's fuel, cost and facts).
/// Cost: a few small allocations per event; nothing for fuel and HTTP
/// entries.
pub(super) fn of(request: &Charge<'_>, inserted: &[&Entry], out: &mut Vec<Event>) {
    let facts = request.facts;
    let request = request.entries;
    for e in inserted {
        let body = match e.kind {
            Kind::WallTime => {
                let same_call = |o: &&Entry| {
                    o.run == e.run && o.node == e.node && o.attempt == e.attempt && o.seq == e.seq
                };
                let fuel = request
                    .iter()
                    .filter(same_call)
                    .find(|o| o.kind == Kind::Fuel)
                    .map(|o| o.quantity);
                let cost_micros = request
                    .iter()
                    .filter(same_call)
                    .filter(|o| !matches!(o.kind, Kind::LlmTokensInput | Kind::LlmTokensOutput))
                    .fold(0u64, |acc, o| acc.saturating_add(o.cost_micros));
                let key = format!("{}/{}/{}/{}", e.run, e.node, e.attempt, e.seq);
                out.push(Event::new(
                    &key,
                    &e.tenant,
                    e.time_ms,
                    Body::Call {
                        site: site(e),
                        capsule_name: facts.and_then(|f| f.capsule_name.clone()),
                        fuel,
                        wall_us: e.quantity,
                        peak_memory_bytes: facts.and_then(|f| f.peak_memory_bytes),
                        cost_micros,
                    },
                ));
                if let Some(f) = facts {
                    emitted(e, &key, f, out);
                }
                continue;
            }
            Kind::LlmTokensInput | Kind::LlmTokensOutput => Body::LlmTokens {
                site: site(e),
                direction: if e.kind == Kind::LlmTokensInput {
                    "input"
                } else {
                    "output"
                }
                .into(),
                tokens: e.quantity,
                provider: e.provider.clone(),
                model: e.model.clone(),
                cost_micros: e.cost_micros,
                estimated: e.estimated,
            },
            Kind::MarketplaceFee => Body::MarketFee {
                site: site(e),
                units: e.quantity,
                cost_micros: e.cost_micros,
            },
            Kind::Fuel | Kind::HttpRequests | Kind::HttpBytesOut | Kind::HttpBytesIn => continue,
        };
        out.push(Event::new(&e.key(), &e.tenant, e.time_ms, body));
    }
}

/// The capsule's own events of the call whose wall-time entry is `e`.
fn emitted(e: &Entry, key: &str, facts: &CallFacts, out: &mut Vec<Event>) {
    let namespace = facts.capsule_name.as_deref().unwrap_or(&e.capsule);
    for (i, (name, payload)) in facts.emitted.iter().enumerate() {
        out.push(Event::capsule_event(
            &format!("{key}/{i}"),
            &e.tenant,
            e.time_ms,
            &e.capsule,
            namespace,
            name,
            payload.clone(),
        ));
    }
}
