//! `ticklake plot`: a candlestick chart of one symbol from the lake (see the `ticklake-plot` crate).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use ticklake_plot::{Candle, ChartSpec, ImageFormat};
use ticklake_query::market::{bars_sql, check_table, BarInterval, TimeBound};

use crate::options::{runtime, Global};
use crate::query::Limits;

/// Options of `ticklake plot`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The symbol to chart.
    #[arg(long)]
    pub symbol: String,

    /// One candle's length: 1m, 5m, 1h, 1d, 1w, 1mo, 1y (or 5 minutes, 1 day).
    #[arg(long, default_value = "1d")]
    pub interval: BarInterval,

    /// The first bar: a date (2024-01-02), an RFC 3339 time or Unix seconds [default: the oldest].
    #[arg(long, value_name = "TIME")]
    pub from: Option<TimeBound>,

    /// Bars before this time [default: up to the newest].
    #[arg(long, value_name = "TIME")]
    pub to: Option<TimeBound>,

    /// The picture to write: .png or .svg.
    #[arg(long, short)]
    pub output: PathBuf,

    /// The table to read [default: the topic's table].
    #[arg(long)]
    pub table: Option<String>,

    /// The most candles drawn; with more, the newest are.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub max_bars: usize,

    /// The picture's width in pixels.
    #[arg(long, default_value_t = 1200)]
    pub width: u32,

    /// The picture's height in pixels.
    #[arg(long, default_value_t = 700)]
    pub height: u32,

    /// The chart's title [default: the symbol, interval, table and time span].
    #[arg(long)]
    pub title: Option<String>,

    #[command(flatten)]
    pub limits: Limits,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    // Everything the arguments can get wrong is said before the lake is read.
    ImageFormat::from_path(&args.output)?;
    ticklake_model::names::check_symbol(&args.symbol)
        .map_err(|e| anyhow::anyhow!("--symbol {:?}: {e}", args.symbol))?;
    let table = args
        .table
        .clone()
        .unwrap_or_else(|| ticklake_sink::default_table(&g.topic));
    check_table(&table).map_err(|e| anyhow::anyhow!("--table: {e}"))?;
    if let (Some(from), Some(to)) = (&args.from, &args.to) {
        if from >= to {
            bail!("--from must be before --to");
        }
    }
    if args.max_bars == 0 {
        bail!("--max-bars must be at least 1");
    }
    let spec = ChartSpec {
        title: String::new(),
        width: args.width,
        height: args.height,
    };
    spec.check()?;

    let io = runtime()?;
    let engine = crate::query::engine(g, &io, &args.limits)?;
    let sql = bars_sql(
        &table,
        &args.symbol,
        &args.interval,
        args.from.as_ref(),
        args.to.as_ref(),
    );
    let (out, truncated) = io
        .block_on(engine.execute_limited(&sql, args.max_bars))
        .with_context(|| format!("cannot read the bars of {} in {table}", args.symbol))?;
    let candles = Candle::from_batches(&out.batches)?;
    let (Some(first), Some(last)) = (candles.first(), candles.last()) else {
        bail!(
            "no bars of {} in table {table}{}: `ticklake query \"SELECT DISTINCT symbol FROM {table}\"` lists its symbols",
            args.symbol,
            span(args.from.as_ref(), args.to.as_ref())
        );
    };
    let title = args.title.clone().unwrap_or_else(|| {
        use chrono::Timelike;
        let daily = [first, last]
            .iter()
            .all(|c| c.time.num_seconds_from_midnight() == 0);
        let time = if daily { "%Y-%m-%d" } else { "%Y-%m-%d %H:%M" };
        format!(
            "{}, {} bars, {} to {} ({table})",
            args.symbol,
            args.interval,
            first.time.format(time),
            last.time.format(time),
        )
    });
    ticklake_plot::render(&candles, &ChartSpec { title, ..spec }, &args.output)?;
    eprintln!(
        "{} bars of {} written to {}{}",
        candles.len(),
        args.symbol,
        args.output.display(),
        if truncated {
            format!(
                " (the newest {}; narrow --from and --to, or widen --interval, to see the rest)",
                args.max_bars
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn span(from: Option<&TimeBound>, to: Option<&TimeBound>) -> String {
    match (from, to) {
        (None, None) => String::new(),
        (from, to) => format!(
            " from {} to {}",
            from.map(|t| t.to_string())
                .unwrap_or_else(|| "the start".into()),
            to.map(|t| t.to_string())
                .unwrap_or_else(|| "the end".into())
        ),
    }
}
