//! MQTT 5 problem information: the Reason Strings the broker adds to its refusals, and the
//! per-connection MQTT 5 state few clients use (Request Problem Information 0, an enhanced
//! authentication method), kept in a map beside the connections rather than in `Conn`, which
//! every idle connection pays for.
//!
//! Reason Strings are static, one per reason code, chosen when the packet is written: the
//! success codes have none, so an ordinary ack builds no properties and looks nothing up.

use bytestring::ByteString;

use crate::protocol::{Props, ReasonCode};

use super::Shard;

/// What only some MQTT 5 connections need; a connection without an entry uses neither feature.
#[derive(Debug, Default)]
pub(super) struct ConnExtras {
    /// The client sent Request Problem Information 0: no Reason String or User Property on
    /// anything but PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29].
    pub no_problem_information: bool,
    /// The Authentication Method of its CONNECT, which re-authentication must repeat
    /// [MQTT-4.12.1-1]. Only set once an enhanced method accepted the client.
    pub auth_method: Option<Box<str>>,
}

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
    /// Information 0). One map probe, made only when there is a string to send.
    pub(super) fn problem_information(&self, slot: u32, generation: u32) -> bool {
        self.conn_extras.is_empty()
            || !self
                .conn_extras
                .get(&(slot, generation))
                .is_some_and(|e| e.no_problem_information)
    }

    /// `code`'s Reason String for an ack (PUBACK, PUBREC, PUBREL, PUBCOMP) to this connection,
    /// unless it asked for no problem information.
    pub(super) fn ack_properties(&self, slot: u32, generation: u32, code: ReasonCode) -> Props {
        if reason_string(code).is_none() || !self.problem_information(slot, generation) {
            return Props::NONE;
        }
        reason_properties(code)
    }

    /// The connection's extras, created on first use.
    pub(super) fn conn_extras_mut(&mut self, slot: u32, generation: u32) -> &mut ConnExtras {
        self.conn_extras.entry((slot, generation)).or_default()
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
