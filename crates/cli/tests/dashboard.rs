//! The page of `ticklake serve` in a real headless Chromium (playwright-core, from scripts/test.sh):
//! the ticker board moves while the simulator runs, the chart draws every bar of a symbol's history
//! from the lake and its newest candle moves before any flush, the SQL console shows rows and a bad
//! query's error in place. Screenshots go to $TICKLAKE_SCREENSHOTS (or the test's folder).

mod common;

use std::process::Command;

use common::{Env, Served};

/// Kills a child process when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_page_moves_with_the_feed_in_a_real_browser() {
    let var = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh, which installs it"))
    };
    let (playwright, chromium) = (
        var("TICKLAKE_TEST_PLAYWRIGHT"),
        var("TICKLAKE_TEST_CHROMIUM"),
    );

    // Three hours of one-minute bars of six symbols, up to this minute, in the lake.
    let env = Env::embedded();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = (now / 60 - 180) * 60;
    env.ok(&[
        "produce",
        "--simulate",
        "--symbols",
        "6",
        "--interval",
        "1m",
        "--start",
        &ticklake_model::time::format_rfc3339(start * 1_000_000),
        "--count",
        "1080",
        "-q",
    ]);
    env.ok(&["sink", "--once", "-q"]);
    let served = Served::start(&env, &[], &[]);
    // A live feed from now on, six records a second; no sink runs, so the page's newest candle can
    // only move by the live tail.
    let _feed = Killed(env.spawn(&[
        "produce",
        "--simulate",
        "--symbols",
        "6",
        "--interval",
        "1s",
        "--start",
        "now",
        "--realtime",
        "--count",
        "100000",
        "-q",
    ]));

    let shots = std::env::var("TICKLAKE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| env.dir.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(common::crate_dir().join("tests/dashboard/e2e.mjs"))
        .args([&served.url("/"), shots.to_str().unwrap(), "180", "6"])
        .env("TICKLAKE_TEST_PLAYWRIGHT", &playwright)
        .env("TICKLAKE_TEST_CHROMIUM", &chromium)
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&out);
    assert!(
        out.status.success(),
        "the page failed in Chromium:\n{stdout}\n{stderr}\nserver:\n{}",
        served.stderr.lock().unwrap()
    );
    let measures: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(measures["history"], 180);
    for shot in ["dashboard.png", "sql-error.png"] {
        let size = std::fs::metadata(shots.join(shot)).unwrap().len();
        assert!(size > 10_000, "{shot} is {size} bytes");
    }
}
