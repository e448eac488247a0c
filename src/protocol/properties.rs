//! MQTT 5 properties (spec 2.2.2.2). One struct for every packet type: the decoder refuses a
//! property that is not allowed on the packet it came in, or that appears twice where only one
//! is allowed, so a field set here was valid where it was read.

use bytes::Bytes;
use bytestring::ByteString;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>, // 0x01
    pub message_expiry_interval: Option<u32>, // 0x02
    pub content_type: Option<ByteString>,     // 0x03
    pub response_topic: Option<ByteString>,   // 0x08
    pub correlation_data: Option<Bytes>,      // 0x09
    /// 0x0B, a variable byte integer 1..=268,435,455; several on a PUBLISH to a client.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>, // 0x11
    pub assigned_client_identifier: Option<ByteString>, // 0x12
    pub server_keep_alive: Option<u16>,       // 0x13
    pub authentication_method: Option<ByteString>, // 0x15
    pub authentication_data: Option<Bytes>,   // 0x16
    pub request_problem_information: Option<u8>, // 0x17
    pub will_delay_interval: Option<u32>,     // 0x18
    pub request_response_information: Option<u8>, // 0x19
    pub response_information: Option<ByteString>, // 0x1A
    pub server_reference: Option<ByteString>, // 0x1C
    pub reason_string: Option<ByteString>,    // 0x1F
    pub receive_maximum: Option<u16>,         // 0x21
    pub topic_alias_maximum: Option<u16>,     // 0x22
    pub topic_alias: Option<u16>,             // 0x23
    pub maximum_qos: Option<u8>,              // 0x24
    pub retain_available: Option<u8>,         // 0x25
    pub user_properties: Vec<(ByteString, ByteString)>, // 0x26, may repeat
    pub maximum_packet_size: Option<u32>,     // 0x27
    pub wildcard_subscription_available: Option<u8>, // 0x28
    pub subscription_identifier_available: Option<u8>, // 0x29
    pub shared_subscription_available: Option<u8>, // 0x2A
}

impl Properties {
    /// No property set. Field by field, without building a default to compare with: the
    /// broker asks this of every MQTT 5 PUBLISH. (Destructured, so a new field cannot be
    /// forgotten here.)
    pub fn is_empty(&self) -> bool {
        let Properties {
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            user_properties,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
        } = self;
        user_properties.is_empty()
            && subscription_identifiers.is_empty()
            && payload_format_indicator.is_none()
            && message_expiry_interval.is_none()
            && content_type.is_none()
            && response_topic.is_none()
            && correlation_data.is_none()
            && session_expiry_interval.is_none()
            && assigned_client_identifier.is_none()
            && server_keep_alive.is_none()
            && authentication_method.is_none()
            && authentication_data.is_none()
            && request_problem_information.is_none()
            && will_delay_interval.is_none()
            && request_response_information.is_none()
            && response_information.is_none()
            && server_reference.is_none()
            && reason_string.is_none()
            && receive_maximum.is_none()
            && topic_alias_maximum.is_none()
            && topic_alias.is_none()
            && maximum_qos.is_none()
            && retain_available.is_none()
            && maximum_packet_size.is_none()
            && wildcard_subscription_available.is_none()
            && subscription_identifier_available.is_none()
            && shared_subscription_available.is_none()
    }
}

/// The properties of one packet, boxed, and `None` when it has none: most packets carry none
/// (every 3.1.1 packet, most MQTT 5 PUBLISHes and acks), and a packet then is a few words
/// instead of ~400 bytes to decode, move and check. Reads go through `Deref` (an empty set when
/// `None`); writes through `DerefMut` allocate the box on the first one.
#[derive(Clone, Debug, Default)]
pub struct Props(Option<Box<Properties>>);

/// What `Props` derefs to when it holds none.
static NO_PROPERTIES: Properties = Properties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl Props {
    /// No properties (no allocation).
    pub const NONE: Props = Props(None);

    /// No property set: one pointer test when none was ever set.
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(Properties::is_empty)
    }

    /// The properties, `None` when no property is set.
    pub fn get(&self) -> Option<&Properties> {
        self.0.as_deref().filter(|p| !p.is_empty())
    }
}

impl From<Properties> for Props {
    /// Boxed only when some property is set.
    fn from(properties: Properties) -> Props {
        Props((!properties.is_empty()).then(|| Box::new(properties)))
    }
}

impl std::ops::Deref for Props {
    type Target = Properties;
    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Props {
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Props {
    /// A box of no properties equals none.
    fn eq(&self, other: &Props) -> bool {
        **self == **other
    }
}

impl Eq for Props {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_empty_sees_every_field() {
        assert!(Properties::default().is_empty());
        let one_each = [
            Properties {
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
            Properties {
                subscription_identifiers: vec![1],
                ..Properties::default()
            },
            Properties {
                shared_subscription_available: Some(0),
                ..Properties::default()
            },
            Properties {
                correlation_data: Some(Bytes::new()),
                ..Properties::default()
            },
        ];
        for properties in one_each {
            assert!(!properties.is_empty(), "{properties:?}");
            assert!(!Props::from(properties).is_empty());
        }
    }

    #[test]
    fn props_box_only_what_is_set() {
        assert!(Props::NONE.is_empty() && Props::NONE.get().is_none());
        assert_eq!(Props::from(Properties::default()), Props::NONE);
        let mut props = Props::NONE;
        props.topic_alias = Some(3);
        assert_eq!(props.get().and_then(|p| p.topic_alias), Some(3));
        props.topic_alias = None;
        assert!(props.is_empty() && props == Props::NONE);
    }
}
