//! Decode and encode of a typical PUBLISH (64 B and 1 KiB payloads) at MQTT 3.1.1 and 5.0.

use bytes::{Bytes, BytesMut};
use cicada::protocol::{decode, encode, Packet, Properties, ProtocolVersion, Publish, QoS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

fn publish(size: usize, v5: bool) -> Packet {
    let mut properties = Properties::default();
    if v5 {
        properties.message_expiry_interval = Some(3600);
        properties
            .user_properties
            .push(("source".into(), "sensor".into()));
    }
    Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        pkid: 42,
        topic: "device/4242/data/temperature".into(),
        payload: Bytes::from(vec![0x5A; size]),
        properties,
        ..Publish::default()
    })
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for (version, label) in [(ProtocolVersion::V311, "v311"), (ProtocolVersion::V5, "v5")] {
        for size in [64usize, 1024] {
            let packet = publish(size, version.is_v5());
            let mut wire = BytesMut::new();
            encode(&packet, version, &mut wire).unwrap();
            let wire = wire.freeze();
            group.throughput(Throughput::Bytes(wire.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("encode_{label}"), size),
                &packet,
                |b, p| {
                    let mut buf = BytesMut::with_capacity(4096);
                    b.iter(|| {
                        buf.clear();
                        encode(black_box(p), version, &mut buf).unwrap();
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("decode_{label}"), size),
                &wire,
                |b, w| {
                    b.iter(|| {
                        let mut buf = BytesMut::from(&w[..]);
                        black_box(decode(&mut buf, version, 1 << 20).unwrap());
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
