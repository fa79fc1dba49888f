//! [`Failure`]: everything a call can end in other than an output, one
//! variant per cause, and its [`FailureClass`]. Below `capsule` (a capsule
//! whose `describe()` fails holds one) and `call` (which classifies what
//! wasmtime reports into one); `call` re-exports both.

use serde::Serialize;

mod class;
pub use class::FailureClass;

/// Everything a call can end in other than an output. One class per cause;
/// the CLI, API and ledger show these the same way.
///
/// A failure caused by a limit names, in `advice`, the knob that would
/// change the outcome (the operator's `soma.toml` key, the caller's flag or
/// request field, or the capsule's own request): computed from where the
/// effective limit came from, so no message suggests a knob that cannot help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "class", rename_all = "kebab-case")]
pub enum Failure {
    /// The deterministic budget ran out.
    #[error("out of fuel: the call used its whole budget of {limit} fuel units ({advice})")]
    OutOfFuel {
        /// The budget.
        limit: u64,
        /// What would change the outcome.
        advice: String,
    },
    /// The wall-clock deadline passed.
    #[error("deadline exceeded: the call ran past its {timeout_ms} ms deadline ({advice})")]
    DeadlineExceeded {
        /// The deadline.
        timeout_ms: u64,
        /// What would change the outcome.
        advice: String,
    },
    /// Linear-memory growth past the limit was refused. This is the class
    /// of the call however the capsule carried on after the refusal (it
    /// may abort, retry until its fuel or deadline runs out, …): the first
    /// limit that refused is the cause.
    #[error(
        "memory limit: the capsule asked for {requested} bytes of linear memory; the limit is {limit} ({advice}){}",
        then_text(then)
    )]
    MemoryLimit {
        /// What it asked for (all memories together).
        requested: u64,
        /// The limit.
        limit: u64,
        /// What would change the outcome.
        advice: String,
        /// What ended the call after the refusal, if the capsule carried on
        /// (e.g. `ran out of fuel`).
        #[serde(skip_serializing_if = "Option::is_none")]
        then: Option<String>,
    },
    /// A store resource other than linear memory hit its limit: table
    /// elements, or the number of instances, tables or memories.
    #[error(
        "resource limit: the capsule needed {requested} {resource}; the limit is {limit} ({advice}){}",
        then_text(then)
    )]
    ResourceLimit {
        /// `table elements`, `instances`, `tables` or `memories`.
        resource: &'static str,
        /// How many it needed.
        requested: u64,
        /// The limit.
        limit: u64,
        /// What would change the outcome.
        advice: String,
        /// What ended the call after the refusal, if the capsule carried on.
        #[serde(skip_serializing_if = "Option::is_none")]
        then: Option<String>,
    },
    /// The wasm call stack overflowed (usually unbounded recursion).
    #[error(
        "stack overflow: the capsule exceeded the {limit_kb} KiB wasm stack (unbounded recursion? the limit is engine.max_wasm_stack_kb)"
    )]
    StackOverflow {
        /// The stack limit.
        limit_kb: usize,
    },
    /// Any other trap: `unreachable` (a Rust panic), out-of-bounds access, bad ABI data…
    #[error("trap ({kind}): {message}")]
    Trap {
        /// Kebab-case trap kind, e.g. `unreachable-code-reached`.
        kind: String,
        /// Details, with the top of the wasm backtrace.
        message: String,
    },
    /// The output (or one guest→host transfer) was larger than allowed.
    #[error(
        "output limit: the capsule passed more than {limit} bytes to the host in one transfer (limits.max_output_bytes)"
    )]
    OutputLimit {
        /// The limit.
        limit: usize,
    },
    /// The input was larger than allowed.
    #[error(
        "input limit: the input is {size} bytes; the limit is {limit} (limits.max_input_bytes)"
    )]
    InputLimit {
        /// Input size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A grant was asked for that the capsule or the operator does not allow.
    #[error("denied: {message}")]
    Denied {
        /// What was denied and why.
        message: String,
    },
    /// The capsule returned an error of its own.
    #[error("capsule error [{code}]: {message}")]
    CapsuleError {
        /// The capsule's code.
        code: String,
        /// The capsule's message.
        message: String,
        /// Whether a retry may succeed.
        retryable: bool,
    },
    /// The component could not be loaded, so it was never called (a DAG
    /// node whose capsule failed to load, with `catch: true`).
    #[error("invalid component: {message}")]
    InvalidComponent {
        /// Why it could not be loaded.
        message: String,
    },
    /// The host failed (e.g. the database could not commit); not the capsule's fault.
    #[error("host error: {message}")]
    Host {
        /// What failed.
        message: String,
    },
    /// A budget cannot cover the call's worst-case cost, so it did not
    /// start (nothing was charged).
    #[error("budget exceeded: {message}")]
    BudgetExceeded {
        /// Which budget, what it holds, and what to change.
        message: String,
    },
}

/// `; after the refusal the capsule went on and …`, or nothing.
fn then_text(then: &Option<String>) -> String {
    then.as_ref().map_or_else(String::new, |t| {
        format!("; after the refusal the capsule went on and {t}")
    })
}

impl Failure {
    /// The class (`out-of-fuel`, `deadline-exceeded`, …).
    pub fn class(&self) -> FailureClass {
        match self {
            Self::OutOfFuel { .. } => FailureClass::OutOfFuel,
            Self::DeadlineExceeded { .. } => FailureClass::DeadlineExceeded,
            Self::MemoryLimit { .. } => FailureClass::MemoryLimit,
            Self::ResourceLimit { .. } => FailureClass::ResourceLimit,
            Self::StackOverflow { .. } => FailureClass::StackOverflow,
            Self::Trap { .. } => FailureClass::Trap,
            Self::OutputLimit { .. } => FailureClass::OutputLimit,
            Self::InputLimit { .. } => FailureClass::InputLimit,
            Self::Denied { .. } => FailureClass::Denied,
            Self::CapsuleError { .. } => FailureClass::CapsuleError,
            Self::InvalidComponent { .. } => FailureClass::InvalidComponent,
            Self::Host { .. } => FailureClass::HostError,
            Self::BudgetExceeded { .. } => FailureClass::BudgetExceeded,
        }
    }

    /// Whether running the same call again may succeed (schedulers retry only these).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::DeadlineExceeded { .. } | Self::Host { .. } => true,
            Self::CapsuleError { retryable, .. } => *retryable,
            _ => false,
        }
    }
}
