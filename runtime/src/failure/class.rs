//! [`FailureClass`]: the one name of each way a call can fail. One table
//! (the [`named_enum!`](crate::names) below: [`FailureClass::ALL`] and
//! [`FailureClass::name`]) drives the JSON
//! (`"class"` in CLI and API answers, the DAG journal's node failures), the
//! metric labels (`outcome`), and — through `soma`'s exit-code table — the
//! process exit code.

use serde::{Deserialize, Serialize};

crate::names::named_enum! {
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
    pub enum FailureClass: "failure class" {
        /// The fuel budget ran out.
        OutOfFuel = "out-of-fuel",
        /// The wall-clock deadline passed (or the caller went away).
        DeadlineExceeded = "deadline-exceeded",
        /// Linear memory hit its limit.
        MemoryLimit = "memory-limit",
        /// Another store resource hit its limit (table elements, instances, …).
        ResourceLimit = "resource-limit",
        /// The wasm stack overflowed.
        StackOverflow = "stack-overflow",
        /// The capsule trapped (a panic, `unreachable`, a bad access).
        Trap = "trap",
        /// The output was larger than allowed.
        OutputLimit = "output-limit",
        /// The input was larger than allowed.
        InputLimit = "input-limit",
        /// A host capability was denied.
        Denied = "denied",
        /// The capsule returned an error of its own.
        CapsuleError = "capsule-error",
        /// The component could not be loaded.
        InvalidComponent = "invalid-component",
        /// The host failed; not the capsule's fault.
        HostError = "host-error",
        /// A budget could not cover the call's worst-case cost.
        BudgetExceeded = "budget-exceeded",
    }
}

impl FailureClass {
    /// The class named `name` (as [`FailureClass::name`] prints it).
    pub fn from_name(name: &str) -> Option<Self> {
        name.parse().ok()
    }

    /// The metric label of a call's outcome: `ok`, or the class name.
    pub fn outcome_label(class: Option<Self>) -> &'static str {
        class.map_or("ok", Self::name)
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
        crate::names::assert_names(&FailureClass::ALL, &FailureClass::NAMES);
        let e = "ok".parse::<FailureClass>().expect_err("not a class");
        assert!(
            e.to_string()
                .starts_with("unknown failure class `ok`: expected one of out-of-fuel, "),
            "{e}"
        );
        assert_eq!(FailureClass::outcome_label(None), "ok");
    }
}
