//! MQTT 5 problem information: the Reason Strings the broker adds to its refusals, unless the
//! client sent Request Problem Information 0 (kept in its `ConnV5`, `conn_v5.rs`).
//!
//! Reason Strings are static, one per reason code, chosen when the packet is written: the
//! success codes have none, so an ordinary ack builds no properties and looks nothing up.

use bytestring::ByteString;

use crate::protocol::{Props, ReasonCode};

use super::Shard;

/// The Reason String sent with a failure code (spec 3.x.2.2: human readable, for diagnostics).
/// `None` for the success codes and for those that need no words.
pub(super) fn reason_string(code: ReasonCode) -> Option<&'static str> {
    use ReasonCode::*;
    Some(match code {
        MalformedPacket => "malformed packet",
        ProtocolError => "protocol error",
        ImplementationSpecificError => "not accepted by this broker",
        UnsupportedProtocolVersion => "unsupported protocol version",
        ClientIdentifierNotValid => "client identifier not valid",
        BadUserNameOrPassword => "bad user name or password",
        NotAuthorized => "not authorized",
        ServerUnavailable => "server unavailable",
        ServerBusy => "server busy: connections_max reached",
        BadAuthenticationMethod => "authentication method not supported",
        KeepAliveTimeout => "keep alive timeout",
        SessionTakenOver => "session taken over by another connection",
        TopicFilterInvalid => "topic filter invalid",
        TopicNameInvalid => "topic name invalid",
        PacketIdentifierInUse => "packet identifier in use",
        PacketIdentifierNotFound => "packet identifier not found",
        ReceiveMaximumExceeded => "receive maximum exceeded",
        TopicAliasInvalid => "topic alias out of range",
        PacketTooLarge => "packet too large",
        QuotaExceeded => "quota exceeded",
        PayloadFormatInvalid => "payload is not valid UTF-8",
        RetainNotSupported => "retain not supported",
        QoSNotSupported => "QoS above the maximum QoS",
        SharedSubscriptionsNotSupported => "shared subscriptions not supported",
        SubscriptionIdentifiersNotSupported => "subscription identifiers not supported",
        WildcardSubscriptionsNotSupported => "wildcard subscriptions not supported",
        _ => return None,
    })
}

/// Properties carrying `code`'s Reason String, or none (no allocation) when it has none.
pub(super) fn reason_properties(code: ReasonCode) -> Props {
    let Some(text) = reason_string(code) else {
        return Props::NONE;
    };
    let mut properties = Props::NONE;
    properties.reason_string = Some(ByteString::from_static(text));
    properties
}

impl Shard {
    /// Whether this connection may be sent Reason Strings and User Properties on packets other
    /// than PUBLISH, CONNACK and DISCONNECT (its CONNECT did not say Request Problem
    /// Information 0). Looked up only when there is a string to send.
    pub(super) fn problem_information(&self, slot: u32, generation: u32) -> bool {
        !self
            .conns
            .get(slot, generation)
            .and_then(|c| c.v5.as_ref())
            .is_some_and(|v5| v5.no_problem_information)
    }

    /// `code`'s Reason String for a SUBACK or UNSUBACK to this connection, unless it asked for
    /// no problem information.
    pub(super) fn ack_properties(&self, slot: u32, generation: u32, code: ReasonCode) -> Props {
        if reason_string(code).is_none() || !self.problem_information(slot, generation) {
            return Props::NONE;
        }
        reason_properties(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_codes_carry_no_reason_string() {
        for code in [
            ReasonCode::Success,
            ReasonCode::NoMatchingSubscribers,
            ReasonCode::GrantedQoS1,
            ReasonCode::DisconnectWithWillMessage,
        ] {
            assert_eq!(reason_string(code), None, "{code:?}");
            assert_eq!(reason_properties(code), Props::NONE);
        }
        let props = reason_properties(ReasonCode::TopicAliasInvalid);
        assert_eq!(
            props.reason_string.as_deref(),
            Some("topic alias out of range")
        );
    }
}
