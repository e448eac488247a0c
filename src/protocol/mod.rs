//! MQTT 3.1.1 and 5.0 codec: bytes in, packets out. No I/O, no clock, no shard, so the broker,
//! the load generator, the fuzzers and the tests all use it unchanged.
//!
//! - `decode(buf, version, packet_size_max)` takes one whole packet off the front of `buf`, or
//!   returns `Ok(None)` when `buf` ends inside a packet (not an error). The size limit is checked
//!   from the fixed header, before the body is buffered.
//! - `encode(packet, version, out)` appends one packet's bytes to `out`.

mod decode;
mod encode;
pub mod error;
pub mod header;
pub mod packet;
pub mod properties;
pub mod reason;
#[cfg(test)]
mod tests;

pub use decode::decode;
pub use encode::{encode, encode_publish, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use header::{frame_len, VAR_INT_MAX};
pub use packet::*;
pub use properties::Properties;
pub use reason::ReasonCode;
