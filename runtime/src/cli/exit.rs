//! Exit codes: one table, shared by every subcommand. Scripts can rely on
//! these; they are listed in `docs/cli.md`.

use std::process::ExitCode;

use soma_runtime::{
    Failure, FailureClass, LoadError, ResolveError, market::error::MarketError, oci::OciError,
};

/// What `soma` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    Ok = 0,
    /// Any other error (I/O, bad config, bad flags detected after parsing).
    Error = 1,
    // 2 is clap's usage error.
    CapsuleError = 10,
    OutOfFuel = 11,
    DeadlineExceeded = 12,
    MemoryLimit = 13,
    StackOverflow = 14,
    Trap = 15,
    OutputLimit = 16,
    InputLimit = 17,
    Denied = 18,
    HostError = 19,
    InvalidComponent = 20,
    /// The trust policy refused an artifact (unsigned, wrong key, …).
    Untrusted = 21,
    /// The registry refused or could not be reached (401/403/404/5xx/down).
    Registry = 22,
    /// A DAG run ended failed (a node failed for good, or a gate rejected).
    DagFailed = 23,
    /// A DAG run was cancelled.
    DagCancelled = 24,
    /// A DAG run was interrupted (Ctrl-C / SIGTERM); `soma dag resume` continues it.
    DagInterrupted = 25,
    /// A DAG spec (or a run's input) is invalid; nothing ran.
    InvalidSpec = 26,
    /// A budget could not cover the call's worst-case cost; it did not run.
    BudgetExceeded = 27,
    /// A store resource other than memory hit its limit (table elements,
    /// instances, tables, memories).
    ResourceLimit = 28,
    /// A marketplace rule refused the operation: an immutable version, a
    /// foreign namespace, a state that does not allow it, no matching version.
    MarketRefused = 29,
    /// `soma review`, `market submit`, `market review ID`: the marketplace
    /// review rejected the capsule; `market retest`: a version failed its re-test.
    ReviewRejected = 30,
}

impl Code {
    /// The class name of an error that ended a command early, for `--json`
    /// output (`invalid-component`, `untrusted`, `registry`, …).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::CapsuleError => "capsule-error",
            Self::OutOfFuel => "out-of-fuel",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::MemoryLimit => "memory-limit",
            Self::StackOverflow => "stack-overflow",
            Self::Trap => "trap",
            Self::OutputLimit => "output-limit",
            Self::InputLimit => "input-limit",
            Self::Denied => "denied",
            Self::HostError => "host-error",
            Self::InvalidComponent => "invalid-component",
            Self::Untrusted => "untrusted",
            Self::Registry => "registry",
            Self::DagFailed => "dag-failed",
            Self::DagCancelled => "dag-cancelled",
            Self::DagInterrupted => "dag-interrupted",
            Self::InvalidSpec => "invalid-spec",
            Self::BudgetExceeded => "budget-exceeded",
            Self::ResourceLimit => "resource-limit",
            Self::MarketRefused => "market-refused",
            Self::ReviewRejected => "review-rejected",
        }
    }

    /// The code for a call's failure.
    pub(crate) fn of_failure(f: &Failure) -> Self {
        Self::of_class(f.class())
    }

    /// The code for a failure class (a local call's, or as the daemon
    /// reports it): the one table from classes to exit codes.
    pub(crate) fn of_class(class: FailureClass) -> Self {
        match class {
            FailureClass::CapsuleError => Self::CapsuleError,
            FailureClass::OutOfFuel => Self::OutOfFuel,
            FailureClass::DeadlineExceeded => Self::DeadlineExceeded,
            FailureClass::MemoryLimit => Self::MemoryLimit,
            FailureClass::ResourceLimit => Self::ResourceLimit,
            FailureClass::InvalidComponent => Self::InvalidComponent,
            FailureClass::StackOverflow => Self::StackOverflow,
            FailureClass::Trap => Self::Trap,
            FailureClass::OutputLimit => Self::OutputLimit,
            FailureClass::InputLimit => Self::InputLimit,
            FailureClass::Denied => Self::Denied,
            FailureClass::HostError => Self::HostError,
            FailureClass::BudgetExceeded => Self::BudgetExceeded,
        }
    }

    /// The code for how a DAG run ended (`None` while it has not).
    pub(crate) fn of_run(status: soma_runtime::dag::status::RunPhase) -> Self {
        use soma_runtime::dag::status::RunPhase;
        match status {
            RunPhase::Failed => Self::DagFailed,
            RunPhase::Cancelled => Self::DagCancelled,
            RunPhase::Succeeded | RunPhase::Queued | RunPhase::Running | RunPhase::Interrupted => {
                Self::Ok
            }
        }
    }

    /// The code for an error that ended a command early.
    pub(crate) fn of_error(e: &anyhow::Error) -> Self {
        if let Some(resolve) = e.downcast_ref::<ResolveError>() {
            return match resolve {
                ResolveError::Oci(oci) => Self::of_oci(oci),
                ResolveError::Trust(_) => Self::Untrusted,
                ResolveError::Market(m) => Self::of_market(m),
                ResolveError::Load(LoadError::Read { .. }) => Self::Error,
                ResolveError::Load(_) => Self::InvalidComponent,
                _ => Self::Error,
            };
        }
        if let Some(oci) = e.downcast_ref::<OciError>() {
            return Self::of_oci(oci);
        }
        if let Some(m) = e.downcast_ref::<MarketError>() {
            return Self::of_market(m);
        }
        if let Some(p) = e.downcast_ref::<soma_runtime::market::pricing::PricingError>() {
            use soma_runtime::market::pricing::PricingError;
            return match p {
                PricingError::Market(m) => Self::of_market(m),
                PricingError::BadPrice { .. } => Self::InvalidSpec,
                PricingError::NotPublished { .. } => Self::MarketRefused,
            };
        }
        if let Some(soma_runtime::market::payouts::PayoutError::Market(m)) =
            e.downcast_ref::<soma_runtime::market::payouts::PayoutError>()
        {
            return Self::of_market(m);
        }
        if e.downcast_ref::<soma_runtime::verify::VerifyError>()
            .is_some()
        {
            return Self::Untrusted;
        }
        match e.downcast_ref::<LoadError>() {
            Some(LoadError::Read { .. }) | None => Self::Error,
            Some(_) => Self::InvalidComponent,
        }
    }
}

impl Code {
    /// The code for a marketplace operation's error.
    fn of_market(m: &MarketError) -> Self {
        match m {
            MarketError::Oci(oci) => Self::of_oci(oci),
            MarketError::Verify(_)
            | MarketError::WrongAuthorKey { .. }
            | MarketError::AuthorSignature { .. }
            | MarketError::BadProof { .. } => Self::Untrusted,
            MarketError::ForeignNamespace { .. } | MarketError::NamespaceOwned { .. } => {
                Self::Denied
            }
            MarketError::Listing(_) => Self::InvalidSpec,
            MarketError::AuthorExists { .. }
            | MarketError::KeyTaken { .. }
            | MarketError::NoSuchAuthor { .. }
            | MarketError::VersionImmutable { .. }
            | MarketError::NoSuchVersion { .. }
            | MarketError::BadTransition { .. }
            | MarketError::NoMatch { .. }
            | MarketError::UnknownDigest { .. }
            | MarketError::PinOutsideRange { .. }
            | MarketError::TooManyPins { .. }
            | MarketError::TooManyAuthors { .. }
            | MarketError::NotApprovable { .. }
            | MarketError::ReasonRequired { .. } => Self::MarketRefused,
            MarketError::ComponentMismatch { .. } => Self::Untrusted,
            MarketError::Open(_)
            | MarketError::Storage(_)
            | MarketError::Shared(_)
            | MarketError::Corrupt { .. }
            | MarketError::BadName { .. }
            | MarketError::BadRange { .. }
            | MarketError::NotConfigured { .. }
            | MarketError::Lock { .. }
            | MarketError::Review { .. }
            | MarketError::SearchLocked { .. }
            | MarketError::Search(_) => Self::Error,
        }
    }

    /// The code for a registry operation's error.
    fn of_oci(oci: &OciError) -> Self {
        match oci {
            OciError::Invalid(LoadError::Read { .. }) => Self::Error,
            OciError::Invalid(_) => Self::InvalidComponent,
            OciError::Untrusted(_) => Self::Untrusted,
            OciError::BadReference { .. }
            | OciError::Cache { .. }
            | OciError::DockerConfig { .. } => Self::Error,
            _ => Self::Registry,
        }
    }
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> Self {
        ExitCode::from(c as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_class_has_its_own_code_named_like_it() {
        let mut codes = std::collections::BTreeSet::new();
        for class in FailureClass::ALL {
            let code = Code::of_class(class);
            assert_eq!(code.name(), class.name(), "{class:?}");
            assert!(
                codes.insert(code as u8),
                "{class} shares exit code {}",
                code as u8
            );
        }
    }
}
