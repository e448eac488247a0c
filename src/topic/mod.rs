//! Topic names and filters (`filter`), the subscription trie each shard matches publishes against
//! (`trie`), and the retained-message store new subscriptions are answered from (`retained`).
//!
//! All three split levels on `/` over borrowed `&str`s; matching allocates nothing.

pub mod filter;
pub mod retained;
mod stack;
pub mod trie;

pub use filter::{
    matches, parse_shared, validate_topic_filter, validate_topic_name, TopicError, SHARE_PREFIX,
    TOPIC_BYTES_MAX,
};
pub use retained::RetainedStore;
pub use trie::Trie;
