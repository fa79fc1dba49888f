//! One line of live progress per DAG event (`✓ node (1.2 ms)`, `↻ node: … —
//! retry in 200 ms`, …), shared by the local `soma dag run` and the
//! `--server` client.

use soma_host_api::log::escape;
use soma_runtime::dag::history::Event;

/// The progress line for one event (`None`: not worth a line).
/// `quiet_success(node)`: do not announce that node's success.
pub(crate) fn progress_line(e: &Event, quiet_success: &dyn Fn(&str) -> bool) -> Option<String> {
    let line = match e {
        Event::Succeeded { node, call, .. } if !quiet_success(node) => {
            format!(
                "✓ {node} ({:.1} ms){}",
                call.wall_us as f64 / 1000.0,
                first_log(call)
            )
        }
        Event::Failed {
            node,
            failure,
            retry_at_ms: Some(at),
            ..
        } => format!(
            "↻ {node}: {} — retry in {} ms",
            escape(&failure.message),
            at.saturating_sub(e.time_ms())
        ),
        Event::Failed { node, failure, .. } => format!("✗ {node}: {}", escape(&failure.message)),
        Event::Expanded {
            node, plan, call, ..
        } => {
            let ids: Vec<&str> = plan.nodes.iter().map(|n| n.id.as_str()).collect();
            format!(
                "⤷ {node} planned {} nodes: {}{}",
                ids.len(),
                ids.join(", "),
                first_log(call)
            )
        }
        Event::FannedOut { node, items, .. } => {
            format!("⇉ {node} fans out to {} calls", items.len())
        }
        Event::Verdict {
            node,
            round,
            verdict,
            ..
        } => format!(
            "{} {node} round {round}: {} (score {:.2})",
            if verdict.approved { "✔" } else { "✋" },
            if verdict.approved {
                "approved"
            } else {
                "sent back"
            },
            verdict.score
        ),
        Event::Reworked { node, round, .. } => {
            format!("↺ {node} runs again with the gate's feedback (round {round})")
        }
        Event::Restarted { node, attempt, .. } => {
            format!("⟳ {node} attempt {attempt} was in flight; calling it again")
        }
        Event::CancelRequested { .. } => "cancelling: nothing new starts".to_owned(),
        Event::AwaitingApproval { node, .. } => {
            format!("⏸ {node} awaits a verdict: soma dag approve|reject RUN {node}")
        }
        Event::Approval {
            node, verdict, by, ..
        } => format!(
            "{} {node}: {verdict} by {}",
            if *verdict == soma_runtime::dag::spec::ApprovalVerdict::Approve {
                "✓"
            } else {
                "✗"
            },
            escape(by)
        ),
        _ => return None,
    };
    Some(line)
}

/// ` · <the call's first log line>` without its level, or nothing.
fn first_log(call: &soma_runtime::dag::history::CallRecord) -> String {
    call.logs.first().map_or_else(String::new, |l| {
        let text = l.split_once("] ").map_or(l.as_str(), |(_, t)| t);
        format!(" · {}", escape(text))
    })
}
