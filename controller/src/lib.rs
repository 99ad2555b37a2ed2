//! The recfleet controller (REST API, warm pool, state, storage, metrics) grows here.
