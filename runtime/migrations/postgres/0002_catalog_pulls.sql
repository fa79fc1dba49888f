-- The capsules operators pulled into the catalog (`POST /v1/capsules/pull`),
-- shared by every daemon of a fleet (see runtime/src/daemon/catalog.rs).
-- `record` is the pull as JSON: name, pinned reference, component digest,
-- when and by whom; never the bytes (each node keeps its verified copy in
-- its blob cache, or pulls it again through its own trust policy).
CREATE TABLE catalog_pulls (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
