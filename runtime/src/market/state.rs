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
    /// The review failed; the reasons are on the record.
    Rejected,
    /// Countersigned by the marketplace: installable.
    Published,
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
            Self::Published => "published",
            Self::Yanked => "yanked",
            Self::Deprecated => "deprecated",
        }
    }

    /// Whether the marketplace has countersigned it (so a pin or digest
    /// resolves it): published, yanked or deprecated.
    pub fn was_published(self) -> bool {
        matches!(self, Self::Published | Self::Yanked | Self::Deprecated)
    }

    /// Whether `self → to` is allowed, and what to do instead if not.
    pub(crate) fn allows(self, to: Self) -> Result<(), &'static str> {
        use SubmissionState::*;
        match (self, to) {
            (Submitted, Approved | Rejected)
            | (Rejected, Approved | Rejected)
            | (Approved, Approved | Rejected | Published)
            | (Published, Yanked | Deprecated)
            | (Deprecated, Yanked) => Ok(()),
            (Submitted | Rejected, Published) => {
                Err(": the review must approve it first (soma market review)")
            }
            (_, Approved | Rejected) => Err(": the review decides only before publishing"),
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
