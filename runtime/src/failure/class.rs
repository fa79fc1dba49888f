//! [`FailureClass`]: the one name of each way a call can fail. One table
//! ([`FailureClass::ALL`] and [`FailureClass::name`]) drives the JSON
//! (`"class"` in CLI and API answers, the DAG journal's node failures), the
//! metric labels (`outcome`), and — through `soma`'s exit-code table — the
//! process exit code.

use serde::{Deserialize, Serialize};

/// The class of a [`Failure`](super::Failure): its serde and
/// [`Display`](std::fmt::Display) forms are the kebab-case names below
/// (`out-of-fuel`, `host-error`, …), which scripts, dashboards and journals
/// rely on.
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
pub enum FailureClass {
    /// The fuel budget ran out.
    OutOfFuel,
    /// The wall-clock deadline passed (or the caller went away).
    DeadlineExceeded,
    /// Linear memory hit its limit.
    MemoryLimit,
    /// Another store resource hit its limit (table elements, instances, …).
    ResourceLimit,
    /// The wasm stack overflowed.
    StackOverflow,
    /// The capsule trapped (a panic, `unreachable`, a bad access).
    Trap,
    /// The output was larger than allowed.
    OutputLimit,
    /// The input was larger than allowed.
    InputLimit,
    /// A host capability was denied.
    Denied,
    /// The capsule returned an error of its own.
    CapsuleError,
    /// The component could not be loaded.
    InvalidComponent,
    /// The host failed; not the capsule's fault.
    HostError,
    /// A budget could not cover the call's worst-case cost.
    BudgetExceeded,
}

impl FailureClass {
    /// Every class, in declaration order.
    pub const ALL: [Self; 13] = [
        Self::OutOfFuel,
        Self::DeadlineExceeded,
        Self::MemoryLimit,
        Self::ResourceLimit,
        Self::StackOverflow,
        Self::Trap,
        Self::OutputLimit,
        Self::InputLimit,
        Self::Denied,
        Self::CapsuleError,
        Self::InvalidComponent,
        Self::HostError,
        Self::BudgetExceeded,
    ];

    /// The kebab-case name (the serde form). Free: a static string.
    pub fn name(self) -> &'static str {
        match self {
            Self::OutOfFuel => "out-of-fuel",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::MemoryLimit => "memory-limit",
            Self::ResourceLimit => "resource-limit",
            Self::StackOverflow => "stack-overflow",
            Self::Trap => "trap",
            Self::OutputLimit => "output-limit",
            Self::InputLimit => "input-limit",
            Self::Denied => "denied",
            Self::CapsuleError => "capsule-error",
            Self::InvalidComponent => "invalid-component",
            Self::HostError => "host-error",
            Self::BudgetExceeded => "budget-exceeded",
        }
    }

    /// The class named `name` (as [`FailureClass::name`] prints it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The metric label of a call's outcome: `ok`, or the class name.
    pub fn outcome_label(class: Option<Self>) -> &'static str {
        class.map_or("ok", Self::name)
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl PartialEq<&str> for FailureClass {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_forms_and_round_trip() {
        for class in FailureClass::ALL {
            let json = serde_json::to_string(&class).expect("serialize");
            assert_eq!(json, format!("\"{}\"", class.name()));
            assert_eq!(class.to_string(), class.name());
            assert_eq!(FailureClass::from_name(class.name()), Some(class));
            let back: FailureClass = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, class);
        }
        assert_eq!(FailureClass::from_name("ok"), None);
        assert_eq!(FailureClass::outcome_label(None), "ok");
    }
}
