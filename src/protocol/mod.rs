//! MQTT 3.1.1 and 5.0 codec: bytes in, packets out. No I/O, no clock, no shard, so the broker,
//! the load generator, the fuzzers and the tests all use it unchanged.
//!
//! - `decode(buf, version, packet_size_max)` takes one whole packet off the front of `buf`, or
//!   returns `Ok(None)` when `buf` ends inside a packet (not an error). The size limit is checked
//!   from the fixed header, before the body is buffered.
//! - `encode(packet, version, out)` appends one packet's bytes to `out`.

pub mod packet;
pub mod properties;
pub mod reason;

pub use packet::*;
pub use properties::Properties;
pub use reason::ReasonCode;
