//! CSV replay and simulator throughput (records/s are reported as elements/s).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::PathBuf;
use ticklake_feed::csv::{CsvOptions, CsvSource, Row};
use ticklake_feed::sim::{SimOptions, Simulator};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/indexProcessed-HSI.csv")
}

fn feed(c: &mut Criterion) {
    let path = sample();
    let rows = CsvSource::open(&path, &CsvOptions::default())
        .unwrap()
        .count() as u64;
    let mut g = c.benchmark_group("feed");
    g.throughput(Throughput::Elements(rows));
    g.bench_function("csv_parse_hsi_sample", |b| {
        b.iter(|| {
            let src = CsvSource::open(&path, &CsvOptions::default()).unwrap();
            let good = src.filter(|r| matches!(r, Ok(Row::Good(_)))).count();
            assert_eq!(good as u64, rows);
        })
    });
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("simulate_100_symbols", |b| {
        b.iter(|| {
            let sim = Simulator::new(&SimOptions {
                symbols: 100,
                ..Default::default()
            });
            std::hint::black_box(sim.take(100_000).count())
        })
    });
    g.finish();
}

criterion_group!(benches, feed);
criterion_main!(benches);
