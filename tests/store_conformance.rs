//! The store conformance suite, run for every store durafn ships. The
//! PostgreSQL cases use `DATABASE_URL` (the local server by default), a
//! fresh schema each, dropped after.

mod common;

use std::sync::Arc;

use durafn::store::Store;

mod memory {
    use super::*;

    durafn::store_conformance!(|| async {
        Arc::new(durafn::store::MemoryStore::new()) as Arc<dyn Store>
    });
}

mod sqlite {
    use super::*;

    durafn::store_conformance!(|| async {
        // The directory lives as long as the test process.
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let store = durafn::store::SqliteStore::open(
            dir.path().join("conformance.db"),
            durafn::store::SqliteSync::Normal,
        )
        .unwrap();
        Arc::new(store) as Arc<dyn Store>
    });
}

mod postgres {
    durafn::store_conformance!(|| super::common::pg_store("conformance"));
}
