//! A message's topic and payload as routing reads them: borrowed, with where an owned handle
//! comes from for the deliveries that keep the message (QoS 1/2 windows and queues, forwards
//! to other shards). A PUBLISH read in place (`protocol::decode_in`) routes to its live QoS 0
//! subscribers without one reference count taken: each delivery copies the bytes into an
//! outbox, and nothing else holds them.

use bytes::Bytes;
use bytestring::ByteString;

#[derive(Clone, Copy, Debug)]
pub(super) struct Body<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// Holds `topic`'s bytes; `None`: nothing does, a kept topic is a copy.
    topic_in: Option<&'a Bytes>,
    /// Holds `payload`; `None`: nothing does, a kept payload is a copy.
    payload_in: Option<&'a Bytes>,
}

impl<'a> Body<'a> {
    /// Parts that are handles already: kept ones are clones.
    pub fn of(topic: &'a ByteString, payload: &'a Bytes) -> Body<'a> {
        Body {
            topic,
            payload,
            topic_in: Some(topic.as_bytes()),
            payload_in: Some(payload),
        }
    }

    /// Parts lying in `frame` (a read's frozen bytes): kept ones are slices of it.
    pub fn within(frame: &'a Bytes, topic: &'a str, payload: &'a [u8]) -> Body<'a> {
        let inside = |part: &[u8]| {
            let start = part.as_ptr() as usize;
            let frame_start = frame.as_ptr() as usize;
            part.is_empty()
                || start >= frame_start && start + part.len() <= frame_start + frame.len()
        };
        // Checked here once, so taking a handle never can fail (`Bytes::slice_ref` panics).
        let frame = (inside(topic.as_bytes()) && inside(payload)).then_some(frame);
        debug_assert!(frame.is_some(), "a body outside its frame");
        Body {
            topic,
            payload,
            topic_in: frame,
            payload_in: frame,
        }
    }

    /// Parts held by nothing that outlives the call (an inline forward's, in its ring slot):
    /// kept ones are copies.
    pub fn borrowed(topic: &'a str, payload: &'a [u8]) -> Body<'a> {
        Body {
            topic,
            payload,
            topic_in: None,
            payload_in: None,
        }
    }

    /// An owned handle on the topic.
    pub fn topic_handle(&self) -> ByteString {
        match self.topic_in {
            // SAFETY: the bytes of `self.topic`, a `str`.
            Some(owner) => unsafe {
                ByteString::from_bytes_unchecked(owner.slice_ref(self.topic.as_bytes()))
            },
            None => ByteString::from(self.topic),
        }
    }

    /// An owned handle on the payload.
    pub fn payload_handle(&self) -> Bytes {
        match self.payload_in {
            Some(owner) => owner.slice_ref(self.payload),
            None => Bytes::copy_from_slice(self.payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_their_owner_or_copy() {
        let frame = Bytes::from_static(b"\x30\x08\x00\x03a/bhello");
        let body = Body::within(
            &frame,
            std::str::from_utf8(&frame[4..7]).unwrap(),
            &frame[7..],
        );
        let (topic, payload) = (body.topic_handle(), body.payload_handle());
        assert_eq!((&*topic, &payload[..]), ("a/b", &b"hello"[..]));
        assert_eq!(payload.as_ptr(), frame[7..].as_ptr(), "a slice, not a copy");
        assert_eq!(topic.as_bytes().as_ptr(), frame[4..].as_ptr());

        let (topic, payload) = (ByteString::from("t"), Bytes::from_static(b"p"));
        let body = Body::of(&topic, &payload);
        assert_eq!(body.payload_handle().as_ptr(), payload.as_ptr());
        assert_eq!(body.topic_handle(), topic);

        let slot = *b"xy";
        let body = Body::borrowed("x", &slot[1..]);
        assert_eq!(&body.payload_handle()[..], b"y");
        assert_ne!(body.payload_handle().as_ptr(), slot[1..].as_ptr(), "a copy");
        assert_eq!(&*body.topic_handle(), "x");

        // An empty payload needs no owner.
        let body = Body::within(&frame, std::str::from_utf8(&frame[4..5]).unwrap(), &[]);
        assert!(body.payload_handle().is_empty());
    }
}
