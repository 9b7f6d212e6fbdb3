//! An idle team gives its cores back: between forward passes (a REPL waiting for a
//! line, a server between requests) its helper threads park instead of spinning.
//! Its own test binary, so that no other test's threads count in the process's CPU time.

#![cfg(target_os = "linux")]

use std::thread::sleep;
use std::time::Duration;

use olmort::model::team::{Team, PARK_AFTER};

/// User + system CPU seconds of this process so far (`/proc/self/stat`, in clock ticks
/// of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn an_idle_team_uses_no_cpu() {
    let team = Team::new(4);
    let sum = std::sync::atomic::AtomicUsize::new(0);
    team.run(64, &|t| {
        sum.fetch_add(t, std::sync::atomic::Ordering::Relaxed);
    });
    // The helpers spin for PARK_AFTER (plus under a millisecond of backoff), then park.
    sleep(PARK_AFTER * 10);
    let before = cpu_seconds();
    sleep(Duration::from_secs(1));
    let used = cpu_seconds() - before;
    // Three spinning helpers would use 3 s; parked ones use nothing (tick resolution).
    assert!(used < 0.1, "an idle team used {used} s of CPU in 1 s");
    // And it still works afterwards.
    team.run(8, &|t| {
        sum.fetch_add(t, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(sum.load(std::sync::atomic::Ordering::Relaxed), 63 * 32 + 28);
}
