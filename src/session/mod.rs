//! Sessions (not built yet).
