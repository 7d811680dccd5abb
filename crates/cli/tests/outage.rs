//! Outages: the S3 server goes away for half a minute in the middle of a stream (a proxy between the
//! sink and moto resets every connection), and the sink waits it out — saying so — and loses or
//! duplicates nothing.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{crate_dir, multiset, simulated_records, terminate, text, Env};
use ticklake_model::Record;

/// A TCP proxy on 127.0.0.1 to `upstream` that can be switched off: then it closes every open
/// connection and resets every new one, or (`answer_503`) answers every request with an HTTP 503.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    answer_503: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let answer_503 = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, a, o) = (down.clone(), answer_503.clone(), open.clone());
        std::thread::spawn(move || {
            for mut client in listener.incoming().map_while(Result::ok) {
                if d.load(Ordering::SeqCst) {
                    if a.load(Ordering::SeqCst) {
                        std::thread::spawn(move || {
                            // Read the request head, then refuse it as an overloaded service does.
                            let mut buf = [0u8; 64 * 1024];
                            let mut head = Vec::new();
                            while let Ok(n) = client.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                                head.extend_from_slice(&buf[..n]);
                                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                                    break;
                                }
                            }
                            let _ = client.write_all(
                                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                                  Connection: close\r\n\r\n",
                            );
                            let _ = client.shutdown(Shutdown::Both);
                        });
                    } else {
                        let _ = client.shutdown(Shutdown::Both);
                    }
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut open = o.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Proxy {
            port,
            down,
            answer_503,
            open,
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

#[test]
fn s3_outage_mid_stream_is_waited_out() {
    s3_outage_mid_stream("hive");
}

/// The same outage under an Iceberg table on S3 (its catalog the embedded SQL file): data files,
/// manifests and metadata files wait for the store; the table ends with every record once.
#[test]
fn s3_outage_under_an_iceberg_table_is_waited_out() {
    s3_outage_mid_stream("iceberg");
}

fn s3_outage_mid_stream(format: &str) {
    let env = Env::embedded().with_s3_lake();
    let moto = common::moto_url();
    let proxy = Proxy::start(moto.trim_start_matches("http://").to_owned());
    let mut env = env;
    for (k, v) in env.vars.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = format!("http://127.0.0.1:{}", proxy.port);
        }
    }
    // The embedded log lives on local disk beside the S3 lake.
    let count = 200_000;
    let produce = env.spawn(&[
        "--log-dir",
        "log",
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "20",
        "--seed",
        "5",
        "--count",
        "200000",
        "--rate",
        "5000",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let sink_args = [
        "--log-dir",
        "log",
        "sink",
        "--flush-interval",
        "1s",
        "--table-format",
        format,
    ];
    let sink = env.spawn(&sink_args);
    std::thread::sleep(Duration::from_secs(3));
    proxy.set_down(true);
    std::thread::sleep(Duration::from_secs(30));
    proxy.set_down(false);
    let out = produce.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    std::thread::sleep(Duration::from_secs(5));
    terminate(&sink);
    let out = sink.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the sink rode the outage out: {stderr}"
    );
    assert!(
        stderr.contains("waiting for the lake")
            || stderr.contains("waiting for the catalog")
            || stderr.contains("waiting for the Iceberg table"),
        "it said what it waited for: {stderr}"
    );
    env.ok(&[&sink_args[..3], &["-q", "--once", "--table-format", format]].concat());
    let want = simulated_records(20, 5, count);
    if format == "hive" {
        let lake: Vec<Record> = env.lake_records().into_iter().map(|(_, r)| r).collect();
        assert_eq!(lake.len(), count, "every record exactly once");
        assert_eq!(multiset(&lake), multiset(&want));
    } else {
        // Each (symbol, ts) is one record: as many distinct pairs as rows, and as many as sent.
        let (stdout, _) = env.ok(&[
            "--log-dir",
            "log",
            "query",
            "--format",
            "csv",
            "SELECT count(*), count(DISTINCT symbol || CAST(ts AS VARCHAR)), sum(volume) FROM stock_topic",
        ]);
        let volume: f64 = want.iter().map(|r| r.volume.unwrap_or(0.0)).sum();
        let row: Vec<&str> = stdout.lines().nth(1).unwrap().split(',').collect();
        assert_eq!(
            row[0],
            count.to_string(),
            "every record exactly once: {stdout}"
        );
        assert_eq!(row[1], count.to_string(), "no record twice: {stdout}");
        let got: f64 = row[2].parse().unwrap();
        assert!((got - volume).abs() <= 1e-9 * volume, "{got} vs {volume}");
    }
}

/// An Apache Kafka broker of the test's own (started by scripts/services.sh), so that it can be stopped
/// and started again with its data.
struct OwnBroker {
    pid: u32,
    addr: String,
}

impl OwnBroker {
    fn start(dir: &std::path::Path) -> OwnBroker {
        let script = crate_dir().join("../../scripts/services.sh");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}' && start_kafka '{}' >/dev/null && echo $KAFKA_PID $KAFKA_ADDR",
                script.display(),
                dir.display()
            ))
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "the broker did not start: {stderr}");
        let (pid, addr) = stdout.trim().split_once(' ').unwrap();
        OwnBroker {
            pid: pid.parse().unwrap(),
            addr: addr.to_owned(),
        }
    }

    /// Stops the broker (SIGTERM, a clean shutdown) and waits until it is gone.
    fn stop(&self) {
        std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        let started = std::time::Instant::now();
        while std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the broker did not stop"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
    }
}

/// The broker restarts twice in the middle of a fast stream: the producer and the sink both carry on, the
/// topic holds every message once (an idempotent producer alone left thousands twice here: its
/// transactions are what keep them out), and so does the lake.
#[test]
fn broker_restart_mid_stream() {
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = OwnBroker::start(broker_dir.path());
    let mut env = Env::kafka();
    env.brokers = Some(broker.addr.clone());
    let count = 250_000;
    let produce = env.spawn(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "20",
        "--seed",
        "6",
        "--count",
        "250000",
        "--rate",
        "25000",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let sink = env.spawn(&["sink", "--flush-interval", "1s"]);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        broker.stop();
        std::thread::sleep(Duration::from_secs(4));
        broker = OwnBroker::start(broker_dir.path());
        assert_eq!(broker.addr, env.brokers.clone().unwrap(), "same address");
    }
    let out = produce.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the producer carried on: {:?}",
        text(&out)
    );
    let topic = env.values();
    assert_eq!(
        topic.iter().collect::<std::collections::HashSet<_>>().len(),
        count,
        "every message on the topic"
    );
    assert_eq!(topic.len(), count, "no message on the topic twice");
    std::thread::sleep(Duration::from_secs(3));
    terminate(&sink);
    let out = sink.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the sink carried on: {:?}",
        text(&out)
    );
    env.ok(&["-q", "sink", "--once"]);
    let found = env.lake_records();
    let lake: Vec<Record> = found.iter().map(|(_, r)| r.clone()).collect();
    let want = simulated_records(20, 6, count);
    if lake.len() != count {
        // The topic held each message once, so the sink wrote some twice: say where.
        let mut seen = std::collections::HashMap::new();
        for (folder, r) in &found {
            seen.entry((r.symbol.clone(), r.ts))
                .or_insert_with(Vec::new)
                .push(folder.clone());
        }
        let twice: Vec<_> = seen.iter().filter(|(_, f)| f.len() > 1).take(5).collect();
        panic!(
            "every record exactly once: the lake holds {} records, want {count}; some records \
             found more than once: {twice:?}",
            lake.len()
        );
    }
    assert_eq!(multiset(&lake), multiset(&want));
    drop(broker);
}

/// A small file system of the test's own (tmpfs, mounted as root), to fill up and to make read-only.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "mounting a tmpfs needs root (the test suite runs as root)"
        );
        SmallDisk {
            path: path.to_owned(),
        }
    }

    fn remount(&self, options: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {options}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A full disk is waited out (the sink says so) and a read-only lake stops the sink with the error and
/// nothing committed; once the disk has room or is writable again, the lake holds every record once.
#[test]
fn full_and_read_only_disk() {
    let env = Env::embedded();
    let disk = SmallDisk::mount(&env.dir.path().join("lake"), "128k");
    let meta = ["--log-dir", "log", "--catalog-file", "catalog.sqlite"];
    let run = |args: &[&str]| env.run(&[&meta[..], args].concat());
    let sim = |seed: &str, count: &str| {
        let out = run(&[
            "-q",
            "produce",
            "--simulate",
            "--symbols",
            "5",
            "--seed",
            seed,
            "--count",
            count,
        ]);
        assert!(out.status.success(), "{:?}", text(&out));
    };
    sim("1", "20000");
    let mut sink = env
        .command(&[&meta[..], &["sink", "--once"]].concat())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = sink.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("waiting for the lake") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the sink reports that it waits for room on the disk");
    disk.remount("size=64m");
    let status = sink.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert!(
        status.success(),
        "the sink finished once there was room: {stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");

    disk.remount("ro");
    sim("2", "5000");
    let out = run(&["-q", "sink", "--once"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "a read-only lake is an error");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    disk.remount("rw");
    let out = run(&["-q", "sink", "--once"]);
    assert!(out.status.success(), "{:?}", text(&out));

    let lake: Vec<Record> = env.lake_records().into_iter().map(|(_, r)| r).collect();
    let mut want = simulated_records(5, 1, 20_000);
    want.extend(simulated_records(5, 2, 5_000));
    assert_eq!(lake.len(), want.len(), "every record exactly once");
    assert_eq!(multiset(&lake), multiset(&want));
    drop(disk);
}

/// The catalog (AWS Glue on moto) answers 503 for 4 s as the sink starts and for 20 s during
/// registration: the sink waits, says so, and afterwards every partition is registered and queries
/// through Glue see every record.
#[test]
fn glue_outage_during_registration() {
    let moto = common::moto_url();
    let proxy = Proxy::start(moto.trim_start_matches("http://").to_owned());
    let mut env = Env::embedded();
    env.vars = vec![
        (
            "AWS_ENDPOINT_URL".into(),
            format!("http://127.0.0.1:{}", proxy.port),
        ),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let db = format!("outage_{nanos}");
    let glue = ["--catalog", "glue", "--database", db.as_str()];
    let count = 40_000;
    let produce = env.spawn(&[
        "-q",
        "produce",
        "--simulate",
        "--symbols",
        "4",
        "--seed",
        "8",
        "--interval",
        "1m",
        "--count",
        "40000",
        "--rate",
        "2000",
    ]);
    // Glue is away when the sink starts: it waits for the catalog to open, then carries on.
    proxy.answer_503.store(true, Ordering::SeqCst);
    proxy.set_down(true);
    let sink = env.spawn(&[&glue[..], &["sink", "--flush-interval", "1s"]].concat());
    std::thread::sleep(Duration::from_secs(4));
    proxy.set_down(false);
    // Cut Glue off again once the sink has registered the table: new date partitions keep coming, so
    // registrations fall into the outage.
    let started = std::time::Instant::now();
    let count_sql = ["query", "SELECT count(*) FROM stock_topic"];
    while !env
        .run(&[&glue[..], &count_sql[..]].concat())
        .status
        .success()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sink registered the table"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    proxy.answer_503.store(true, Ordering::SeqCst);
    proxy.set_down(true);
    std::thread::sleep(Duration::from_secs(20));
    proxy.set_down(false);
    assert!(produce.wait_with_output().unwrap().status.success());
    std::thread::sleep(Duration::from_secs(3));
    terminate(&sink);
    let out = sink.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the sink rode the outage out: {stderr}"
    );
    assert!(
        stderr.contains("waiting for the catalog"),
        "it said what it waited for: {stderr}"
    );
    env.ok(&[&glue[..], &["-q", "sink", "--once"]].concat());
    let (stdout, _) = env.ok(&[
        &glue[..],
        &[
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM stock_topic",
        ],
    ]
    .concat());
    assert_eq!(stdout.trim(), format!("n\n{count}"));
    // Every folder of the lake is a registered partition.
    let (stdout, _) = env.ok(&[
        &glue[..],
        &["query", "--format", "csv", "SHOW PARTITIONS stock_topic"],
    ]
    .concat());
    let mut folders: Vec<String> = env
        .lake_files("stock_topic")
        .iter()
        .map(|f| f.split('/').skip(1).take(2).collect::<Vec<_>>().join("/"))
        .collect();
    folders.dedup();
    assert_eq!(stdout.lines().count() - 1, folders.len(), "{stdout}");
}
