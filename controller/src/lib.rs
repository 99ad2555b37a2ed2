//! The recfleet controller: REST API, warm pool of bots, runtimes, state store, storage and
//! metrics. Being built; today it holds the warm pool's pure plan.

pub mod pool;
