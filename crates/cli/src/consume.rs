//! `ticklake consume`: show what is on the topic.

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use ticklake_bus::{ConsumerOptions, StartAt};

use crate::options::{stop_flag, Global};

/// Options of `ticklake consume`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Consume as a member of this group, committing offsets after printing (several processes with
    /// the same group split the partitions). Without it, every partition is read and nothing committed.
    #[arg(long)]
    pub group: Option<String>,

    /// Start at the end of the topic (only new messages) instead of the beginning.
    #[arg(long)]
    pub from_end: bool,

    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,

    /// Keep waiting for new messages at the end of the topic (until Ctrl-C).
    #[arg(long, short)]
    pub follow: bool,

    /// Print only the message values (one JSON record per line), without partition, offset and key.
    #[arg(long)]
    pub values: bool,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let bus = g.bus()?;
    let mut consumer = ticklake_bus::consumer(
        &bus,
        ConsumerOptions {
            topic: g.topic.clone(),
            group: args.group.clone(),
            start: if args.from_end {
                StartAt::Latest
            } else {
                StartAt::Earliest
            },
            listener: None,
        },
    )
    .with_context(|| format!("cannot read topic {:?} ({})", g.topic, g.describe_bus()))?;
    let stop = stop_flag()?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let mut idle_polls = 0u32;
    while !stop.load(Ordering::Relaxed) && args.limit.is_none_or(|l| printed < l) {
        let want = args.limit.map_or(10_000, |l| (l - printed).min(10_000)) as usize;
        let batch = consumer.poll(want, Duration::from_millis(500))?;
        if batch.is_empty() {
            idle_polls += 1;
            // Done when every assigned partition is read to its end (a group needs a moment to join).
            let lag = consumer.lag()?;
            let caught_up = !lag.is_empty() && lag.iter().all(|l| l.lag() == 0);
            if !args.follow && (caught_up || (args.group.is_some() && idle_polls > 60)) {
                break;
            }
            continue;
        }
        idle_polls = 0;
        let mut next: std::collections::BTreeMap<i32, i64> = Default::default();
        for m in &batch {
            let value = m.payload.as_deref().map(String::from_utf8_lossy);
            let value = value.as_deref().unwrap_or("null");
            if args.values {
                writeln!(out, "{value}")?;
            } else {
                let key = m.key.as_deref().map(String::from_utf8_lossy);
                writeln!(
                    out,
                    "{}:{}\t{}\t{value}",
                    m.partition,
                    m.offset,
                    key.as_deref().unwrap_or("")
                )?;
            }
            next.insert(m.partition, m.offset + 1);
        }
        printed += batch.len() as u64;
        out.flush()?;
        if args.group.is_some() {
            let offsets: Vec<(i32, i64)> = next.into_iter().collect();
            consumer.commit(&offsets)?;
        }
    }
    out.flush()?;
    drop(out);
    eprintln!(
        "{printed} message(s) from topic {} ({})",
        g.topic,
        g.describe_bus()
    );
    Ok(ExitCode::SUCCESS)
}
