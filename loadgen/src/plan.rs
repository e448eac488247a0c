//! What each thread opens: the connections of a scenario, their roles and topics, dealt over
//! the threads. Pure data built from the command line, so the layout is tested without a
//! network. Within a thread subscribers come first, so they are subscribed before the
//! publishers they wait for have even connected.

use std::net::{Ipv4Addr, SocketAddrV4};

use ringmq::protocol::{ProtocolVersion, QoS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Conn,
    /// Connect, disconnect, connect again: handshakes per second.
    Handshake,
    Pairs,
    Fanout,
    Fanin,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Conn => "conn",
            Scenario::Handshake => "handshake",
            Scenario::Pairs => "pairs",
            Scenario::Fanout => "fanout",
            Scenario::Fanin => "fanin",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No publishers (the `conn` scenario).
    Idle,
    /// Open loop: messages per second over all publishers.
    Rate(u64),
    /// Closed loop: window per publisher.
    Max(u32),
    /// No publishers; while measuring, every connection that is through disconnects and
    /// connects again (the `handshake` scenario).
    Churn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Publishes to `topic`; `index` is its number in every stamp (0..publisher_count).
    Publisher { index: u32, topic: String },
    /// Subscribes to `filter` and expects every message of publishers
    /// `first_publisher..first_publisher + publisher_count`.
    Subscriber {
        filter: String,
        first_publisher: u32,
        publisher_count: u32,
    },
    /// Holds the connection (and its subscription, if any) and only pings.
    Idle { filter: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnPlan {
    pub client_id: String,
    pub role: Role,
}

/// Everything a thread needs besides its connections; the same for every thread.
#[derive(Clone, Debug)]
pub struct Settings {
    pub scenario: Scenario,
    pub version: ProtocolVersion,
    pub qos: QoS,
    /// Publishes carry the retain flag (`--retain`).
    pub retain: bool,
    pub payload_len: usize,
    pub keepalive_secs: u16,
    pub clean_start: bool,
    pub mode: Mode,
    pub broker: SocketAddrV4,
    pub sources: Vec<Ipv4Addr>,
    /// Connections per second, per thread.
    pub ramp_per_sec: f64,
    /// Handshakes in flight at most, per thread.
    pub handshakes_max: u32,
    pub connect_timeout_ns: u64,
    pub publisher_count: u32,
    /// Shared subscription: a message reaches one subscriber, not all.
    pub shared: bool,
    /// Fixed-file slots per ring; 0 = the open-file limit minus a headroom.
    pub ring_files_max: u32,
    /// TLS on every connection (`--tls-ca`).
    pub tls: Option<crate::tls::TlsClient>,
    /// Keep the per-second latency histogram for the progress line (off with `-q`: one
    /// histogram record per message less).
    pub progress: bool,
}

/// Deals `count` items round-robin over `threads`: item i goes to thread i % threads.
pub fn thread_of(item: u32, threads: usize) -> usize {
    item as usize % threads
}

/// The connections of a scenario, per thread. `run_id` keeps client ids unique between runs
/// so a broker never takes over a session of a previous run.
#[allow(clippy::too_many_arguments)] // one call site, each argument a command-line value
pub fn plan(
    scenario: Scenario,
    publishers: u32,
    subscribers: u32,
    topic_prefix: &str,
    shared_group: Option<&str>,
    subscribe_idle: bool,
    threads: usize,
    run_id: &str,
) -> Vec<Vec<ConnPlan>> {
    assert!(threads > 0);
    let mut subs: Vec<Vec<ConnPlan>> = vec![Vec::new(); threads];
    let mut pubs: Vec<Vec<ConnPlan>> = vec![Vec::new(); threads];
    let id = |kind: &str, i: u32| format!("lg{run_id}-{kind}{i}");
    match scenario {
        Scenario::Conn | Scenario::Handshake => {
            for i in 0..subscribers {
                let filter = subscribe_idle.then(|| format!("{topic_prefix}/idle/{i}"));
                subs[thread_of(i, threads)].push(ConnPlan {
                    client_id: id("c", i),
                    role: Role::Idle { filter },
                });
            }
        }
        Scenario::Pairs => {
            // Pair i lives on one thread: its QoS 0 window feedback never crosses threads.
            for i in 0..publishers {
                let topic = format!("{topic_prefix}/pair/{i}");
                let t = thread_of(i, threads);
                subs[t].push(ConnPlan {
                    client_id: id("s", i),
                    role: Role::Subscriber {
                        filter: topic.clone(),
                        first_publisher: i,
                        publisher_count: 1,
                    },
                });
                pubs[t].push(ConnPlan {
                    client_id: id("p", i),
                    role: Role::Publisher { index: i, topic },
                });
            }
        }
        Scenario::Fanout | Scenario::Fanin => {
            let wildcard = format!("{topic_prefix}/fanin/+");
            let filter = match (scenario, shared_group) {
                (Scenario::Fanout, _) => format!("{topic_prefix}/fanout"),
                (_, Some(group)) => format!("$share/{group}/{wildcard}"),
                (_, None) => wildcard,
            };
            for i in 0..subscribers {
                subs[thread_of(i, threads)].push(ConnPlan {
                    client_id: id("s", i),
                    role: Role::Subscriber {
                        filter: filter.clone(),
                        first_publisher: 0,
                        publisher_count: publishers,
                    },
                });
            }
            for i in 0..publishers {
                let topic = match scenario {
                    Scenario::Fanout => format!("{topic_prefix}/fanout"),
                    _ => format!("{topic_prefix}/fanin/{i}"),
                };
                pubs[thread_of(i, threads)].push(ConnPlan {
                    client_id: id("p", i),
                    role: Role::Publisher { index: i, topic },
                });
            }
        }
    }
    subs.into_iter()
        .zip(pubs)
        .map(|(mut s, p)| {
            s.extend(p);
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(plans: &[Vec<ConnPlan>], pred: impl Fn(&Role) -> bool) -> usize {
        plans.iter().flatten().filter(|c| pred(&c.role)).count()
    }

    #[test]
    fn pairs_keep_each_pair_on_one_thread_subscribers_first() {
        let plans = plan(Scenario::Pairs, 5, 5, "b", None, false, 2, "x");
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].len(), 6);
        assert_eq!(plans[1].len(), 4);
        for thread in &plans {
            let first_pub = thread
                .iter()
                .position(|c| matches!(c.role, Role::Publisher { .. }))
                .unwrap();
            assert!(thread[..first_pub]
                .iter()
                .all(|c| matches!(c.role, Role::Subscriber { .. })));
            for c in thread {
                if let Role::Publisher { index, topic } = &c.role {
                    let sub = thread.iter().find(|s| {
                        matches!(&s.role,
                        Role::Subscriber { filter, first_publisher, publisher_count: 1 }
                            if filter == topic && first_publisher == index)
                    });
                    assert!(
                        sub.is_some(),
                        "subscriber of pair {index} on the same thread"
                    );
                }
            }
        }
        let ids: std::collections::HashSet<_> =
            plans.iter().flatten().map(|c| &c.client_id).collect();
        assert_eq!(ids.len(), 10, "client ids unique");
    }

    #[test]
    fn fanin_subscribes_on_a_wildcard_or_a_share() {
        let plans = plan(Scenario::Fanin, 4, 2, "b", Some("g"), false, 1, "x");
        assert_eq!(count(&plans, |r| matches!(r, Role::Publisher { .. })), 4);
        let filters: Vec<_> = plans[0]
            .iter()
            .filter_map(|c| match &c.role {
                Role::Subscriber {
                    filter,
                    publisher_count,
                    ..
                } => Some((filter.clone(), *publisher_count)),
                _ => None,
            })
            .collect();
        assert_eq!(filters, vec![("$share/g/b/fanin/+".to_string(), 4); 2]);
        let plans = plan(Scenario::Fanin, 2, 1, "b", None, false, 1, "x");
        assert!(plans[0]
            .iter()
            .any(|c| matches!(&c.role, Role::Subscriber { filter, .. } if filter == "b/fanin/+")));
        assert!(plans[0]
            .iter()
            .any(|c| matches!(&c.role, Role::Publisher { topic, .. } if topic == "b/fanin/1")));
    }

    #[test]
    fn fanout_and_conn() {
        let plans = plan(Scenario::Fanout, 1, 10, "b", None, false, 3, "x");
        assert_eq!(
            count(
                &plans,
                |r| matches!(r, Role::Subscriber { filter, .. } if filter == "b/fanout")
            ),
            10
        );
        assert_eq!(plans.iter().map(Vec::len).collect::<Vec<_>>(), [5, 3, 3]);
        let plans = plan(Scenario::Conn, 0, 7, "b", None, true, 2, "x");
        assert_eq!(
            count(&plans, |r| matches!(r, Role::Idle { filter: Some(_) })),
            7
        );
    }
}
