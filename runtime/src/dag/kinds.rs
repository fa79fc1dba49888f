//! Which capsule kinds a node may use: a node with `gate:` needs a gate
//! capsule, a gate capsule needs `gate:`, a planner cannot fan out. Checked
//! when a run is created and again on every plan a planner splices in.

use super::spec::NodeSpec;
use crate::capsule::CapsuleKind;

/// A node that names a capsule of the wrong kind, or one not loaded.
/// Becomes [`DagError::Kind`](super::scheduler::DagError::Kind) or
/// [`DagError::MissingCapsule`](super::scheduler::DagError::MissingCapsule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// A node uses a capsule of the wrong kind.
    #[error("node `{node}`: {message}")]
    Kind {
        /// The node.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// A capsule alias has no loaded component.
    #[error("capsule `{0}` is not loaded")]
    MissingCapsule(String),
}

/// Check the spec's nodes against their capsules' kinds: a node with
/// `gate:` needs a gate capsule and a gate capsule needs `gate:`; a
/// planner cannot fan out.
pub fn check_kinds(
    nodes: &[NodeSpec],
    kind_of: impl Fn(&str) -> Option<CapsuleKind>,
) -> Result<(), KindError> {
    for n in nodes {
        let kind =
            kind_of(&n.capsule).ok_or_else(|| KindError::MissingCapsule(n.capsule.clone()))?;
        if kind == CapsuleKind::Planner && n.approval.as_ref().is_some_and(|a| a.required) {
            return Err(KindError::Kind {
                node: n.id.clone(),
                message: "a planner node cannot require `approval` (its output is a plan); \
                          put `approval` on the plan's nodes or on a node after it"
                    .to_owned(),
            });
        }
        let message = match (kind, &n.gate, &n.for_each) {
            (CapsuleKind::Gate, None, _) => format!(
                "capsule `{}` is a gate; give the node `gate: {{node: …}}`",
                n.capsule
            ),
            (CapsuleKind::Gate, Some(_), _)
            | (CapsuleKind::Worker, None, _)
            | (CapsuleKind::Planner, None, None) => continue,
            (_, Some(_), _) => format!(
                "has `gate:` but capsule `{}` is a {kind}, not a gate",
                n.capsule
            ),
            (CapsuleKind::Planner, None, Some(_)) => {
                "a planner node cannot use for_each (plans are spliced once)".to_owned()
            }
        };
        return Err(KindError::Kind {
            node: n.id.clone(),
            message,
        });
    }
    Ok(())
}
