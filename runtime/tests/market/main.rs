//! The marketplace end to end, one module per part: the publish-install
//! lifecycle against a real registry (`lifecycle`), the daemon's
//! `/v1/market` API (`api`), the measured cost card (`card`), issue 14's
//! acceptance test (`acceptance`), fees (`fees`), the submission pipeline
//! (`flow`), the automated review (`review`) and search (`search`). One
//! test binary: each file linked alone cost a ~220 MB link (docs/ci.md).

mod acceptance;
mod api;
mod card;
mod fees;
mod flow;
mod lifecycle;
mod review;
mod search;
