//! `[orchestrator]`: what drives the daemon's DAG runs — the embedded
//! coordinator (default) or Temporal workflows served by `soma worker`
//! processes (see `docs/scale-out.md`).
//!
//! ```toml
//! [orchestrator]
//! engine = "temporal"          # "embedded" (default) or "temporal"
//! address = "127.0.0.1:7233"   # the Temporal frontend (required for temporal)
//! namespace = "default"
//! task_queue = "soma"          # the queue `soma worker --task-queue` polls
//! connect_timeout_ms = 5000    # connecting to Temporal
//! rpc_timeout_ms = 10000       # one start / query / cancel / signal
//! heartbeat_timeout_ms = 10000 # a call's worker is presumed dead after this silence
//! sticky_timeout_ms = 10000    # (soma worker) a run's next step waits this long for its last worker
//! continue_as_new_after_events = 4000 # a run's workflow continues as new past this history length
//! payload_offload_bytes = 131072 # with [store] backend = "postgres": larger payloads go by reference
//! payload_retention_hours = 168  # offloaded payloads unused this long are deleted
//! child_workflow_calls = 500      # with the offload: a turn starting this many calls runs them as child workflows
//! ```

use serde::{Deserialize, Serialize};

/// A run's workflow continues as a new execution once its Temporal
/// history holds this many events, unless `continue_as_new_after_events`
/// says otherwise (Temporal warns at 10,240 events and suggests continuing
/// from about 4 MB of history).
pub const CONTINUE_AS_NEW_AFTER: u32 = 4_000;

/// Most calls of one run in flight at once on Temporal: it refuses more
/// than 2,000 pending activities per workflow execution; a larger fan-out
/// is started in waves of at most this many (and a child workflow runs at
/// most this many, `child_workflow_calls`).
pub const MAX_PENDING_ACTIVITIES: usize = 1_000;

/// Which engine drives the daemon's DAG runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrchestratorEngine {
    /// The daemon's own driver threads, over its redb journal.
    #[default]
    Embedded,
    /// One Temporal workflow per run; calls run on `soma worker`s.
    Temporal,
}

/// `[orchestrator]` in `soma.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// What drives DAG runs. Default `embedded`.
    pub engine: OrchestratorEngine,
    /// The Temporal frontend, `HOST:PORT` or a URL (engine `temporal`).
    pub address: Option<String>,
    /// The Temporal namespace. Default `default`.
    pub namespace: String,
    /// The task queue runs are started on. Default `soma`.
    pub task_queue: String,
    /// Most time connecting to Temporal may take. Default 5 s.
    pub connect_timeout_ms: u64,
    /// Most time one start, query, cancel or signal may take. Default 10 s.
    pub rpc_timeout_ms: u64,
    /// How long a call's worker may stay silent before Temporal presumes
    /// it dead and runs the call again on another worker (the heartbeat
    /// timeout of a call's activity; the worker heartbeats several times
    /// within it). Recorded in the run's workflow by whoever starts it.
    /// Default 10 s.
    pub heartbeat_timeout_ms: u64,
    /// `soma worker`: how long a run's next workflow task waits for the
    /// worker that served the run last (which keeps it cached) before any
    /// worker may take it; bounds the pause when that worker died.
    /// Default 10 s.
    pub sticky_timeout_ms: u64,
    /// A run's workflow continues as a new execution (same workflow id,
    /// its events carried) once its Temporal history holds this many
    /// events. Recorded in the run's workflow by whoever starts it.
    /// Default 4,000; at least 100, at most 20,000 (the calls in flight
    /// still finish after it, under the 40,000-event backstop).
    pub continue_as_new_after_events: u32,
    /// With `[store] backend = "postgres"`: Temporal payloads (node
    /// outputs, run inputs, reports, carried histories) larger than this
    /// are stored in the shared database and passed by reference, so runs
    /// are not held to Temporal's 2 MB per payload (see
    /// `temporal::payloads`). 0 = never. Default 128 KiB; at most
    /// 1,900,000.
    pub payload_offload_bytes: usize,
    /// Offloaded payloads unused for this long are deleted. Default 168
    /// (7 days); at least 1.
    pub payload_retention_hours: u32,
    /// With the payload offload (`[store] backend = "postgres"`): a run's
    /// turn that starts at least this many calls at once (a fan-out with
    /// that much concurrency) starts them as child workflows of this many
    /// calls each, and only the rest as its own activities. A child's
    /// history holds its calls' events, so the run's own history grows by
    /// a few events per child instead of per call. Recorded in the run's
    /// workflow by whoever starts it. Default 500; at most 1,000; 0 =
    /// never.
    pub child_workflow_calls: usize,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            engine: OrchestratorEngine::Embedded,
            address: None,
            namespace: "default".into(),
            task_queue: "soma".into(),
            connect_timeout_ms: 5_000,
            rpc_timeout_ms: 10_000,
            heartbeat_timeout_ms: 10_000,
            sticky_timeout_ms: 10_000,
            continue_as_new_after_events: CONTINUE_AS_NEW_AFTER,
            payload_offload_bytes: 128 * 1024,
            payload_retention_hours: 168,
            child_workflow_calls: 500,
        }
    }
}

impl OrchestratorConfig {
    /// Refuse settings the orchestrator cannot run with, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.engine == OrchestratorEngine::Temporal
            && self.address.as_deref().is_none_or(str::is_empty)
        {
            return Err(
                "orchestrator.engine = \"temporal\" needs orchestrator.address (HOST:PORT of \
                 the Temporal frontend, e.g. 127.0.0.1:7233)"
                    .into(),
            );
        }
        if self.namespace.is_empty() || self.task_queue.is_empty() {
            return Err("orchestrator.namespace and task_queue must not be empty".into());
        }
        if self.connect_timeout_ms == 0 || self.rpc_timeout_ms == 0 {
            return Err(
                "orchestrator.connect_timeout_ms and rpc_timeout_ms must be positive".into(),
            );
        }
        if self.heartbeat_timeout_ms < 1_000 || self.sticky_timeout_ms < 1_000 {
            return Err(
                "orchestrator.heartbeat_timeout_ms and sticky_timeout_ms must be at least 1000"
                    .into(),
            );
        }
        if !(100..=20_000).contains(&self.continue_as_new_after_events) {
            return Err(format!(
                "orchestrator.continue_as_new_after_events is {}; it must be between 100 and \
                 20000 (events of a run's Temporal history)",
                self.continue_as_new_after_events
            ));
        }
        if self.payload_offload_bytes > 1_900_000 {
            return Err(format!(
                "orchestrator.payload_offload_bytes is {}; it must be at most 1900000 (Temporal \
                 refuses payloads of 2 MB) or 0 to never offload",
                self.payload_offload_bytes
            ));
        }
        if self.child_workflow_calls > MAX_PENDING_ACTIVITIES {
            return Err(format!(
                "orchestrator.child_workflow_calls is {}; it must be at most {} (the calls a \
                 child workflow runs at once) or 0 to never start child workflows",
                self.child_workflow_calls, MAX_PENDING_ACTIVITIES
            ));
        }
        if self.payload_retention_hours == 0 {
            return Err("orchestrator.payload_retention_hours must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporal_needs_an_address() {
        let mut c = OrchestratorConfig {
            engine: OrchestratorEngine::Temporal,
            ..OrchestratorConfig::default()
        };
        assert!(c.check().expect_err("no address").contains("address"));
        c.address = Some("127.0.0.1:7233".into());
        c.check().expect("valid");
        OrchestratorConfig::default().check().expect("defaults");
    }

    #[test]
    fn heartbeat_and_sticky_timeouts_are_at_least_a_second() {
        let c = OrchestratorConfig {
            heartbeat_timeout_ms: 999,
            ..OrchestratorConfig::default()
        };
        assert!(
            c.check()
                .expect_err("too short")
                .contains("heartbeat_timeout_ms")
        );
        let c = OrchestratorConfig {
            sticky_timeout_ms: 0,
            ..OrchestratorConfig::default()
        };
        assert!(c.check().expect_err("zero").contains("sticky_timeout_ms"));
        let c: OrchestratorConfig =
            toml::from_str("heartbeat_timeout_ms = 2000\nsticky_timeout_ms = 1000\n")
                .expect("parses");
        c.check().expect("valid");
        assert_eq!((c.heartbeat_timeout_ms, c.sticky_timeout_ms), (2000, 1000));
        for bad in [99, 20_001] {
            let c = OrchestratorConfig {
                continue_as_new_after_events: bad,
                ..OrchestratorConfig::default()
            };
            assert!(
                c.check()
                    .expect_err("out of range")
                    .contains("continue_as_new_after_events")
            );
        }
    }

    #[test]
    fn child_workflow_calls_are_at_most_a_thousand() {
        let c: OrchestratorConfig = toml::from_str(
            "child_workflow_calls = 0
",
        )
        .expect("parses");
        c.check().expect("0 = never");
        let c = OrchestratorConfig {
            child_workflow_calls: 1_001,
            ..OrchestratorConfig::default()
        };
        assert!(
            c.check()
                .expect_err("too many")
                .contains("child_workflow_calls")
        );
        assert_eq!(OrchestratorConfig::default().child_workflow_calls, 500);
    }
}
