//! [`SubmissionState`]: where a submitted version is in its life, and the
//! moves allowed between states (below both the store and its errors).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a submitted version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubmissionState {
    /// Submitted; the review has not decided.
    Submitted,
    /// The review passed (and a reviewer approved, if policy asks).
    Approved,
    /// The review failed (or a reviewer rejected it); the reasons are on the record.
    Rejected,
    /// The automated review passed and the marketplace's policy
    /// (`[market] manual_approval`) waits for a reviewer's
    /// `soma market review approve|reject`.
    AwaitingApproval,
    /// Countersigned by the marketplace: installable.
    Published,
    /// Published, but its nightly re-tests failed 3 times in a row: still
    /// installable and resolved by ranges, ranked lower by search; a passing
    /// re-test makes it `published` again, 30 days make it `deprecated`.
    UnderMaintenance,
    /// Hidden from ranges; a pinned digest still resolves.
    Yanked,
    /// Hidden from ranges; a pinned digest still resolves.
    Deprecated,
}

impl SubmissionState {
    /// The printed name (`published`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::AwaitingApproval => "awaiting-approval",
            Self::Published => "published",
            Self::UnderMaintenance => "under-maintenance",
            Self::Yanked => "yanked",
            Self::Deprecated => "deprecated",
        }
    }

    /// Whether the marketplace has countersigned it (so a pin or digest
    /// resolves it): published, under maintenance, yanked or deprecated.
    pub fn was_published(self) -> bool {
        matches!(
            self,
            Self::Published | Self::UnderMaintenance | Self::Yanked | Self::Deprecated
        )
    }

    /// Whether ranges resolve it (and search shows it): published or under
    /// maintenance.
    pub fn is_listed(self) -> bool {
        matches!(self, Self::Published | Self::UnderMaintenance)
    }

    /// Whether a move to this state records a review decision (which may
    /// replace an earlier one, so it is not a no-op when repeated).
    pub(crate) fn is_review_decision(self) -> bool {
        matches!(
            self,
            Self::Approved | Self::Rejected | Self::AwaitingApproval
        )
    }

    /// Whether `self → to` is allowed, and what to do instead if not.
    pub(crate) fn allows(self, to: Self) -> Result<(), &'static str> {
        use SubmissionState::*;
        match (self, to) {
            (
                Submitted | Rejected | Approved | AwaitingApproval,
                Approved | Rejected | AwaitingApproval,
            )
            | (Approved, Published)
            | (Published, UnderMaintenance | Yanked | Deprecated)
            | (UnderMaintenance, Published | Yanked | Deprecated)
            | (Deprecated, Yanked) => Ok(()),
            (Submitted | Rejected, Published) => {
                Err(": the review must approve it first (soma market review)")
            }
            (AwaitingApproval, Published) => Err(
                ": it awaits a reviewer (soma market review approve ID, or review reject ID --reason R)",
            ),
            (_, Approved | Rejected | AwaitingApproval) => {
                Err(": the review decides only before publishing")
            }
            (_, UnderMaintenance) => Err(": only a published version goes under maintenance"),
            (Yanked, _) => Err(": a yanked version stays yanked; publish a new version"),
            _ => Err(""),
        }
    }
}

impl fmt::Display for SubmissionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
