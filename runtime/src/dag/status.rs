//! The names of where a run and a node are, as the journal, `soma dag`,
//! the daemon's API and its metrics show them. Their serde and
//! [`Display`](std::fmt::Display) forms are kebab-case names that scripts
//! and stored journals rely on.

use serde::{Deserialize, Serialize};

use crate::call::FailureClass;

crate::names::named_enum! {
    /// Where a DAG run is: [`RunStatus`](super::history::RunStatus) once it has finished, else queued
    /// (the daemon has not started it), running (a process works on it, or was
    /// killed doing so) or interrupted (nothing works on it; resumable).
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
        utoipa::ToSchema,
    )]
    #[serde(rename_all = "kebab-case")]
    pub enum RunPhase: "run status" {
        /// Accepted by the daemon; no driver has taken it yet.
        Queued = "queued",
        /// A process is driving it (or was killed doing so).
        Running = "running",
        /// Not finished and nothing is driving it; `soma dag resume` continues it.
        Interrupted = "interrupted",
        /// Every node succeeded (or was caught) and the output rendered.
        Succeeded = "succeeded",
        /// A node failed for good, or the output could not be rendered.
        Failed = "failed",
        /// Cancelled on request.
        Cancelled = "cancelled",
    }
}

impl RunPhase {
    /// Whether the run has ended (succeeded, failed or cancelled).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

crate::names::named_enum! {
    /// Where a node is, by name (the data of
    /// [`Status`](super::state::Status) left out).
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
        utoipa::ToSchema,
    )]
    #[serde(rename_all = "kebab-case")]
    pub enum NodeStatus: "node status" {
        /// Waiting for its dependencies (or for a slot).
        Waiting = "waiting",
        /// An attempt is in flight.
        Running = "running",
        /// Failed; retried after a backoff.
        Retrying = "retrying",
        /// Its call succeeded; it waits for a human verdict (`approval:`).
        AwaitingApproval = "awaiting-approval",
        /// A planner whose plan is running.
        Expanded = "expanded",
        /// A `for_each` node whose instances are running.
        FannedOut = "fanned-out",
        /// Done, with an output.
        Succeeded = "succeeded",
        /// Failed for good.
        Failed = "failed",
        /// Not run: something it depends on failed.
        Skipped = "skipped",
    }
}

/// Why a DAG node failed: a call's [`FailureClass`], or one the scheduler
/// found itself. Serialized as the bare kebab-case name (`out-of-fuel`,
/// `template`, `gate-rejected`, …), as journals store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeFailureClass {
    /// The call failed.
    Call(FailureClass),
    /// The node's input template could not be rendered.
    Template,
    /// The rendered input was larger than `dag.max_rendered_input_bytes`.
    RenderLimit,
    /// A gate returned something that is not a verdict.
    InvalidVerdict,
    /// A gate rejected the work for the last time.
    GateRejected,
    /// A human (or an approval's `on_timeout`) rejected the node's output.
    ApprovalRejected,
    /// A planner's plan would nest or grow the run past its policy.
    ExpansionLimit,
    /// A planner returned something that is not a valid plan.
    InvalidPlan,
}

impl NodeFailureClass {
    /// The classes the scheduler finds itself.
    const SCHEDULER: [Self; 7] = [
        Self::Template,
        Self::RenderLimit,
        Self::InvalidVerdict,
        Self::GateRejected,
        Self::ApprovalRejected,
        Self::ExpansionLimit,
        Self::InvalidPlan,
    ];

    /// The kebab-case name (the serde form).
    pub fn name(self) -> &'static str {
        match self {
            Self::Call(class) => class.name(),
            Self::Template => "template",
            Self::RenderLimit => "render-limit",
            Self::InvalidVerdict => "invalid-verdict",
            Self::GateRejected => "gate-rejected",
            Self::ApprovalRejected => "approval-rejected",
            Self::ExpansionLimit => "expansion-limit",
            Self::InvalidPlan => "invalid-plan",
        }
    }

    /// The class named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        FailureClass::from_name(name)
            .map(Self::Call)
            .or_else(|| Self::SCHEDULER.into_iter().find(|c| c.name() == name))
    }

    /// Every class's name: the call's, then the scheduler's.
    pub fn names() -> &'static [&'static str] {
        static NAMES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
            FailureClass::ALL
                .into_iter()
                .map(NodeFailureClass::Call)
                .chain(NodeFailureClass::SCHEDULER)
                .map(NodeFailureClass::name)
                .collect()
        });
        &NAMES
    }
}

impl std::str::FromStr for NodeFailureClass {
    type Err = crate::names::UnknownName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::from_name(name).ok_or_else(|| crate::names::UnknownName {
            what: "node failure class",
            name: name.to_owned(),
            accepted: Self::names(),
        })
    }
}

impl utoipa::PartialSchema for NodeFailureClass {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let names = Self::names().iter().copied();
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(names))
            .description(Some(
                "A call's failure class, or one the scheduler found (template, render-limit, invalid-verdict, gate-rejected, approval-rejected, expansion-limit, invalid-plan).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for NodeFailureClass {}

impl From<FailureClass> for NodeFailureClass {
    fn from(class: FailureClass) -> Self {
        Self::Call(class)
    }
}

impl std::fmt::Display for NodeFailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl Serialize for NodeFailureClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for NodeFailureClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::history::RunStatus;

    fn all_node_failure_classes() -> Vec<NodeFailureClass> {
        FailureClass::ALL
            .into_iter()
            .map(NodeFailureClass::Call)
            .chain(NodeFailureClass::SCHEDULER)
            .collect()
    }

    #[test]
    fn node_failure_classes_round_trip_by_name() {
        let all = FailureClass::ALL
            .into_iter()
            .map(NodeFailureClass::Call)
            .chain(NodeFailureClass::SCHEDULER);
        let mut names = std::collections::BTreeSet::new();
        for class in all {
            let json = serde_json::to_string(&class).expect("serialize");
            assert_eq!(json, format!("\"{class}\""));
            let back: NodeFailureClass = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, class);
            assert!(names.insert(class.name()), "{class} named twice");
        }
        let e = serde_json::from_str::<NodeFailureClass>("\"nope\"").expect_err("unknown");
        assert!(
            e.to_string().contains(
                "unknown node failure class `nope`: expected one of \
                 out-of-fuel, deadline-exceeded"
            ) && e.to_string().contains("invalid-plan"),
            "{e}"
        );
        crate::names::assert_names(&all_node_failure_classes(), NodeFailureClass::names());
    }

    #[test]
    fn phases_name_their_serde_forms() {
        for (phase, name) in [
            (RunPhase::Queued, "queued"),
            (RunPhase::Running, "running"),
            (RunPhase::Interrupted, "interrupted"),
            (RunPhase::Succeeded, "succeeded"),
            (RunPhase::Failed, "failed"),
            (RunPhase::Cancelled, "cancelled"),
        ] {
            assert_eq!(serde_json::to_value(phase).expect("json"), name);
            assert_eq!(phase.to_string(), name);
        }
        assert_eq!(
            serde_json::to_value(NodeStatus::FannedOut).expect("json"),
            "fanned-out"
        );
        assert_eq!(RunPhase::from(RunStatus::Cancelled), RunPhase::Cancelled);
        crate::names::assert_names(&RunPhase::ALL, &RunPhase::NAMES);
        crate::names::assert_names(&NodeStatus::ALL, &NodeStatus::NAMES);
    }
}
