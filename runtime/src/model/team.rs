//! The threads a forward pass runs on: the calling thread and `threads - 1` helpers that
//! wait for work by spinning, so handing a parallel section to them costs a cache-line
//! transfer rather than a futex wake-up.
//!
//! A decode step of the 1B model is about 65 parallel sections (one per matrix) of
//! about a millisecond each, between short serial steps. Through rayon's pool, whose
//! idle workers sleep, each section cost about 70 us of hand-off, ramp-up and
//! wake-up of the calling thread: 4-5 ms a token, 6% of the f16 step. A [`Team`]
//! section costs about a microsecond.
//!
//! [`Team::run`] is fork-join over numbered tasks that the threads claim one at a time
//! (a slow or descheduled thread is covered by the others). Idle helpers spin, then
//! yield, then park after [`PARK_AFTER`] without work; a parked helper is woken by the
//! next section but is not waited for: the calling thread runs whatever no helper has
//! claimed.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle helper waits for the next section before it parks. Longer than the
/// gap between two decode steps (top-k, printing: tens of microseconds), so helpers stay
/// awake through generation; short enough that an idle team gives its cores back.
pub const PARK_AFTER: Duration = Duration::from_millis(2);

/// Spins before an idle or waiting thread starts yielding its core (about 0.43 ms on
/// this AMD EPYC, whose `pause` takes ~80 cycles), so that a machine with more runnable
/// threads than cores still makes progress.
const SPINS_BEFORE_YIELD: u32 = 1 << 14;

/// The most tasks one section takes (`claim`'s task fields are 16 bits).
const MAX_TASKS: usize = 0xFFFF;

/// One section's work, on the stack of [`Team::run`]'s caller.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
}

/// What the calling thread and the helpers share.
#[repr(align(128))]
struct Shared {
    /// `epoch << 32 | next << 16 | tasks`: which section, the next task to hand out and
    /// how many there are, in one word, so a claim (a compare-exchange that checks the
    /// epoch) can never take a task of a section other than the one it read the job of.
    claim: AtomicU64,
    /// The section's [`Job`]; only dereferenced by a thread whose claim succeeded, which
    /// proves the section, and so the job, is still live.
    job: AtomicPtr<Job<'static>>,
    /// Padding: `done` is written by every finishing task, `claim` by every claim.
    _pad: [u8; 112],
    /// Tasks of the current section that have finished.
    done: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

const fn pack(epoch: u32, next: usize, tasks: usize) -> u64 {
    (epoch as u64) << 32 | (next as u64) << 16 | tasks as u64
}

impl Shared {
    /// Claims a task of the current section, if one is left: its index and the job.
    fn claim(&self) -> Option<(usize, *const Job<'static>)> {
        let mut word = self.claim.load(Ordering::Acquire);
        loop {
            let (next, tasks) = ((word >> 16) as usize & MAX_TASKS, word as usize & MAX_TASKS);
            if next >= tasks {
                return None;
            }
            // Read before the claim: the job of the section `word` names. A successful
            // claim shows that section was still running when the job was read.
            let job = self.job.load(Ordering::Acquire);
            match self.claim.compare_exchange_weak(word, word + (1 << 16), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some((next, job)),
                Err(now) => word = now,
            }
        }
    }

    /// Runs claimed tasks until none is left; a panicking task is recorded (and counted
    /// as done, so the section still ends) for [`Team::run`] to re-raise.
    fn work(&self) -> bool {
        let mut any = false;
        while let Some((t, job)) = self.claim() {
            // SAFETY: the claim succeeded, so the section this job belongs to had a task
            // left, and `Team::run` does not return (the job stays alive on its stack)
            // until every claimed task has counted itself in `done`.
            let task = unsafe { (*job).task };
            if catch_unwind(AssertUnwindSafe(|| task(t))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
            any = true;
        }
        any
    }
}

/// Waits the way every loop here does: spin, then yield the core.
struct Backoff(u32);

impl Backoff {
    fn snooze(&mut self) {
        if self.0 < SPINS_BEFORE_YIELD {
            self.0 += 1;
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

fn helper(shared: &Shared) {
    let mut backoff = Backoff(0);
    let mut idle_since: Option<Instant> = None;
    loop {
        if shared.work() {
            backoff = Backoff(0);
            idle_since = None;
            continue;
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        backoff.snooze();
        if backoff.0 >= SPINS_BEFORE_YIELD {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= PARK_AFTER {
                // `Team::run` unparks every helper after publishing a section, so a
                // section published between the check above and this park leaves the
                // token set and `park` returns at once.
                thread::park();
                backoff = Backoff(0);
                idle_since = None;
            }
        }
    }
}

/// The calling thread plus `threads - 1` helper threads, for [`Team::run`].
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    epoch: AtomicU32,
    /// Set while a section runs: a section started meanwhile (from inside one, or from
    /// another thread) runs in order on its calling thread instead.
    busy: AtomicBool,
}

impl Team {
    /// A team of `threads` (at least 1: the calling thread alone). Helpers that cannot be
    /// spawned are done without.
    pub fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            _pad: [0; 112],
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let helpers = (1..threads.max(1))
            .map_while(|i| {
                let shared = Arc::clone(&shared);
                thread::Builder::new().name(format!("olmort-team-{i}")).spawn(move || helper(&shared)).ok()
            })
            .collect();
        Team { shared, helpers, epoch: AtomicU32::new(0), busy: AtomicBool::new(false) }
    }

    /// Threads that run sections: the caller and the helpers.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `task(0 .. tasks)` on the team and returns when every task has finished; a
    /// panic in any task is raised here once all of them are done.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 || self.helpers.is_empty() || tasks > MAX_TASKS || self.busy.swap(true, Ordering::Acquire) {
            (0..tasks).for_each(task);
            return;
        }
        let job = Job { task };
        let shared = &*self.shared;
        let epoch = self.epoch.load(Ordering::Relaxed).wrapping_add(1);
        self.epoch.store(epoch, Ordering::Relaxed);
        shared.done.store(0, Ordering::Relaxed);
        shared.job.store((&job as *const Job<'_>).cast_mut().cast(), Ordering::Relaxed);
        // Release: a helper that reads this word also sees the job and `done` reset.
        shared.claim.store(pack(epoch, 0, tasks), Ordering::Release);
        for h in &self.helpers {
            h.thread().unpark();
        }
        // `work` catches panics, so this thread always gets to the wait below, which
        // keeps `job` alive until every claimed task has finished.
        shared.work();
        let mut backoff = Backoff(0);
        while shared.done.load(Ordering::Acquire) < tasks {
            backoff.snooze();
        }
        self.busy.store(false, Ordering::Release);
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a task of a parallel section panicked");
        }
    }

    /// Runs `f` with this team as the calling thread's [`current`] one.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Team);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self)));
        f()
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

thread_local! {
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with the team installed on the calling thread (by [`Team::install`]), or with
/// `None` outside one.
pub fn with_current<R>(f: impl FnOnce(Option<&Team>) -> R) -> R {
    let team = CURRENT.with(|c| c.get());
    // SAFETY: `install` sets the pointer from a live `&Team` for the duration of its
    // closure and restores the previous value when it returns or unwinds, so a non-null
    // pointer here is a team that outlives this call.
    f(unsafe { team.as_ref() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_task_runs_once() {
        for threads in 1..=3 {
            let team = Team::new(threads);
            for tasks in [0, 1, 2, 7, 64] {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..50 {
                    team.run(tasks, &|t| {
                        counts[t].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 50), "{threads} threads, {tasks} tasks");
            }
        }
    }

    #[test]
    fn sections_after_parking_and_nested_sections_complete() {
        let team = Team::new(2);
        let sum = AtomicUsize::new(0);
        team.run(4, &|t| {
            sum.fetch_add(t, Ordering::Relaxed);
        });
        thread::sleep(PARK_AFTER * 3);
        // A nested section runs in order on the thread that started it.
        team.run(3, &|t| {
            team.run(2, &|u| {
                sum.fetch_add(10 * (t + u), Ordering::Relaxed);
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6 + 10 * (1 + 3 + 5));
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_section() {
        let team = Team::new(2);
        let ran = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            team.run(8, &|t| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert!(t != 5, "task 5 fails");
            })
        }));
        assert!(result.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 8);
        // The team still works.
        let after = AtomicUsize::new(0);
        team.run(4, &|_| {
            after.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(after.load(Ordering::Relaxed), 4);
    }
}
