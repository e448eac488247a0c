//! Topic names and topic filters: validation, `$share/{group}/{filter}`, and the reference matcher.
//!
//! `matches` is the plain, obviously-correct statement of MQTT section 4.7. The trie and the
//! retained store are checked against it in their tests, so it favours clarity over speed.
//! None of these functions allocate.

use std::fmt;

/// [MQTT-4.7.3-3] A topic name or filter is a UTF-8 string of at most 65,535 bytes.
pub const TOPIC_BYTES_MAX: usize = 65_535;

/// Prefix of a shared subscription's filter [MQTT-4.8.2-1] (MQTT 5.0 only).
pub const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or filter was refused. Maps to `TopicNameInvalid` / `TopicFilterInvalid`
/// (or a malformed-packet disconnect on 3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    /// [MQTT-4.7.3-1] Topic names and filters are at least one character long.
    Empty,
    /// Longer than 65,535 bytes.
    TooLong,
    /// [MQTT-4.7.3-2] U+0000 is not allowed.
    NullCharacter,
    /// [MQTT-3.3.2-2] A topic name (PUBLISH) holds no `+` or `#`.
    WildcardInTopicName,
    /// [MQTT-4.7.1-2] `#` must be alone in its level and the last level.
    MultiLevelWildcardMisplaced,
    /// [MQTT-4.7.1-3] `+` must occupy an entire level.
    SingleLevelWildcardMisplaced,
    /// [MQTT-4.8.2-1] `$share/` needs a non-empty share name without `+`, `#` or `/`.
    ShareNameInvalid,
    /// [MQTT-4.8.2-2] `$share/{group}/` needs a non-empty filter after the share name.
    SharedFilterMissing,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 65535 bytes",
            TopicError::NullCharacter => "topic contains U+0000",
            TopicError::WildcardInTopicName => "topic name contains a wildcard (+ or #)",
            TopicError::MultiLevelWildcardMisplaced => {
                "'#' must be alone in the last level of a topic filter"
            }
            TopicError::SingleLevelWildcardMisplaced => {
                "'+' must be alone in its level of a topic filter"
            }
            TopicError::ShareNameInvalid => {
                "shared subscription needs a non-empty share name without '+', '#' or '/'"
            }
            TopicError::SharedFilterMissing => {
                "shared subscription needs a topic filter after $share/{group}/"
            }
        };
        f.write_str(text)
    }
}

impl std::error::Error for TopicError {}

fn validate_common(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong);
    }
    if text.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// A topic name, as carried by PUBLISH and will messages.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    validate_common(name)?;
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInTopicName);
    }
    Ok(())
}

/// A topic filter, as carried by SUBSCRIBE and UNSUBSCRIBE, including `$share/{group}/{filter}`.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    validate_common(filter)?;
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        let (group, inner) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if group.is_empty() || group.bytes().any(|b| b == b'+' || b == b'#') {
            return Err(TopicError::ShareNameInvalid);
        }
        return match inner {
            None | Some("") => Err(TopicError::SharedFilterMissing),
            Some(inner) => validate_filter_levels(inner),
        };
    }
    validate_filter_levels(filter)
}

fn validate_filter_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::MultiLevelWildcardMisplaced);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcardMisplaced);
        }
    }
    Ok(())
}

/// `Some((group, inner_filter))` for `$share/{group}/{inner_filter}`, `None` for any other filter.
/// Does not validate: call `validate_topic_filter` first. The share name ends at the first `/`.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let slash = rest.find('/')?;
    Some((&rest[..slash], &rest[slash + 1..]))
}

/// Does `topic` (a topic name) match `filter` (a plain filter; for a shared subscription pass the
/// inner filter from `parse_shared`)? The reference statement of MQTT 4.7, levels split on `/`:
/// - `+` matches exactly one level, which may be empty (`a/+` matches `a/`, not `a`);
/// - `#` matches any number of levels including none, so `sport/#` also matches `sport`;
/// - a filter starting with a wildcard does not match a topic starting with `$` [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` is the last level of a valid filter, and matches the parent level too.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits the first level off `levels`: `("a", Some("b/c"))` for `"a/b/c"`, `("c", None)` for
/// `"c"`, `("", Some(""))` for `"/"`. Shared by the trie and the retained store.
#[inline]
pub(crate) fn split_level(levels: &str) -> (&str, Option<&str>) {
    // A plain byte scan: levels are short, where `str::find`'s searcher (memchr) costs more
    // to set up than it saves (pairs QoS 0: 2180 -> 2050 instructions per PUBLISH,
    // callgrind). `/` is ASCII, so both sides of it are `str` boundaries.
    match levels.bytes().position(|b| b == b'/') {
        Some(i) => (&levels[..i], Some(&levels[i + 1..])),
        None => (levels, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("a/b/c"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("a//b"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x"), Ok(()));
        assert_eq!(validate_topic_name(" "), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_name("a/+"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("a/#"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("a+b"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        let longest = "x".repeat(TOPIC_BYTES_MAX);
        assert_eq!(validate_topic_name(&longest), Ok(()));
        let too_long = "x".repeat(TOPIC_BYTES_MAX + 1);
        assert_eq!(validate_topic_name(&too_long), Err(TopicError::TooLong));
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#",
            "+",
            "+/+",
            "a/+/c",
            "a/#",
            "sport/tennis/#",
            "/",
            "/a",
            "a/",
            "a//b",
            "+/",
            "/+",
            "/#",
            "$SYS/#",
            "+/monitor/Clients",
            "a/+/+/#",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        use TopicError::*;
        for (bad, err) in [
            ("", Empty),
            ("a\0", NullCharacter),
            ("sport/tennis#", MultiLevelWildcardMisplaced),
            ("sport/tennis/#/ranking", MultiLevelWildcardMisplaced),
            ("#/", MultiLevelWildcardMisplaced),
            ("##", MultiLevelWildcardMisplaced),
            ("a/b#", MultiLevelWildcardMisplaced),
            ("sport+", SingleLevelWildcardMisplaced),
            ("a/+b/c", SingleLevelWildcardMisplaced),
            ("++", SingleLevelWildcardMisplaced),
        ] {
            assert_eq!(validate_topic_filter(bad), Err(err), "{bad:?}");
        }
        let too_long = "+/".repeat(TOPIC_BYTES_MAX / 2 + 1);
        assert_eq!(validate_topic_filter(&too_long), Err(TooLong));
    }

    #[test]
    fn shared_filters() {
        use TopicError::*;
        assert_eq!(validate_topic_filter("$share/g/a/b"), Ok(()));
        assert_eq!(validate_topic_filter("$share/g/#"), Ok(()));
        assert_eq!(validate_topic_filter("$share/g/+/x"), Ok(()));
        assert_eq!(validate_topic_filter("$share/g//"), Ok(()));
        assert_eq!(validate_topic_filter("$share//a"), Err(ShareNameInvalid));
        assert_eq!(validate_topic_filter("$share/g+/a"), Err(ShareNameInvalid));
        assert_eq!(validate_topic_filter("$share/#/a"), Err(ShareNameInvalid));
        assert_eq!(validate_topic_filter("$share/g"), Err(SharedFilterMissing));
        assert_eq!(validate_topic_filter("$share/g/"), Err(SharedFilterMissing));
        assert_eq!(validate_topic_filter("$share/"), Err(ShareNameInvalid));
        assert_eq!(
            validate_topic_filter("$share/g/a#"),
            Err(MultiLevelWildcardMisplaced)
        );
        // Not a shared subscription: `$share` without the slash is a plain (valid) filter.
        assert_eq!(validate_topic_filter("$share"), Ok(()));
        assert_eq!(validate_topic_filter("$sharex/g/a"), Ok(()));

        assert_eq!(parse_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(parse_shared("$share/group/#"), Some(("group", "#")));
        assert_eq!(parse_shared("$share/g"), None);
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(parse_shared("$sharex/g/a"), None);
    }

    #[test]
    fn wildcard_rules() {
        // (filter, topic, expected)
        let cases = [
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("#", "/a", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+", "/a", false),
            ("+", "", true),
            ("+/+", "a/b", true),
            ("+/+", "/a", true),
            ("+/+", "a/", true),
            ("+/+", "a", false),
            ("+/+", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/d", false),
            ("a/+/c", "a/c", false),
            ("a//b", "a//b", true),
            ("a//b", "a/b", false),
            ("a/+/b", "a//b", true),
            ("/a", "/a", true),
            ("/a", "a", false),
            ("/+", "/a", true),
            ("+/a", "/a", true),
            ("a/", "a/", true),
            ("a/", "a", false),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/#", "a/", true),
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sports", false),
            ("sport/tennis/#", "sport/tennis", true),
            ("sport/tennis/#", "sport/tennis/player1", true),
            ("sport/tennis/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/#", "sport/tennisx", false),
            ("sport/tennis/#", "sport", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("A", "a", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn dollar_topics() {
        // [MQTT-4.7.2-1] Wildcards in the first level do not match `$` topics.
        assert!(!matches("#", "$SYS"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("#", "$x"));
        assert!(!matches("+", "$x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/+/Clients", "$SYS/monitor/Clients"));
        // Only the first level is special.
        assert!(matches("a/+", "a/$x"));
        assert!(matches("a/#", "a/$x/y"));
        assert!(matches("+/$x", "a/$x"));
    }

    #[test]
    fn spec_section_4_7_examples() {
        // 4.7.1.2 Multi-level wildcard.
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        // 4.7.1.3 Single-level wildcard.
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        // 4.7.2 Topics beginning with $.
        assert!(!matches("#", "$SYS/anything"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        // 4.7.3 Topic semantic: case-sensitive, space is a valid character.
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(matches("Accounts payable", "Accounts payable"));
        assert!(!matches("/finance", "finance"));
    }

    #[test]
    fn split_level_cases() {
        assert_eq!(split_level("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_level("c"), ("c", None));
        assert_eq!(split_level("/"), ("", Some("")));
        assert_eq!(split_level(""), ("", None));
    }

    #[test]
    fn errors_display() {
        assert_eq!(TopicError::Empty.to_string(), "topic is empty");
        assert!(TopicError::ShareNameInvalid
            .to_string()
            .contains("share name"));
    }
}
