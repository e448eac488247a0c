//! MQTT 5 Subscription Identifiers (spec 3.8.2.1.2, 3.3.2.3.8): a PUBLISH to a client carries
//! the identifier of every one of its subscriptions that matched [MQTT-3.3.4-3] [MQTT-3.3.4-4].
//!
//! Kept apart from the subscription trie so that a client without identifiers pays nothing: the
//! trie's one-byte `Grant` only says that a subscription has an identifier, and the identifiers
//! live here, in a trie of their own keyed by filter and session that only subscriptions with an
//! identifier enter (a `Session` has no room left, and the walk below serves every subscriber of
//! a route at once). A route that reaches such a subscriber walks it once for its topic, then
//! builds that subscriber's properties: the route's plus the identifiers. The last ones built
//! are reused while the next subscriber's identifiers and route are the same, so a fan-out to
//! many clients subscribed alike, or a stream of plain messages to one client, allocates once.

use std::num::NonZeroU32;
use std::sync::Arc;

use crate::protocol::Properties;
use crate::topic::trie::Trie;

/// Scratch entries kept between routes; a route that matched more gives the rest back.
const MATCHED_KEPT_MAX: usize = 1024;

#[derive(Default)]
pub(super) struct SubscriptionIds {
    /// (plain filter, session) -> its identifier, and whether the subscription says No Local.
    /// `$share` members keep theirs in their group.
    trie: Trie<(NonZeroU32, bool)>,
    /// The entries of `trie` matching `matched_topic`, sorted by session (then identifier).
    matched: Vec<(u32, NonZeroU32, bool)>,
    /// A copy (not a slice of the receive arena, which it would pin), reused.
    matched_topic: String,
    /// False until a walk, and after any change to `trie`.
    matched_valid: bool,
    /// The identifiers of the subscriber at hand.
    ids: Vec<u32>,
    built: Option<Built>,
}

/// Properties built for a subscriber, and what they were built from.
struct Built {
    route: Option<Arc<Properties>>,
    properties: Arc<Properties>,
}

impl SubscriptionIds {
    /// Records `session`'s identifier for its subscription to the plain `filter` (and the
    /// subscription's No Local), replacing the one it had; `None` removes it (a SUBSCRIBE
    /// without one, an UNSUBSCRIBE).
    pub(super) fn set(
        &mut self,
        filter: &str,
        session: u32,
        id: Option<NonZeroU32>,
        no_local: bool,
    ) {
        self.matched_valid = false;
        match id {
            Some(id) => {
                self.trie.insert(filter, session, (id, no_local));
            }
            None => {
                self.trie.remove(filter, session);
            }
        }
    }

    /// The properties of a message routed on `topic` to `session`, one of whose matching
    /// subscriptions has an identifier: `route`'s, with the identifiers of all of them, but
    /// for those saying No Local when `session` published the message (they did not match:
    /// [MQTT-3.8.3-3]).
    pub(super) fn for_match(
        &mut self,
        topic: &str,
        session: u32,
        publisher: bool,
        route: Option<&Arc<Properties>>,
    ) -> Option<Arc<Properties>> {
        if !self.matched_valid || self.matched_topic != topic {
            self.matched.clear();
            self.matched.shrink_to(MATCHED_KEPT_MAX);
            let matched = &mut self.matched;
            self.trie.for_each_match(topic, |session, &(id, no_local)| {
                matched.push((session, id, no_local))
            });
            self.matched.sort_unstable();
            self.matched_topic.clear();
            self.matched_topic.push_str(topic);
            self.matched_valid = true;
        }
        let start = self.matched.partition_point(|&(s, _, _)| s < session);
        self.ids.clear();
        let of_session = self.matched[start..]
            .iter()
            .take_while(|&&(s, _, _)| s == session)
            .filter(|&&(_, _, no_local)| !(publisher && no_local));
        self.ids.extend(of_session.map(|&(_, id, _)| id.get()));
        if self.ids.is_empty() {
            // The grant said so, the table does not: not expected, and harmless.
            return route.cloned();
        }
        Some(self.build(route))
    }

    /// The properties of a message sent for one subscription alone (the member a `$share`
    /// group picked, a retained message answering a SUBSCRIBE): `route`'s, with `id`.
    pub(super) fn for_one(
        &mut self,
        id: NonZeroU32,
        route: Option<&Arc<Properties>>,
    ) -> Arc<Properties> {
        self.ids.clear();
        self.ids.push(id.get());
        self.build(route)
    }

    /// `route`'s properties with `self.ids`, reusing the last ones built when they match.
    fn build(&mut self, route: Option<&Arc<Properties>>) -> Arc<Properties> {
        if let Some(built) = &self.built {
            let same_route = match (route, &built.route) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same_route && built.properties.subscription_identifiers == self.ids {
                return Arc::clone(&built.properties);
            }
        }
        // A route's own properties never hold identifiers: a client may not send them
        // [MQTT-3.3.4-6], so the ones here are all this subscriber's.
        let properties = Arc::new(Properties {
            subscription_identifiers: self.ids.clone(),
            ..route.map_or_else(Properties::default, |p| (**p).clone())
        });
        self.built = Some(Built {
            route: route.cloned(),
            properties: Arc::clone(&properties),
        });
        properties
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    fn ids_of(table: &mut SubscriptionIds, topic: &str, session: u32) -> Vec<u32> {
        table
            .for_match(topic, session, false, None)
            .map(|p| p.subscription_identifiers.clone())
            .unwrap_or_default()
    }

    #[test]
    fn every_matching_identifier_of_the_session_and_no_other() {
        let mut table = SubscriptionIds::default();
        table.set("a/b", 1, Some(id(2)), false);
        table.set("a/#", 1, Some(id(3)), false);
        table.set("a/+", 2, Some(id(9)), false);
        table.set("x", 1, Some(id(4)), false);
        assert_eq!(ids_of(&mut table, "a/b", 1), vec![2, 3]);
        assert_eq!(ids_of(&mut table, "a/b", 2), vec![9]);
        assert_eq!(ids_of(&mut table, "a/b", 3), Vec::<u32>::new());
        // Replaced, then removed: the walk is redone after each change.
        table.set("a/b", 1, Some(id(7)), false);
        assert_eq!(ids_of(&mut table, "a/b", 1), vec![3, 7]);
        table.set("a/#", 1, None, false);
        assert_eq!(ids_of(&mut table, "a/b", 1), vec![7]);
        assert_eq!(ids_of(&mut table, "$x", 1), Vec::<u32>::new());
    }

    #[test]
    fn the_publisher_gets_no_identifier_of_its_no_local_subscriptions() {
        // [MQTT-3.8.3-3]: a No Local subscription does not match its own client's publish, so
        // its identifier is not in that client's copy from an overlapping subscription.
        let mut table = SubscriptionIds::default();
        table.set("a/#", 1, Some(id(1)), true);
        table.set("+/b", 1, Some(id(2)), false);
        let ids = |table: &mut SubscriptionIds, publisher| {
            table
                .for_match("a/b", 1, publisher, None)
                .map(|p| p.subscription_identifiers.clone())
        };
        assert_eq!(ids(&mut table, true), Some(vec![2]));
        assert_eq!(ids(&mut table, false), Some(vec![1, 2]));
    }

    #[test]
    fn properties_are_built_once_for_subscribers_alike() {
        let mut table = SubscriptionIds::default();
        for session in 0..3 {
            table.set("t", session, Some(id(5)), false);
        }
        table.set("t", 3, Some(id(6)), false);
        let route = Arc::new(Properties {
            content_type: Some("text/plain".into()),
            ..Properties::default()
        });
        let topic = "t";
        let first = table.for_match(topic, 0, false, Some(&route)).expect("ids");
        let second = table.for_match(topic, 1, false, Some(&route)).expect("ids");
        assert!(Arc::ptr_eq(&first, &second), "same ids, same route: shared");
        assert_eq!(first.content_type.as_deref(), Some("text/plain"));
        assert_eq!(first.subscription_identifiers, vec![5]);
        let other = table.for_match(topic, 3, false, Some(&route)).expect("ids");
        assert_eq!(other.subscription_identifiers, vec![6]);
        let plain = table.for_match(topic, 2, false, None).expect("ids");
        assert_eq!(plain.content_type, None, "a route without properties");
        assert_eq!(*table.for_one(id(5), None), *plain);
    }
}
