//! Topic names, filters, the subscription trie and retained messages (not built yet).
