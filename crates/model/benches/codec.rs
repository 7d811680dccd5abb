//! JSON message <-> record <-> Arrow throughput (records/s are reported as elements/s).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;
use ticklake_model::{arrow, json, Record, Value};

/// 10,000 seed-shaped records (OHLCV plus two extra columns), 100 symbols.
fn records() -> Vec<Record> {
    (0..10_000)
        .map(|i| {
            let mut r = Record::new(
                format!("SYM{}", i % 100),
                1_704_205_800_000_000 + i * 1_000_000,
            );
            let p = 100.0 + (i % 977) as f64 * 0.37;
            r.open = Some(p);
            r.high = Some(p + 1.25);
            r.low = Some(p - 0.75);
            r.close = Some(p + 0.5);
            r.volume = Some((i * 37 % 100_000) as f64);
            r.extra
                .push((Arc::from("adj_close"), Value::Number(p + 0.49)));
            r.extra
                .push((Arc::from("close_usd"), Value::Number(p / 7.8)));
            r
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let recs = records();
    let messages: Vec<Vec<u8>> = recs.iter().map(json::encode_to_vec).collect();
    let batch = arrow::records_to_batch(&recs).unwrap();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("json_encode_record", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            for r in &recs {
                buf.clear();
                json::encode(r, &mut buf);
            }
        })
    });
    g.bench_function("json_decode_record", |b| {
        b.iter(|| {
            for m in &messages {
                std::hint::black_box(json::decode(m).unwrap());
            }
        })
    });
    let plain: Vec<Vec<u8>> = recs
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.extra.clear();
            json::encode_to_vec(&r)
        })
        .collect();
    g.bench_function("json_decode_borrowed_ohlcv", |b| {
        b.iter(|| {
            for m in &plain {
                std::hint::black_box(json::decode_borrowed(m).unwrap());
            }
        })
    });
    g.bench_function("json_messages_to_arrow_batch", |b| {
        b.iter(|| arrow::decode_messages(messages.iter().map(Vec::as_slice)).unwrap())
    });
    g.bench_function("arrow_batch_to_json_messages", |b| {
        b.iter_batched(
            || batch.clone(),
            |bt| arrow::batch_to_messages(&bt).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
