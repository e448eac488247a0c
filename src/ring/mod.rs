//! io_uring driver (not built yet).
