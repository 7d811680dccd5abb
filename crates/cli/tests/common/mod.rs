//! Helpers shared by the CLI tests: a working folder, the bus to use, running the real binary, and
//! reading the lake back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use ticklake_model::Record;

/// A sample shipped in the project's `data/` folder: the HSI file the demo uses and the dirty GSPTSE
/// file (dd/mm/yyyy dates, thousands of blank rows).
pub fn shared_data(name: &str) -> PathBuf {
    crate_dir().join("../../data").join(name)
}

/// This crate's folder in the checkout the tests run from. Read when the test runs (cargo sets it), not
/// baked in at build time: a test binary built from another checkout sharing the target folder would
/// otherwise use that checkout's scripts and data.
pub fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub brokers: Option<String>,
    pub topic: String,
    /// `--lake` (default: `./lake` in `dir`).
    pub lake: Option<String>,
    /// Extra environment for the commands (the S3 settings).
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn embedded() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            brokers: None,
            topic: "stock-topic".into(),
            lake: None,
            vars: Vec::new(),
        }
    }

    pub fn kafka() -> Env {
        let brokers = std::env::var("TICKLAKE_TEST_KAFKA")
            .expect("TICKLAKE_TEST_KAFKA is not set: run scripts/test.sh, which starts a broker");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Env {
            dir: tempfile::tempdir().unwrap(),
            brokers: Some(brokers),
            topic: format!("cli-{nanos}"),
            lake: None,
            vars: Vec::new(),
        }
    }

    /// The command for `args`, with this environment's bus, topic, lake and variables.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticklake"));
        cmd.current_dir(self.dir.path())
            .env_remove("TICKLAKE_BROKERS");
        if !args.contains(&"--topic") {
            cmd.args(["--topic", &self.topic]);
        }
        if let Some(b) = &self.brokers {
            cmd.args(["--brokers", b]);
        }
        if let Some(l) = &self.lake {
            if !args.contains(&"--lake") {
                cmd.args(["--lake", l]);
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.args(args);
        // Kafka groups span topics: tests sharing one broker must not share the default sink group, or
        // their sinks join one group and hold up each other's rebalances.
        if self.brokers.is_some() && args.contains(&"sink") && !args.contains(&"--group") {
            cmd.args(["--group", &format!("g-{}", self.topic)]);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Starts `args` in the background, output discarded.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
        (stdout, stderr)
    }

    /// `ticklake sink --once` into the Iceberg table `table`, in a consumer group of that name (so it
    /// does not take over another sink's group), with `extra` options; its standard output.
    pub fn sink_into_iceberg(&self, table: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "sink",
            "--once",
            "--table-format",
            "iceberg",
            "--table",
            table,
            "--group",
            table,
        ];
        args.extend_from_slice(extra);
        self.ok(&args).0
    }

    pub fn values(&self) -> Vec<String> {
        let (stdout, _) = self.ok(&["consume", "--values"]);
        stdout.lines().map(str::to_owned).collect()
    }
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// S3 settings for the moto server that `scripts/test.sh` starts (`TICKLAKE_TEST_S3`).
pub fn moto_url() -> String {
    std::env::var("TICKLAKE_TEST_S3")
        .expect("TICKLAKE_TEST_S3 is not set: run scripts/test.sh, which starts a moto S3 server")
}

impl Env {
    /// The lake on a new bucket of the moto server, reached through the standard AWS variables.
    pub fn with_s3_lake(mut self) -> Env {
        let url = moto_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let bucket = format!("lake-{nanos}");
        ureq::put(&format!("{url}/{bucket}"))
            .send_empty()
            .expect("create the bucket on moto");
        self.lake = Some(format!("s3://{bucket}/warehouse"));
        self.vars = vec![
            ("AWS_ENDPOINT_URL".into(), url),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ];
        self
    }

    /// The table the sink writes by default: the topic in snake_case.
    pub fn table(&self) -> String {
        self.topic.replace(['-', '.'], "_")
    }

    /// The lake, opened the way the binary opens it.
    pub fn open_lake(&self) -> ticklake_sink::Lake {
        match &self.lake {
            Some(l) if l.starts_with("s3://") => {
                let opts: Vec<(String, String)> = [
                    ("aws_endpoint", "AWS_ENDPOINT_URL"),
                    ("aws_allow_http", "AWS_ALLOW_HTTP"),
                    ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
                    ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                    ("aws_region", "AWS_REGION"),
                ]
                .iter()
                .map(|(k, var)| {
                    let v = self.vars.iter().find(|(n, _)| n == var).unwrap().1.clone();
                    (k.to_string(), v)
                })
                .collect();
                ticklake_sink::Lake::open_with(l, &opts).unwrap()
            }
            Some(l) => {
                ticklake_sink::Lake::open(self.dir.path().join(l).to_str().unwrap()).unwrap()
            }
            None => {
                ticklake_sink::Lake::open(self.dir.path().join("lake").to_str().unwrap()).unwrap()
            }
        }
    }

    /// Every file in the lake below `rel`.
    pub fn lake_files(&self, rel: &str) -> Vec<String> {
        let lake = self.open_lake();
        runtime().block_on(lake.list(rel)).unwrap()
    }

    /// Every record in the table's Parquet files, with the folder it was found in. Once a compaction
    /// has merged files (a Hive sink compacts the partitions it fills every minute by default), the
    /// table's files are those the catalog points at, not all in its folder: then every record a
    /// query of the table reads, with the folder given as `(catalog)`.
    pub fn lake_records(&self) -> Vec<(String, Record)> {
        let lake = self.open_lake();
        let rt = runtime();
        let mut out = Vec::new();
        let files = rt.block_on(lake.list(&self.table())).unwrap();
        if files.iter().any(|f| f.contains("/_compacted/")) {
            let records = self.catalog_records();
            return records
                .into_iter()
                .map(|r| ("(catalog)".into(), r))
                .collect();
        }
        for f in files {
            assert!(
                f.ends_with(".parquet"),
                "only data files in the table folder: {f}"
            );
            let bytes = rt.block_on(lake.get(&f)).unwrap();
            let folder = f.rsplit_once('/').unwrap().0.to_owned();
            out.extend(
                parquet_records(bytes)
                    .into_iter()
                    .map(|r| (folder.clone(), r)),
            );
        }
        out
    }

    /// Every record a query of the table reads (through the catalog: the files at its partitions'
    /// locations, or the Iceberg table's snapshot).
    pub fn catalog_records(&self) -> Vec<Record> {
        let out = self.dir.path().join("all.parquet");
        self.ok(&[
            "query",
            "--format",
            "parquet",
            "--output",
            path_str(&out),
            &format!(
                "SELECT symbol, ts, open, high, low, close, volume FROM {}",
                self.table()
            ),
        ]);
        parquet_records(std::fs::File::open(&out).unwrap())
    }
}

/// The records of one Parquet file.
fn parquet_records(file: impl parquet::file::reader::ChunkReader + 'static) -> Vec<Record> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .flat_map(|b| ticklake_model::arrow::batch_to_records(&b.unwrap()).unwrap())
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The first `count` records of the simulator with `symbols` symbols and `seed`, from its default start
/// (what `produce --simulate --symbols N --seed S --count C` sends).
pub fn simulated_records(symbols: usize, seed: u64, count: usize) -> Vec<Record> {
    ticklake_feed::sim::Simulator::new(&ticklake_feed::sim::SimOptions {
        symbols,
        seed,
        ..Default::default()
    })
    .take(count)
    .collect()
}

/// A record as a comparable key: (symbol, ts, open, high, low, close, volume) with floats as bits.
pub fn key(r: &Record) -> (String, i64, [u64; 5]) {
    let f = |v: Option<f64>| v.map_or(u64::MAX, f64::to_bits);
    (
        r.symbol.clone(),
        r.ts,
        [f(r.open), f(r.high), f(r.low), f(r.close), f(r.volume)],
    )
}

/// The multiset of `records`, sorted.
pub fn multiset<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<(String, i64, [u64; 5])> {
    let mut v: Vec<_> = records.into_iter().map(key).collect();
    v.sort();
    v
}

/// The folder a record belongs in with the default partitioning.
pub fn expected_folder(table: &str, r: &Record) -> String {
    format!(
        "{table}/{}",
        ticklake_sink::Partitioning::default().path_for(&r.symbol, r.ts)
    )
}

/// Every good row of a seed-format CSV, read independently of the feed crate (only ISO and dd/mm/yyyy).
pub fn seed_csv_records(path: &Path) -> Vec<Record> {
    let mut rd = csv::Reader::from_path(path).unwrap();
    let mut out = Vec::new();
    for row in rd.records() {
        let row = row.unwrap();
        if row.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let date = row[1].trim();
        let iso = if date.contains('/') {
            let p: Vec<&str> = date.split('/').collect();
            format!("{}-{}-{}", p[2], p[1], p[0])
        } else {
            date.to_owned()
        };
        let mut r = Record::new(
            row[0].trim(),
            ticklake_model::time::parse_iso(&iso).unwrap(),
        );
        let n = |i: usize| Some(row[i].trim().parse::<f64>().unwrap());
        (r.open, r.high, r.low, r.close, r.volume) = (n(2), n(3), n(4), n(5), n(7));
        out.push(r);
    }
    out
}

/// Sends SIGTERM (a clean stop) to a child.
pub fn terminate(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

/// The `N records written` number a sink printed.
pub fn written(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            l.split_once(" records written")
                .map(|(n, _)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"))
}

/// Runs `cmd` with `input` on its standard input.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs tests/reference/reference.py (DuckDB answers, Glue dumps) with the Python of scripts/test.sh's
/// venv, and parses its JSON output.
pub fn reference(args: &[&str], input: &str, vars: &[(String, String)]) -> serde_json::Value {
    let python = std::env::var("TICKLAKE_TEST_PYTHON").expect(
        "TICKLAKE_TEST_PYTHON is not set: run scripts/test.sh, which installs DuckDB and boto3",
    );
    let mut cmd = Command::new(python);
    cmd.arg(crate_dir().join("tests/reference/reference.py"))
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = run_with_input(cmd, input.as_bytes());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "reference.py {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// A running `ticklake serve`, stopped when dropped.
pub struct Served {
    child: Child,
    pub base: String,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    /// Starts `ticklake serve` on a port the system chooses, with `extra` options and variables.
    pub fn start(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> Served {
        let mut args = vec!["serve"];
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend(extra);
        Served::spawn(env, &args, vars)
    }

    /// Runs the command `args` (one that serves, like `serve` or `demo --serve`) and waits until it
    /// says where it serves.
    pub fn spawn(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Served {
        let mut child = env
            .command(args)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        let mut seen = String::new();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if let Some(rest) = line.split_once("serving the lake on http://") {
                        break rest.1.split_whitespace().next().unwrap().to_owned();
                    }
                }
                _ => panic!("ticklake serve stopped before serving:\n{seen}"),
            }
        };
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        // A server bound to every address is reached on loopback.
        let addr = addr.replace("0.0.0.0", "127.0.0.1");
        Served {
            child,
            base: format!("http://{addr}"),
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops it as Ctrl-C would (SIGTERM) and returns how it exited.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "it did not stop within 60 s of SIGTERM:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Simulates `records` records of six symbols, one every 30 s from `start`, onto the environment's topic.
pub fn produce_six_symbols(env: &Env, records: u64, start: &str) {
    env.ok(&[
        "produce",
        "--simulate",
        "--count",
        &records.to_string(),
        "--symbols",
        "6",
        "--interval",
        "30s",
        "--start",
        start,
        "-q",
    ]);
}
