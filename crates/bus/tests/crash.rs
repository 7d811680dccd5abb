//! `kill -9` of a producer or a consumer of the embedded log loses no acknowledged record and no
//! committed offset. The test binary runs itself as the child process that gets killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ticklake_bus::{consumer, ensure_topic, producer, BusConfig, ConsumerOptions, StartAt};

const CHILD_ROLE: &str = "TICKLAKE_CRASH_CHILD";
const CHILD_DIR: &str = "TICKLAKE_CRASH_DIR";
const CHILD_RUN: &str = "TICKLAKE_CRASH_RUN";

fn cfg(dir: &std::path::Path) -> BusConfig {
    BusConfig::Embedded {
        dir: dir.to_path_buf(),
    }
}

fn group_opts(group: Option<&str>) -> ConsumerOptions {
    ConsumerOptions {
        topic: "t".into(),
        group: group.map(str::to_owned),
        start: StartAt::Earliest,
        listener: None,
    }
}

/// The child: not a test of its own; does nothing unless started by one of the tests below.
#[test]
fn crash_child() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    match role.as_str() {
        "producer" => {
            let run = std::env::var(CHILD_RUN).unwrap();
            let mut p = producer(&cfg(&dir), "t").unwrap();
            let mut seq = 0u64;
            loop {
                for _ in 0..500 {
                    p.send(b"K", format!("{run}:{seq}").as_bytes(), 0).unwrap();
                    seq += 1;
                }
                let d = p.flush().unwrap();
                println!("acked {}", d.acked);
            }
        }
        "consumer" => {
            let mut c = consumer(&cfg(&dir), group_opts(Some("g"))).unwrap();
            loop {
                let batch = c.poll(100, Duration::from_millis(100)).unwrap();
                if let Some(last) = batch.last() {
                    c.commit(&[(last.partition, last.offset + 1)]).unwrap();
                    println!("committed {}", last.offset + 1);
                }
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

/// Starts the child, reads its `word N` lines until `stop_after` of them, kills it with SIGKILL,
/// and returns the last N it printed.
fn run_and_kill(dir: &std::path::Path, role: &str, run: usize, stop_after: usize) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_DIR, dir)
        .env(CHILD_RUN, run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut last = 0;
    let mut lines = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(n) = line
            .split_once(' ')
            .and_then(|(_, n)| n.trim().parse().ok())
        {
            last = n;
            lines += 1;
            if lines >= stop_after || Instant::now() > deadline {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no flush, no clean exit.
    child.kill().unwrap();
    child.wait().unwrap();
    last
}

#[test]
fn kill_9_of_producers_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    ensure_topic(&cfg(dir.path()), "t", 1, 1).unwrap();
    let mut acked = Vec::new();
    for run in 0..6 {
        // Kill after a varying number of acknowledged batches (3..=13).
        acked.push(run_and_kill(
            dir.path(),
            "producer",
            run,
            3 + (run * 7) % 11,
        ));
    }
    let mut c = consumer(&cfg(dir.path()), group_opts(None)).unwrap();
    let mut next_seq = vec![0u64; acked.len()];
    loop {
        let batch = c.poll(10_000, Duration::from_millis(300)).unwrap();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            let text = String::from_utf8(m.payload.unwrap().to_vec()).unwrap();
            let (run, seq) = text.split_once(':').unwrap();
            let (run, seq): (usize, u64) = (run.parse().unwrap(), seq.parse().unwrap());
            assert_eq!(seq, next_seq[run], "run {run}: no gap, no repeat");
            next_seq[run] += 1;
        }
    }
    for (run, n) in acked.iter().enumerate() {
        assert!(*n > 0);
        assert!(
            next_seq[run] >= *n,
            "run {run}: {} stored < {n} acknowledged",
            next_seq[run]
        );
    }
    // The log is still writable after all that.
    let mut p = producer(&cfg(dir.path()), "t").unwrap();
    p.send(b"K", b"after:0", 0).unwrap();
    assert_eq!(p.flush().unwrap().acked, 1);
}

#[test]
fn kill_9_of_a_group_member_hands_over_at_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    ensure_topic(&cfg(dir.path()), "t", 1, 1).unwrap();
    let total = 20_000u64;
    let mut p = producer(&cfg(dir.path()), "t").unwrap();
    for i in 0..total {
        p.send(b"K", i.to_string().as_bytes(), 0).unwrap();
    }
    assert_eq!(p.flush().unwrap().acked, total);
    drop(p);

    let printed = run_and_kill(dir.path(), "consumer", 0, 25);
    assert!(printed > 0);
    // The dead member's lock is gone with its process: a new member takes over straight away.
    let started = Instant::now();
    let mut c = consumer(&cfg(dir.path()), group_opts(Some("g"))).unwrap();
    let first = c.poll(1, Duration::from_secs(5)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "handover took {:?}",
        started.elapsed()
    );
    let first_offset = first[0].offset as u64;
    // The new member starts exactly at the group's committed offset, which is at least what the
    // child said it committed (it keeps going between our last read line and the kill, so it may
    // have committed a few batches more than we saw).
    let committed = c.committed(0).unwrap().expect("the dead member committed") as u64;
    assert_eq!(first_offset, committed, "resumed at the committed offset");
    assert!(
        committed >= printed,
        "committed {committed} is behind what the child printed ({printed})"
    );
    let mut count = 1u64;
    loop {
        let batch = c.poll(10_000, Duration::from_millis(300)).unwrap();
        if batch.is_empty() {
            break;
        }
        count += batch.len() as u64;
    }
    assert_eq!(
        first_offset + count,
        total,
        "everything after the committed offset is read"
    );
}

#[test]
fn a_consumer_reads_while_another_process_produces() {
    let dir = tempfile::tempdir().unwrap();
    ensure_topic(&cfg(dir.path()), "t", 1, 1).unwrap();
    let reader_dir = dir.path().to_path_buf();
    // Read concurrently with the child producer, checking order as the data arrives.
    let reader = std::thread::spawn(move || {
        let mut c = consumer(&cfg(&reader_dir), group_opts(None)).unwrap();
        let mut next = 0u64;
        let mut idle = 0;
        while idle < 20 {
            let batch = c.poll(5_000, Duration::from_millis(100)).unwrap();
            if batch.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            for m in batch {
                let text = String::from_utf8(m.payload.unwrap().to_vec()).unwrap();
                let seq: u64 = text.split_once(':').unwrap().1.parse().unwrap();
                assert_eq!(seq, next, "in order, no gap, while being written");
                next += 1;
            }
        }
        next
    });
    let acked = run_and_kill(dir.path(), "producer", 0, 40);
    let read = reader.join().unwrap();
    assert!(read >= acked, "read {read} < acknowledged {acked}");
}
