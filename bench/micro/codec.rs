//! Codec micro-benchmarks: the packets on the broker's hot path (small QoS 0/1 PUBLISH, PUBACK),
//! decoded from a long stream as the receive loop sees them, and encoded into a reused outbox.
//! std::time only, so it needs no benchmark framework: `cargo bench --bench codec [filter]`.

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use ringmq::protocol::{
    decode, encode, encode_publish, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS,
};

const PACKET_COUNT: usize = 100_000;
const ROUNDS: usize = 20;

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let selected = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let payload = Bytes::from_static(&[0x5A; 64]);
    let props = Properties {
        message_expiry_interval: Some(60),
        user_properties: vec![(ByteString::from("k"), ByteString::from("v"))],
        ..Default::default()
    };

    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let v = if version.is_v5() { "v5" } else { "v3" };
        let packets = [
            (
                "publish qos0",
                publish(QoS::AtMostOnce, 0, &payload, Properties::default()),
            ),
            (
                "publish qos1",
                publish(QoS::AtLeastOnce, 7, &payload, Properties::default()),
            ),
            (
                "publish qos1 props",
                publish(QoS::AtLeastOnce, 7, &payload, props.clone()),
            ),
            ("puback", Packet::PubAck(PubAck::new(7))),
            ("pingreq", Packet::PingReq),
        ];
        for (what, packet) in &packets {
            let name = format!("decode {v} {what}");
            if selected(&name) {
                bench_decode(&name, packet, version);
            }
            let name = format!("encode {v} {what}");
            if selected(&name) {
                bench_encode(&name, packet, version);
            }
        }
        let name = format!("encode_publish {v} qos0");
        if selected(&name) {
            let mut out = BytesMut::with_capacity(256);
            report(&name, PACKET_COUNT * ROUNDS, || {
                for _ in 0..PACKET_COUNT * ROUNDS {
                    out.clear();
                    let topic = black_box("sensors/room-1/temperature");
                    encode_publish(
                        &mut out,
                        version,
                        topic,
                        &payload,
                        QoS::AtMostOnce,
                        false,
                        false,
                        0,
                        None,
                    )
                    .expect("encodes");
                    black_box(&out);
                }
            });
        }
    }
}

fn publish(qos: QoS, packet_id: u16, payload: &Bytes, properties: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from("sensors/room-1/temperature"),
        packet_id,
        payload: payload.clone(),
        properties: properties.into(),
    })
}

/// Decodes a stream of `PACKET_COUNT` copies, as one long receive buffer.
fn bench_decode(name: &str, packet: &Packet, version: ProtocolVersion) {
    let mut one = Vec::new();
    encode(packet, version, &mut one).expect("encodes");
    let stream = BytesMut::from(&one.repeat(PACKET_COUNT)[..]);
    let mut elapsed_ns = 0;
    for _ in 0..ROUNDS {
        let mut buf = stream.clone();
        let start = Instant::now();
        // Matched in place and looked at by reference, as a receive loop would: moving a
        // `Packet` (80 bytes) around would be measured instead of decoding it.
        loop {
            match decode(&mut buf, version, u32::MAX) {
                Ok(Some(packet)) => {
                    black_box(&packet);
                }
                Ok(None) => break,
                Err(error) => panic!("{name}: {error}"),
            }
        }
        elapsed_ns += start.elapsed().as_nanos();
    }
    print_line(name, PACKET_COUNT * ROUNDS, elapsed_ns, one.len());
}

/// Encodes into one reused outbox, cleared every `PACKET_COUNT` packets.
fn bench_encode(name: &str, packet: &Packet, version: ProtocolVersion) {
    let mut out = BytesMut::with_capacity(PACKET_COUNT * 256);
    let mut len = 0;
    report(name, PACKET_COUNT * ROUNDS, || {
        for _ in 0..ROUNDS {
            out.clear();
            for _ in 0..PACKET_COUNT {
                encode(black_box(packet), version, &mut out).expect("encodes");
            }
            len = out.len() / PACKET_COUNT;
        }
    });
    black_box(len);
}

fn report(name: &str, op_count: usize, mut run: impl FnMut()) {
    let start = Instant::now();
    run();
    print_line(name, op_count, start.elapsed().as_nanos(), 0);
}

fn print_line(name: &str, op_count: usize, elapsed_ns: u128, packet_len: usize) {
    let ns_per_op = elapsed_ns as f64 / op_count as f64;
    let bytes = if packet_len > 0 {
        format!("{packet_len:>4} B")
    } else {
        String::new()
    };
    println!(
        "{name:<32} {ns_per_op:>8.1} ns/op {:>8.2} M/s {bytes}",
        1e3 / ns_per_op
    );
}
