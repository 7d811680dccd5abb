//! A deterministic market simulator.
//!
//! Each symbol follows a geometric random walk. Every record is one bar of `interval` for one symbol:
//! `open` is the previous close, `high`/`low` bound the path within the bar, `volume` is a heavy-tailed
//! whole number of shares. Symbols take turns, so event time advances by `interval` after every round.
//! The same seed always produces the same stream.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, StandardNormal};
use ticklake_model::Record;

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// How many symbols take turns (at least 1).
    pub symbols: usize,
    /// Random seed; the same seed gives the same stream.
    pub seed: u64,
    /// Event time of the first round, µs since the epoch (UTC).
    pub start_ts: i64,
    /// Bar length and time step between rounds, µs.
    pub interval: i64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            symbols: 10,
            seed: 42,
            // 2024-01-02T14:30:00Z, a market open.
            start_ts: 1_704_205_800_000_000,
            interval: 1_000_000,
        }
    }
}

struct Instrument {
    symbol: String,
    price: f64,
    /// Volatility per bar (standard deviation of the log return).
    sigma: f64,
    base_volume: f64,
}

/// An endless, deterministic stream of simulated bars (use `.take(n)` for a fixed count).
pub struct Simulator {
    rng: ChaCha8Rng,
    instruments: Vec<Instrument>,
    next: usize,
    ts: i64,
    interval: i64,
    volume: LogNormal<f64>,
}

/// Steps of the walk inside one bar, so high and low differ from open and close as in real bars.
const STEPS: usize = 4;

impl Simulator {
    /// A simulator for `options` (`symbols` of 0 is taken as 1).
    pub fn new(options: &SimOptions) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let n = options.symbols.max(1);
        let mut instruments = Vec::with_capacity(n);
        let mut seen = std::collections::HashSet::new();
        while instruments.len() < n {
            let symbol = ticker(&mut rng, instruments.len());
            if !seen.insert(symbol.clone()) {
                continue;
            }
            // Prices between ~5 and ~1000, daily-ish volatility scaled down to one bar.
            let price = (rng.random_range(1.6f64..6.9)).exp();
            instruments.push(Instrument {
                symbol,
                price: (price * 100.0).round() / 100.0,
                sigma: rng.random_range(0.0002..0.002),
                base_volume: rng.random_range(50.0..5_000.0),
            });
        }
        Simulator {
            rng,
            instruments,
            next: 0,
            ts: options.start_ts,
            interval: options.interval.max(1),
            // Median 1, long right tail.
            volume: LogNormal::new(0.0, 0.8)
                .unwrap_or_else(|_| unreachable!("constant parameters")),
        }
    }

    /// The symbols, in the order they take turns.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.instruments.iter().map(|i| i.symbol.as_str())
    }
}

/// A 3- or 4-letter ticker; the index keeps long symbol lists unique without many retries.
fn ticker(rng: &mut ChaCha8Rng, index: usize) -> String {
    let len = if index < 4000 {
        rng.random_range(3..=4)
    } else {
        5
    };
    let mut s: String = (0..len)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect();
    if index >= 4000 {
        s.push_str(&index.to_string());
    }
    s
}

fn round_cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl Iterator for Simulator {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let i = self.next;
        let inst = &mut self.instruments[i];
        let open = inst.price;
        let (mut high, mut low, mut p) = (open, open, open);
        let step_sigma = inst.sigma / (STEPS as f64).sqrt();
        for _ in 0..STEPS {
            let z: f64 = StandardNormal.sample(&mut self.rng);
            p *= (z * step_sigma).exp();
            high = high.max(p);
            low = low.min(p);
        }
        let close = round_cents(p).max(0.01);
        inst.price = close;
        let volume = (inst.base_volume * self.volume.sample(&mut self.rng)).round();
        let mut r = Record::new(inst.symbol.clone(), self.ts);
        r.open = Some(open);
        r.high = Some(round_cents(high).max(open.max(close)));
        r.low = Some(round_cents(low).min(open.min(close)).max(0.01));
        r.close = Some(close);
        r.volume = Some(volume);
        self.next += 1;
        if self.next == self.instruments.len() {
            self.next = 0;
            self.ts += self.interval;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let opts = SimOptions::default();
        let a: Vec<Record> = Simulator::new(&opts).take(1000).collect();
        let b: Vec<Record> = Simulator::new(&opts).take(1000).collect();
        assert_eq!(a, b);
        let c: Vec<Record> = Simulator::new(&SimOptions { seed: 7, ..opts })
            .take(1000)
            .collect();
        assert_ne!(a, c);
    }

    #[test]
    fn bars_are_plausible() {
        let opts = SimOptions {
            symbols: 50,
            ..Default::default()
        };
        let sim = Simulator::new(&opts);
        let symbols: Vec<String> = sim.symbols().map(str::to_owned).collect();
        assert_eq!(symbols.len(), 50);
        let unique: std::collections::HashSet<_> = symbols.iter().collect();
        assert_eq!(unique.len(), 50);
        let mut last_close = std::collections::HashMap::new();
        for (n, r) in sim.take(50 * 200).enumerate() {
            let (o, h, l, c, v) = (
                r.open.unwrap(),
                r.high.unwrap(),
                r.low.unwrap(),
                r.close.unwrap(),
                r.volume.unwrap(),
            );
            assert!(l > 0.0 && l <= o.min(c) && h >= o.max(c), "{r:?}");
            assert!(v >= 0.0 && v.fract() == 0.0);
            assert_eq!(r.symbol, symbols[n % 50], "symbols take turns");
            assert_eq!(r.ts, opts.start_ts + (n / 50) as i64 * opts.interval);
            if let Some(prev) = last_close.insert(r.symbol.clone(), c) {
                assert_eq!(o, prev, "a bar opens at the previous close");
                assert!((c / prev).ln().abs() < 0.05, "moves are small per bar");
            }
        }
    }
}
