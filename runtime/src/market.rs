//! The capsule marketplace: listings, submissions, automated review,
//! publishing, search and installs (issue 14).
//!
//! [`review`] is the automated review a submission goes through before it
//! can be published: every step recorded as evidence with a reason code.

pub mod review;
