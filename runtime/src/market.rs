//! The capsule marketplace: listings published by outside authors, found by
//! search, installed by other tenants (issue 14; `docs/marketplace-search.md`
//! for search).

pub mod search; // search: full text with typo tolerance, facets, ranking over published listings
