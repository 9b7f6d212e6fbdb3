//! An idle server uses no CPU: between requests the scheduler blocks on its queue, the
//! connection threads on their sockets, and the team's helpers park. Its own test binary,
//! so that no other test's threads count in the process's CPU time.

#![cfg(target_os = "linux")]

mod common;

use std::thread::sleep;
use std::time::Duration;

use olmort::model::team::PARK_AFTER;

/// User + system CPU seconds of this process so far (`/proc/self/stat`, in clock ticks
/// of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn an_idle_server_uses_no_cpu() {
    common::with_server("tiny", common::options(4, 128, 16, 8), |addr, _| {
        // Work first, so every thread has started and run.
        let a = common::post(addr, "/v1/completions", r#"{"prompt": [1, 2, 3], "max_tokens": 8, "temperature": 0}"#);
        assert_eq!(a.status, 200, "{}", a.body);
        sleep(PARK_AFTER * 10 + Duration::from_millis(600));
        let before = cpu_seconds();
        sleep(Duration::from_secs(2));
        let used = cpu_seconds() - before;
        // One spinning thread would use 2 s.
        assert!(used < 0.1, "an idle server used {used} s of CPU in 2 s");
        // And it still answers.
        assert_eq!(common::get(addr, "/health").status, 200);
    });
}
