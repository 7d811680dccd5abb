//! `ticklake query "SQL"` and the `ticklake sql` shell.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use rustyline::error::ReadlineError;
use ticklake_query::{split_statements, write_output, Engine, EngineOptions, OutputFormat};

use crate::options::{runtime, Global};

/// How results are shown.
#[derive(ClapArgs, Debug, Clone)]
pub struct Shown {
    /// Output format: table, csv, json (one object per line) or parquet (needs --output).
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,

    /// Write the result to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Print each statement's run time (planning and execution, not printing) to standard error.
    #[arg(long)]
    pub timing: bool,
}

/// Where queries may read and how much they may take.
#[derive(ClapArgs, Debug, Clone)]
pub struct Limits {
    /// Memory one query may hold for sorts, joins and aggregations (beyond it, they spill to disk or
    /// the query fails), e.g. 4GiB.
    #[arg(long, default_value = "4GiB", value_name = "SIZE")]
    pub memory_limit: bytesize::ByteSize,

    /// Stop a statement that runs longer than this, e.g. 30s or 10m.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,

    /// Also read catalog tables in this local folder (file:// URL or path); tables on local disk
    /// outside the lake are refused otherwise. Repeatable.
    #[arg(long, value_name = "FOLDER")]
    pub allow_location: Vec<String>,
}

/// Options of `ticklake query`.
#[derive(ClapArgs, Debug)]
pub struct QueryArgs {
    /// The SQL: one or more statements separated by `;` (`-` reads them from standard input).
    pub sql: String,

    #[command(flatten)]
    pub shown: Shown,

    #[command(flatten)]
    pub limits: Limits,
}

/// Options of `ticklake sql`.
#[derive(ClapArgs, Debug)]
pub struct ShellArgs {
    #[command(flatten)]
    pub shown: Shown,

    #[command(flatten)]
    pub limits: Limits,

    /// The history file [default: ~/.ticklake_history].
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
}

pub fn engine(g: &Global, io: &tokio::runtime::Runtime, limits: &Limits) -> Result<Engine> {
    let catalog = g.open_catalog(io)?;
    let mut allowed = vec![ticklake_sink::Lake::open(&g.lake)?.url_of("")];
    for a in &limits.allow_location {
        allowed.push(if a.contains("://") {
            a.clone()
        } else {
            ticklake_sink::Lake::open(a)?.url_of("")
        });
    }
    let options = EngineOptions {
        s3_options: Vec::new(),
        memory_limit: Some(usize::try_from(limits.memory_limit.as_u64()).unwrap_or(usize::MAX)),
        timeout: Some(limits.timeout),
        allowed_locations: allowed,
    };
    // The lake's Iceberg tables, when their catalog exists.
    let iceberg = match g.iceberg_config_to_read()? {
        Some(config) => io
            .block_on(ticklake_iceberg::IcebergLake::open_if_present(&config))
            .context("cannot open the lake's Iceberg catalog")?
            .map(std::sync::Arc::new),
        None => None,
    };
    io.block_on(Engine::with_iceberg(catalog, iceberg, &g.database, options))
        .context("cannot start the query engine")
}

fn sink(shown: &Shown) -> Result<Box<dyn Write>> {
    Ok(match &shown.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => {
            if shown.format == OutputFormat::Parquet && std::io::stdout().is_terminal() {
                bail!("--format parquet writes a binary file: give --output FILE (or redirect)");
            }
            Box::new(std::io::stdout().lock())
        }
    })
}

/// Runs the statements of `sql`; stops at the first failure, reported with its position.
fn run_script(
    engine: &Engine,
    io: &tokio::runtime::Runtime,
    sql: &str,
    shown: &Shown,
    out: &mut dyn Write,
) -> Result<bool> {
    let statements = match split_statements(sql) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", e.render(sql));
            return Ok(false);
        }
    };
    if statements.is_empty() {
        bail!("no SQL statement given");
    }
    for stmt in statements {
        let started = std::time::Instant::now();
        let result = io.block_on(engine.execute(&stmt));
        if shown.timing {
            eprintln!("time: {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
        }
        match result {
            Ok(result) => write_output(&result, shown.format, out)?,
            Err(e) => {
                eprintln!("error: {}", e.render(&stmt));
                return Ok(false);
            }
        }
    }
    Ok(true)
}

pub fn query(g: &Global, args: QueryArgs) -> Result<ExitCode> {
    let sql = if args.sql == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading SQL from standard input")?;
        s
    } else {
        args.sql.clone()
    };
    let io = runtime()?;
    let engine = engine(g, &io, &args.limits)?;
    let mut out = sink(&args.shown)?;
    let ok = run_script(&engine, &io, &sql, &args.shown, &mut out)?;
    out.flush()?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

const HELP: &str = "\
Statements end with ';' and may span lines. Examples:
  SHOW TABLES;
  DESCRIBE stock_topic;
  SHOW PARTITIONS stock_topic;
  SELECT symbol, count(*), vwap(close, volume) FROM stock_topic GROUP BY symbol;
  SELECT * FROM ohlcv('stock_topic', '5 minutes', 'SYM000') LIMIT 10;
  SELECT file, bytes FROM files('stock_topic') WHERE date = '2024-01-02';
  EXPLAIN SELECT * FROM stock_topic WHERE date = '2024-01-02';
Shell commands: \\format table|csv|json, \\refresh (re-read the catalog), \\help, \\quit";

pub fn shell(g: &Global, args: ShellArgs) -> Result<ExitCode> {
    let io = runtime()?;
    let engine = engine(g, &io, &args.limits)?;
    let mut shown = args.shown.clone();
    if shown.format == OutputFormat::Parquet {
        bail!("the shell shows results as table, csv or json; use `ticklake query --format parquet --output FILE`");
    }
    let history = args
        .history
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ticklake_history")));
    let mut rl = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        outln!(
            "ticklake sql — {}. End statements with ';'. \\help for help, \\quit to leave.",
            engine.catalog().describe()
        );
    }
    let mut buf = String::new();
    let mut failed = false;
    loop {
        let prompt = if buf.is_empty() {
            "ticklake> "
        } else {
            "      ..> "
        };
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                buf.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a line"),
        };
        let trimmed = line.trim();
        if buf.is_empty() && trimmed.starts_with('\\') {
            let _ = rl.add_history_entry(trimmed);
            let mut words = trimmed.split_whitespace();
            match (words.next(), words.next()) {
                (Some("\\q" | "\\quit"), _) => break,
                (Some("\\help" | "\\h" | "\\?"), _) => outln!("{HELP}"),
                (Some("\\refresh"), _) => match io.block_on(engine.refresh()) {
                    Ok(()) => outln!("catalog re-read"),
                    Err(e) => eprintln!("error: {e}"),
                },
                (Some("\\format"), Some(f)) => match f.parse::<OutputFormat>() {
                    Ok(OutputFormat::Parquet) => eprintln!("error: the shell cannot show parquet"),
                    Ok(f) => shown.format = f,
                    Err(e) => eprintln!("error: {e}"),
                },
                _ => eprintln!("error: unknown command {trimmed:?}; \\help lists them"),
            }
            continue;
        }
        if buf.is_empty() && matches!(trimmed, "quit" | "exit") {
            break;
        }
        if trimmed.is_empty() && buf.is_empty() {
            continue;
        }
        buf.push_str(&line);
        buf.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let _ = rl.add_history_entry(buf.trim());
        let mut out = sink(&shown)?;
        if !run_script(&engine, &io, &buf, &shown, &mut out)? {
            failed = true;
        }
        out.flush()?;
        buf.clear();
    }
    if !buf.trim().is_empty() {
        let mut out = sink(&shown)?;
        if !run_script(&engine, &io, &buf, &shown, &mut out)? {
            failed = true;
        }
        out.flush()?;
    }
    if let Some(h) = &history {
        if let Err(e) = rl.save_history(h) {
            tracing::warn!("cannot save the history to {}: {e}", h.display());
        }
    }
    // Piped scripts report failure through the exit status; an interactive session ends normally.
    Ok(if failed && !interactive {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
