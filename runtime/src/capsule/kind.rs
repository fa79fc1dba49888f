//! [`CapsuleKind`]: what a capsule says it is in `describe()`. The DAG
//! scheduler decides by it how a node's output is used (a planner's plan is
//! spliced in, a gate's verdict approves or returns work).

use serde::{Deserialize, Serialize};
use soma_host_api::bindings::soma::capsule::types as wit;

crate::names::named_enum! {
    /// A capsule's kind. Serialized (API, journal, `soma inspect`, the OCI
    /// annotation) as `worker`, `planner` or `gate`.
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
    pub enum CapsuleKind: "capsule kind" {
        /// Does one task: input → output.
        Worker = "worker",
        /// Decomposes a goal into a sub-DAG (its output is a plan).
        Planner = "planner",
        /// Approves or returns work with feedback (its output is a verdict).
        Gate = "gate",
    }
}

impl From<wit::CapsuleKind> for CapsuleKind {
    fn from(kind: wit::CapsuleKind) -> Self {
        match kind {
            wit::CapsuleKind::Worker => Self::Worker,
            wit::CapsuleKind::Planner => Self::Planner,
            wit::CapsuleKind::Gate => Self::Gate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_form_is_the_name() {
        for kind in [CapsuleKind::Worker, CapsuleKind::Planner, CapsuleKind::Gate] {
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(
                serde_json::from_str::<CapsuleKind>(&json).expect("back"),
                kind
            );
        }
        crate::names::assert_names(&CapsuleKind::ALL, &CapsuleKind::NAMES);
    }
}
