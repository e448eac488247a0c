//! Access control from a mosquitto-format `acl_file`, so an existing mosquitto deployment's ACL
//! works unchanged (man mosquitto.conf, `acl_file`).
//!
//! Lines, blanks and `#` comments aside:
//! - `user <username>`: the `topic` lines after it are that user's (until the next `user`);
//!   `topic` lines before any `user` line are the anonymous clients' (no username);
//! - `topic [read|write|readwrite|deny] <filter>`: access to the topics `filter` matches
//!   (without an access word: readwrite; a filter with a space needs the word);
//! - `pattern [read|write|readwrite|deny] <filter>`: the same for every client, a level that is
//!   exactly `%c` replaced by its client id and one that is exactly `%u` by its username.
//!
//! With an ACL, what is not granted is denied. `deny` wins over any grant (mosquitto handles
//! denials first). `read` governs SUBSCRIBE and every delivery (a wildcard subscription can
//! match topics the client may not read), `write` governs PUBLISH and the will.
//!
//! The file is parsed once (and on SIGHUP); a client's rules are resolved once at CONNECT into a
//! `ClientRules`, a few filters with its names substituted and its denials first, so a check is
//! a match over a handful of filters and allocates nothing. Where mosquitto would let a name
//! reach into others' topics, this is stricter: a grant pattern is left out for a client whose
//! substituted name holds `+`, `#` or `/` (CVE-2017-7650's class), and a `%u` pattern for a
//! client without a username. A malformed line fails the whole load with its line number.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::topic::filter::{matches, parse_shared, validate_topic_filter};

/// What a rule allows; `Deny` refuses both and wins over any grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Deny,
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: Box<str>,
}

/// A parsed ACL file: read-only once loaded, shared by the shards behind an `Arc`.
#[derive(Clone, Default)]
pub struct AclFile {
    /// `topic` lines before any `user` line: clients without a username.
    anonymous: Vec<Rule>,
    users: HashMap<Box<str>, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl fmt::Debug for AclFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclFile")
            .field("anonymous", &self.anonymous.len())
            .field("users", &self.users.len())
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

/// Reads and parses an ACL file; errors name the path and the line.
pub fn load(path: &Path) -> Result<AclFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("acl file {}: cannot read: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("acl file {}: {e}", path.display()))
}

/// Parses the text of an ACL file; errors name the line (`line 3: ...`).
pub fn parse(text: &str) -> Result<AclFile, String> {
    let mut acl = AclFile::default();
    let mut user: Option<Box<str>> = None;
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("line {line_number}: {e}");
        let (keyword, rest) = match line.split_once([' ', '\t']) {
            Some((keyword, rest)) => (keyword, rest.trim()),
            None => (line, ""),
        };
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(at("`user` needs a username".into()));
                }
                acl.users.entry(rest.into()).or_default();
                user = Some(rest.into());
            }
            "topic" => {
                let rule = parse_rule(rest, false).map_err(at)?;
                match &user {
                    Some(name) => acl.users.entry(name.clone()).or_default().push(rule),
                    None => acl.anonymous.push(rule),
                }
            }
            "pattern" => acl.patterns.push(parse_rule(rest, true).map_err(at)?),
            _ => {
                return Err(at(format!(
                    "unknown keyword {keyword:?} (expected user, topic or pattern)"
                )))
            }
        }
    }
    Ok(acl)
}

/// `[read|write|readwrite|deny] <filter>`.
fn parse_rule(text: &str, pattern: bool) -> Result<Rule, String> {
    let (access, filter) = match text.split_once([' ', '\t']) {
        Some((word, filter)) => match Access::parse(word) {
            Some(access) => (access, filter.trim()),
            None => {
                return Err(format!(
                    "unknown access {word:?} (expected read, write, readwrite or deny before \
                     the topic)"
                ))
            }
        },
        None if Access::parse(text).is_some() => {
            return Err(format!("a topic is needed after {text:?}"));
        }
        None => (Access::ReadWrite, text),
    };
    if filter.is_empty() {
        return Err("a topic is needed".into());
    }
    validate_topic_filter(filter).map_err(|e| format!("topic {filter:?}: {e}"))?;
    if parse_shared(filter).is_some() {
        return Err(format!(
            "topic {filter:?}: a $share filter is not a topic (give the topics it covers)"
        ));
    }
    if filter.split('/').any(|level| level.contains('%')) {
        if !pattern {
            // A `topic` line is taken literally, as mosquitto does; warn-worthy typos are
            // better refused than silently never matching.
            return Err(format!(
                "topic {filter:?}: %c and %u are substituted in `pattern` lines only"
            ));
        }
        if let Some(level) = filter
            .split('/')
            .find(|level| level.contains('%') && *level != "%c" && *level != "%u")
        {
            return Err(format!(
                "pattern {filter:?}: level {level:?}: %c or %u must be the whole level"
            ));
        }
    }
    Ok(Rule {
        access,
        filter: filter.into(),
    })
}

impl AclFile {
    /// The rules of one client, its names substituted, denials first.
    pub fn resolve(&self, username: Option<&str>, client_id: &str) -> ClientRules {
        let own = match username {
            Some(username) => self.users.get(username).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous[..],
        };
        let mut rules: Vec<Rule> = own.to_vec();
        for pattern in &self.patterns {
            if let Some(filter) = substitute(pattern, username, client_id) {
                rules.push(Rule {
                    access: pattern.access,
                    filter,
                });
            }
        }
        // Stable: denials first, each kind in the file's order.
        rules.sort_by_key(|rule| rule.access != Access::Deny);
        ClientRules {
            rules: rules.into_boxed_slice(),
        }
    }

    /// Users named in `user` lines.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Rules in the file: `topic` (anonymous and per user) and `pattern` lines.
    pub fn rules(&self) -> usize {
        self.anonymous.len()
            + self.users.values().map(Vec::len).sum::<usize>()
            + self.patterns.len()
    }
}

/// A pattern's filter for one client; `None` when it does not apply to it.
fn substitute(pattern: &Rule, username: Option<&str>, client_id: &str) -> Option<Box<str>> {
    if !pattern.filter.contains('%') {
        return Some(pattern.filter.clone());
    }
    let mut filter = String::with_capacity(pattern.filter.len() + client_id.len());
    for (index, level) in pattern.filter.split('/').enumerate() {
        if index > 0 {
            filter.push('/');
        }
        let value = match level {
            "%c" => client_id,
            // No username, no user's topics.
            "%u" => username?,
            level => {
                filter.push_str(level);
                continue;
            }
        };
        // A name with wildcards or levels of its own would grant more than its own topics; a
        // denial that grows wider only denies more.
        if pattern.access != Access::Deny && value.contains(['+', '#', '/']) {
            return None;
        }
        filter.push_str(value);
    }
    Some(filter.into())
}

/// One client's rules, resolved at CONNECT: denials first, then grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRules {
    rules: Box<[Rule]>,
}

impl ClientRules {
    /// May the client receive a message on `topic` (a topic name)?
    pub fn may_read(&self, topic: &str) -> bool {
        self.allows(topic, Access::reads)
    }

    /// May the client publish on `topic` (a topic name), or leave a will there?
    pub fn may_write(&self, topic: &str) -> bool {
        self.allows(topic, Access::writes)
    }

    fn allows(&self, topic: &str, wants: fn(Access) -> bool) -> bool {
        for rule in self.rules.iter() {
            if matches(&rule.filter, topic) {
                if rule.access == Access::Deny {
                    return false;
                }
                if wants(rule.access) {
                    return true;
                }
            }
        }
        false
    }

    /// May the client subscribe to `filter` (`$share/{group}/` aside)? Only when a read rule
    /// covers every topic the filter matches, and no deny rule matches the filter read as a
    /// topic name (deny `test/nosubscribe` refuses exactly that filter; deny `a/#` refuses
    /// `a/+` too). A denied topic inside an allowed filter is kept from each delivery instead.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let filter = parse_shared(filter).map_or(filter, |(_, inner)| inner);
        for rule in self.rules.iter() {
            match rule.access {
                Access::Deny if matches(&rule.filter, filter) => return false,
                access if access.reads() && covers(&rule.filter, filter) => return true,
                _ => {}
            }
        }
        false
    }
}

/// Does every topic `inner` matches also match `outer` (both valid filters)?
fn covers(outer: &str, inner: &str) -> bool {
    // [MQTT-4.7.2-1] A leading wildcard matches no `$` topic.
    if inner.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(o), Some(i)) if o == i && o != "+" && o != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic write   inbox/bob
topic deny alice/private/#

user bob
topic read inbox/bob
topic sport/+/score

pattern readwrite devices/%c/#
pattern read users/%u/feed
pattern deny test/nosubscribe
";

    #[test]
    fn parses_every_kind_of_line() {
        let acl = parse(FILE).unwrap();
        assert_eq!(acl.users(), 2);
        assert_eq!(acl.rules(), 2 + 3 + 2 + 3);
        assert!(format!("{acl:?}").contains("patterns: 3"));
    }

    #[test]
    fn anonymous_section_applies_to_clients_without_username() {
        let acl = parse(FILE).unwrap();
        let anonymous = acl.resolve(None, "anon-1");
        assert!(anonymous.may_read("public/news"));
        assert!(!anonymous.may_read("public/secret"), "deny wins");
        assert!(!anonymous.may_write("public/news"), "read only");
        assert!(!anonymous.may_read("alice/x"));
        assert!(
            !anonymous.may_read("users/anon-1/feed"),
            "no %u for anonymous"
        );
        assert!(anonymous.may_write("devices/anon-1/t"), "%c applies to all");
        // A user does not get the anonymous rules.
        let alice = acl.resolve(Some("alice"), "a1");
        assert!(!alice.may_read("public/news"));
    }

    #[test]
    fn user_rules_and_access_kinds() {
        let acl = parse(FILE).unwrap();
        let alice = acl.resolve(Some("alice"), "a1");
        assert!(alice.may_read("alice/x") && alice.may_write("alice/x/y"));
        assert!(alice.may_write("inbox/bob") && !alice.may_read("inbox/bob"));
        assert!(!alice.may_read("alice/private/diary"));
        assert!(!alice.may_write("alice/private"), "`#` matches the parent");
        let bob = acl.resolve(Some("bob"), "b1");
        assert!(bob.may_read("inbox/bob") && !bob.may_write("inbox/bob"));
        assert!(bob.may_read("sport/tennis/score") && bob.may_write("sport/x/score"));
        assert!(bob.may_read("users/bob/feed") && !bob.may_read("users/alice/feed"));
        let stranger = acl.resolve(Some("carol"), "c1");
        assert!(!stranger.may_read("public/news") && !stranger.may_write("alice/x"));
        assert!(stranger.may_write("devices/c1/state"));
        assert!(!stranger.may_write("devices/a1/state"));
    }

    #[test]
    fn subscribe_needs_a_covering_read_rule_and_no_matching_deny() {
        let acl = parse(FILE).unwrap();
        let alice = acl.resolve(Some("alice"), "a1");
        assert!(alice.may_subscribe("alice/#"));
        assert!(alice.may_subscribe("alice/+/x"));
        assert!(alice.may_subscribe("$share/g/alice/+"));
        assert!(!alice.may_subscribe("#"), "wider than the grant");
        assert!(!alice.may_subscribe("inbox/bob"), "write only");
        assert!(!alice.may_subscribe("alice/private/#"), "denied");
        assert!(!alice.may_subscribe("test/nosubscribe"));
        assert!(alice.may_subscribe("devices/a1/#"));
        assert!(!alice.may_subscribe("devices/+/#"));
        let bob = acl.resolve(Some("bob"), "b1");
        assert!(bob.may_subscribe("sport/+/score"));
        assert!(!bob.may_subscribe("sport/#"));
        assert!(!bob.may_subscribe("sport/+/+"));
    }

    #[test]
    fn covers_is_filter_inclusion() {
        assert!(covers("#", "a/b/#"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x/+"));
        assert!(!covers("a/+/c", "a/#"));
    }

    #[test]
    fn patterns_never_reach_into_others_topics() {
        let acl = parse("pattern readwrite devices/%c/#\npattern deny %u/secret\n").unwrap();
        for client_id in ["+", "#", "a/b"] {
            let rules = acl.resolve(Some("u"), client_id);
            assert!(!rules.may_write("devices/a/b/c"), "{client_id}");
            assert!(!rules.may_subscribe("devices/#"), "{client_id}");
        }
        // A denial with a wildcard name only denies more.
        let rules = acl.resolve(Some("+"), "c");
        assert!(!rules.may_read("x/secret"));
        assert!(rules.may_read("devices/c/1"));
    }

    #[test]
    fn topics_with_spaces_and_dollar_topics() {
        let error = parse("topic my topic/x\ntopic readwrite #\n").unwrap_err();
        assert!(
            error.starts_with("line 1: unknown access \"my\""),
            "{error}"
        );
        let acl = parse("topic read a b/#\ntopic readwrite #\n").unwrap();
        let rules = acl.resolve(None, "c");
        assert!(rules.may_read("a b/x"));
        assert!(
            !rules.may_read("$SYS/broker/uptime"),
            "`#` does not match $ topics"
        );
        assert!(rules.may_write("x/y"));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let cases = [
            ("frobnicate x", "unknown keyword \"frobnicate\""),
            ("user", "needs a username"),
            ("topic", "a topic is needed"),
            ("topic read", "a topic is needed after \"read\""),
            ("topic reed x/y", "unknown access \"reed\""),
            ("topic read a/#/b", "topic \"a/#/b\""),
            ("topic read a+/b", "topic \"a+/b\""),
            ("topic read $share/g/a", "$share"),
            ("topic read a/%c", "in `pattern` lines only"),
            ("pattern read a/x%c", "must be the whole level"),
        ];
        for (bad, what) in cases {
            let text = format!("# header\n\ntopic read ok/#\n{bad}\n");
            let error = match parse(&text) {
                Ok(_) => panic!("accepted {bad:?}"),
                Err(error) => error,
            };
            assert!(error.starts_with("line 4: "), "{bad:?}: {error}");
            assert!(error.contains(what), "{bad:?}: {error}");
        }
        let empty = parse("# nothing\n\n").unwrap();
        assert!(
            !empty.resolve(None, "c").may_read("a"),
            "empty ACL: all denied"
        );
    }

    #[test]
    fn load_names_the_file() {
        let error = load(Path::new("/nonexistent/acl")).unwrap_err();
        assert!(error.contains("/nonexistent/acl") && error.contains("cannot read"));
    }
}
