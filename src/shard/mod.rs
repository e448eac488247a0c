//! Shard event loop (not built yet).
