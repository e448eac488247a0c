//! The mesh's unit tests (`mod.rs`): rings, overflow, wake-ups and hand-off sequencing.

use super::*;

fn publish(topic: &'static str, sequence: u32, origin_shard: u16) -> MeshMessage {
    MeshMessage::Publish(Forward {
        topic: ByteString::from_static(topic),
        payload: Bytes::copy_from_slice(&sequence.to_be_bytes()),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        origin_shard,
        turn_us: 0,
    })
}

fn sequence_of(message: &MeshMessage) -> u32 {
    match message {
        MeshMessage::Publish(forward) => {
            u32::from_be_bytes(forward.payload[..].try_into().unwrap())
        }
        other => panic!("expected a publish, got {other:?}"),
    }
}

fn drain_all(shard: &mut ShardMesh) -> Vec<(usize, MeshMessage)> {
    let mut taken = Vec::new();
    shard.drain(usize::MAX, |source, message| taken.push((source, message)));
    taken
}

#[test]
fn message_types_stay_small() {
    // Every ring slot is one MeshMessage: N * (N - 1) * capacity of them. Guard the size.
    let size = std::mem::size_of::<MeshMessage>();
    assert!(size <= 128, "MeshMessage grew to {size} bytes");
}

#[test]
fn inline_forwards_carry_their_bytes_up_to_the_limit() {
    let topic = "a/ü/ß"; // multi-byte UTF-8
    for len in [0, 1, INLINE_MAX - topic.len()] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
        let inline = InlineForward::new(topic, &payload, QoS::AtLeastOnce, true, 3, 77)
            .expect("fits in the slot");
        // Through a ring, as a target shard gets it.
        let mut shards = Mesh::new(2, 4);
        shards[0].push(1, MeshMessage::PublishInline(inline.clone()));
        shards[0].take_wake_targets();
        let taken = drain_all(&mut shards[1]);
        let [(0, MeshMessage::PublishInline(got))] = &taken[..] else {
            panic!("expected one inline publish, got {taken:?}");
        };
        assert_eq!(got.topic(), topic);
        assert_eq!(got.payload(), &payload[..]);
        assert_eq!(
            (got.qos, got.retain, got.origin_shard, got.turn_us),
            (QoS::AtLeastOnce, true, 3, 77)
        );
        assert_eq!(*got, inline);
    }
    let payload = vec![0u8; INLINE_MAX - topic.len() + 1];
    assert!(InlineForward::new(topic, &payload, QoS::AtMostOnce, false, 0, 0).is_none());
    assert!(InlineForward::new("", &[0; INLINE_MAX], QoS::AtMostOnce, false, 0, 0).is_some());
}

#[test]
fn inline_forwards_are_equal_by_what_they_carry() {
    let a = InlineForward::new("t", b"xy", QoS::AtMostOnce, false, 1, 5).unwrap();
    assert_eq!(
        a,
        InlineForward::new("t", b"xy", QoS::AtMostOnce, false, 1, 5).unwrap()
    );
    assert_ne!(
        a,
        InlineForward::new("t", b"xz", QoS::AtMostOnce, false, 1, 5).unwrap()
    );
    assert_ne!(
        a,
        InlineForward::new("tx", b"y", QoS::AtMostOnce, false, 1, 5).unwrap()
    );
    assert_ne!(
        a,
        InlineForward::new("t", b"xy", QoS::AtLeastOnce, false, 1, 5).unwrap()
    );
    let shown = format!("{a:?}");
    assert!(
        shown.contains("topic: \"t\"") && shown.contains("b\"xy\""),
        "{shown}"
    );
}

#[test]
fn each_pair_routes_with_its_source() {
    let mut shards = Mesh::new(4, 8);
    assert_eq!(shards.len(), 4);
    for (source, mesh) in shards.iter_mut().enumerate() {
        assert_eq!(mesh.shard(), source);
        assert_eq!(mesh.shard_count(), 4);
        for target in (0..4).filter(|&target| target != source) {
            let sequence = (source * 10 + target) as u32;
            mesh.push(target, publish("t", sequence, source as u16));
        }
        mesh.take_wake_targets();
    }
    for (target, mesh) in shards.iter_mut().enumerate() {
        assert_eq!(mesh.inbound_len(), 3);
        let taken = drain_all(mesh);
        let mut sources: Vec<usize> = taken.iter().map(|(source, _)| *source).collect();
        sources.sort_unstable();
        let expected: Vec<usize> = (0..4).filter(|&s| s != target).collect();
        assert_eq!(sources, expected);
        for (source, message) in &taken {
            assert_eq!(sequence_of(message), (source * 10 + target) as u32);
            let MeshMessage::Publish(forward) = message else {
                unreachable!()
            };
            assert_eq!(usize::from(forward.origin_shard), *source);
        }
    }
}

#[test]
#[should_panic(expected = "shard 1 pushed to shard 1")]
fn pushing_to_oneself_is_a_programmer_error() {
    let mut shards = Mesh::new(2, 4);
    shards[1].push(1, publish("t", 0, 1));
}

#[test]
fn a_full_ring_overflows_and_order_is_kept() {
    let mut shards = Mesh::new(3, 4);
    let (first, rest) = shards.split_at_mut(1);
    let (sender, receiver) = (&mut first[0], &mut rest[0]);
    for sequence in 0..10 {
        sender.push(1, publish("t", sequence, 0));
    }
    assert_eq!(sender.overflow_len(1), 6);
    assert_eq!(sender.overflow_len(2), 0);
    sender.push(2, publish("t", 0, 0));
    assert_eq!(sender.overflow_deepest(), 6, "the target furthest behind");
    assert_eq!(sender.overflow_total(), 6);
    assert_eq!(sender.flush_overflow(), 0, "the ring is still full");

    // The receiver takes two; a new push must queue behind the six, not jump ahead.
    sender.take_wake_targets();
    let mut received = Vec::new();
    receiver.drain(2, |_, message| received.push(sequence_of(&message)));
    sender.push(1, publish("t", 10, 0));
    assert_eq!(
        sender.overflow_total(),
        7,
        "queued behind the six: a push does not try the ring while messages wait"
    );
    assert_eq!(
        sender.flush_overflow(),
        2,
        "the turn's flush fills the two slots"
    );
    assert_eq!(sender.overflow_total(), 5);

    while received.len() < 11 {
        sender.flush_overflow();
        sender.take_wake_targets();
        let taken = receiver.drain(3, |source, message| {
            assert_eq!(source, 0);
            received.push(sequence_of(&message));
        });
        assert!(taken > 0, "the overflow keeps feeding the ring");
    }
    assert_eq!(received, (0..11).collect::<Vec<_>>());
    assert_eq!(sender.overflow_total(), 0);
    assert_eq!(sender.flush_overflow(), 0);
}

#[test]
fn an_emptied_overflow_gives_a_bursts_memory_back() {
    let mut shards = Mesh::new(2, 4);
    let burst = 10 * OVERFLOW_KEPT;
    for sequence in 0..burst {
        shards[0].push(1, publish("t", sequence as u32, 0));
    }
    let grown = shards[0].targets.overflow[1].capacity();
    assert!(grown >= burst - 4, "{grown}");
    let mut received = 0;
    while received < burst {
        shards[0].flush_overflow();
        shards[0].take_wake_targets();
        received += shards[1].drain(usize::MAX, |_, _| {});
    }
    assert_eq!(shards[0].overflow_total(), 0);
    let kept = shards[0].targets.overflow[1].capacity();
    assert!(
        (1..=OVERFLOW_KEPT).contains(&kept),
        "kept {kept} slots after the burst"
    );
}

#[test]
fn a_message_is_taken_only_once_the_target_drained_past_it() {
    // Issue 7 item 10: sequence numbers count the overflow too, so "taken" means taken by
    // the target, not merely pushed into the ring.
    let mut shards = Mesh::new(2, 2);
    let sequences: Vec<usize> = (0..5)
        .map(|n| shards[0].push(1, publish("t", n, 0)))
        .collect();
    assert_eq!(sequences, [0, 1, 2, 3, 4]);
    shards[0].take_wake_targets();
    assert!(
        (0..5).all(|s| !shards[0].taken(1, s)),
        "nothing drained yet"
    );
    assert_eq!(shards[0].overflow_len(1), 3);
    let mut received = Vec::new();
    let taken = shards[1].drain(1, |_, message| received.push(sequence_of(&message)));
    assert_eq!(taken, 1);
    assert!(shards[0].taken(1, 0) && !shards[0].taken(1, 1));
    while received.len() < 5 {
        shards[0].flush_overflow();
        shards[0].take_wake_targets();
        shards[1].drain(8, |_, message| received.push(sequence_of(&message)));
    }
    assert_eq!(received, [0, 1, 2, 3, 4]);
    assert!((0..5).all(|s| shards[0].taken(1, s)));
    assert!(
        !shards[0].taken(1, 5),
        "the next one is not taken before it is pushed"
    );
    assert_eq!(shards[0].push(1, publish("t", 5, 0)), 5);
}

/// Issue 12: a push writes the slot only; the turn's end publishes the ring's tail once
/// for all of them (the target does not see them before).
#[test]
fn pushes_are_seen_once_the_turn_publishes_them() {
    let mut shards = Mesh::new(2, 8);
    for sequence in 0..3 {
        shards[0].push(1, publish("t", sequence, 0));
    }
    assert!(drain_all(&mut shards[1]).is_empty(), "not published yet");
    assert_eq!(shards[0].take_wake_targets(), 0b10);
    let received: Vec<u32> = drain_all(&mut shards[1])
        .iter()
        .map(|(_, message)| sequence_of(message))
        .collect();
    assert_eq!(received, [0, 1, 2]);
}

#[test]
fn each_target_is_woken_once_per_turn() {
    let mut shards = Mesh::new(4, 2);
    let sender = &mut shards[0];
    for sequence in 0..5 {
        sender.push(2, publish("t", sequence, 0));
    }
    sender.push(3, publish("t", 0, 0));
    assert_eq!(sender.take_wake_targets(), 0b1100);
    assert_eq!(sender.take_wake_targets(), 0, "taking clears the set");

    // Shard 2's ring is full with three waiting: nothing moves, nobody to wake.
    assert_eq!(sender.flush_overflow(), 0);
    assert_eq!(sender.take_wake_targets(), 0);
    let mut taken = 0;
    shards[2].drain(usize::MAX, |_, _| taken += 1);
    assert_eq!(taken, 2);
    assert_eq!(shards[0].flush_overflow(), 2);
    assert_eq!(
        shards[0].take_wake_targets(),
        0b0100,
        "moving the overflow wakes the target"
    );
}

#[test]
fn broadcast_reaches_every_other_shard() {
    let mut shards = Mesh::new(3, 4);
    let interest = MeshMessage::Interest {
        filter: ByteString::from_static("a/+"),
        shard: 1,
        interested: true,
    };
    shards[1].broadcast(interest.clone());
    assert_eq!(shards[1].take_wake_targets(), 0b101);
    assert_eq!(drain_all(&mut shards[0]), vec![(1, interest.clone())]);
    assert_eq!(drain_all(&mut shards[2]), vec![(1, interest)]);
    assert!(drain_all(&mut shards[1]).is_empty());
}

#[test]
#[should_panic(expected = "shard 0 pushed to shard 2 (shard_count 2)")]
fn pushing_past_the_shard_count_is_a_programmer_error() {
    let mut shards = Mesh::new(2, 4);
    shards[0].push(2, publish("t", 0, 0));
}

#[test]
fn a_drained_message_can_be_pushed_on_in_the_callback() {
    // Shared subscriptions pass a message on when the chosen shard has no member left.
    let mut shards = Mesh::new(3, 4);
    shards[0].push(1, publish("t", 7, 0));
    shards[0].take_wake_targets();
    let mut sources = shards[1].take_sources();
    let taken = sources.drain(8, |source, message| {
        assert_eq!(source, 0);
        shards[1].push(2, message);
    });
    shards[1].restore_sources(sources);
    assert_eq!(taken, 1);
    assert_eq!(shards[1].inbound_len(), 0);
    assert_eq!(shards[1].take_wake_targets(), 0b100);
    let received = drain_all(&mut shards[2]);
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].0, 1,
        "the source is the shard that pushed it on"
    );
    assert_eq!(sequence_of(&received[0].1), 7);
}

#[test]
fn payloads_cross_shards_without_a_copy() {
    let mut shards = Mesh::new(2, 4);
    let bytes_read = Bytes::from(vec![0x10, 0x0c, 0x00, 0x04]);
    let hand_off = HandOff {
        source_shard: 0,
        listener: 0,
        tls: Default::default(),
        ws: Default::default(),
        handoff_id: 42,
        ring_slot_hint: None,
        bytes_read: bytes_read.clone(),
    };
    shards[0].push(1, MeshMessage::Connection(hand_off.clone()));
    shards[0].take_wake_targets();
    let received = drain_all(&mut shards[1]);
    let [(0, MeshMessage::Connection(arrived))] = &received[..] else {
        panic!("expected one hand-off from shard 0: {received:?}");
    };
    assert_eq!(*arrived, hand_off);
    assert_eq!(
        arrived.bytes_read.as_ptr(),
        bytes_read.as_ptr(),
        "shared, not copied"
    );
}

#[test]
fn one_shard_has_no_rings() {
    let mut shards = Mesh::new(1, 4);
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0].drain(8, |_, _| unreachable!()), 0);
    shards[0].broadcast(publish("t", 0, 0));
    assert_eq!(shards[0].take_wake_targets(), 0);
    assert_eq!(shards[0].flush_overflow(), 0);
}

#[test]
fn drain_takes_at_most_a_batch_per_ring() {
    let mut shards = Mesh::new(3, 16);
    for sequence in 0..5 {
        shards[0].push(2, publish("t", sequence, 0));
        shards[1].push(2, publish("t", 100 + sequence, 1));
    }
    shards[0].take_wake_targets();
    shards[1].take_wake_targets();
    let mut received = Vec::new();
    let taken = shards[2].drain(2, |source, message| {
        received.push((source, sequence_of(&message)))
    });
    assert_eq!(taken, 4);
    assert_eq!(received, [(0, 0), (0, 1), (1, 100), (1, 101)]);
    assert_eq!(shards[2].inbound_len(), 6);
}

#[test]
fn shard_meshes_move_to_their_threads() {
    let shards = Mesh::new(2, 64);
    let handles: Vec<_> = shards
        .into_iter()
        .map(|mut mesh| {
            std::thread::spawn(move || {
                let target = 1 - mesh.shard();
                for sequence in 0..1000 {
                    mesh.push(target, publish("t", sequence, mesh.shard() as u16));
                }
                let mut received = Vec::new();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while received.len() < 1000 {
                    mesh.flush_overflow();
                    mesh.take_wake_targets();
                    mesh.drain(32, |source, message| {
                        assert_eq!(source, target);
                        received.push(sequence_of(&message));
                    });
                    assert!(std::time::Instant::now() < deadline, "mesh stalled");
                    std::thread::yield_now();
                }
                assert_eq!(received, (0..1000).collect::<Vec<_>>());
                // Keep this end alive until the other side has drained what we sent.
                while mesh.overflow_total() > 0 {
                    mesh.flush_overflow();
                    mesh.take_wake_targets();
                    std::thread::yield_now();
                }
                mesh
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn home_shard_is_stable() {
    // Pinned values: changing the function moves every client's home; do it on purpose.
    let homes: Vec<usize> = [&b""[..], b"a", b"client-1", b"sensor/42"]
        .iter()
        .map(|id| home_shard(id, 1000))
        .collect();
    assert_eq!(homes, PINNED_HOMES);
    assert_eq!(home_shard(b"anything", 1), 0);
}

/// Computed independently (a few lines of Python over the same definition).
const PINNED_HOMES: [usize; 4] = [342, 315, 741, 636];

#[test]
fn fnv1a_matches_the_reference_vectors() {
    // From the FNV reference test suite (draft-eastlake-fnv).
    assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn home_shard_spreads_evenly() {
    let mut counts = [0usize; 4];
    for index in 0..10_000 {
        counts[home_shard(format!("client-{index}").as_bytes(), 4)] += 1;
    }
    for (shard, &count) in counts.iter().enumerate() {
        assert!(
            (2250..=2750).contains(&count),
            "shard {shard} got {count}: {counts:?}"
        );
    }
}
