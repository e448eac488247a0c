//! MQTT 3.1.1 and 5.0 codec: bytes in, packets out. No I/O, no clock, no shard, so the broker,
//! the load generator, the fuzzers and the tests all use it unchanged.
//!
//! - `decode(buf, version, packet_size_max)` takes one whole packet off the front of `buf`, or
//!   returns `Ok(None)` when `buf` ends inside a packet (not an error). The size limit is checked
//!   from the fixed header, before the body is buffered.
//! - `encode(packet, version, out)` appends one packet's bytes to `out`; `encode_publish` does
//!   the same for a PUBLISH from borrowed parts (encode once, copy into many outboxes), and
//!   `encoded_len` tells the size beforehand; `encode_publish_parts` and `publish_parts_len` add
//!   one connection's Topic Alias to a message's shared properties.
//! - `frame_len(buf, packet_size_max)` sizes the packet at the front of `buf` from its fixed
//!   header alone.
//! - A `DecodeError` maps to the reason code the spec prescribes (`reason_code()`).
//!
//! What the codec validates is what a packet's bytes alone can tell: reserved bits, lengths,
//! UTF-8, wildcards in topic names, properties allowed per packet type, reason codes per packet.
//! Rules that need the connection's state (topic alias range, receive maximum, a Subscription
//! Identifier sent by a client, filter syntax answered by SUBACK 0x8F) belong to the broker.

mod decode;
mod encode;
pub mod error;
pub mod header;
mod in_place;
pub mod packet;
pub mod properties;
pub mod reason;
#[cfg(test)]
mod tests;

pub use decode::{connect_protocol_level, decode};
pub use encode::{
    connack_return_code, encode, encode_publish, encode_publish_parts, encoded_len, properties_len,
    publish_parts_len, PublishParts,
};
pub use error::{DecodeError, EncodeError};
pub use header::{frame_len, VAR_INT_MAX};
pub use in_place::{decode_in, publish_at, Decoded, PublishIn};
pub use packet::*;
pub use properties::{Properties, Props};
pub use reason::ReasonCode;
