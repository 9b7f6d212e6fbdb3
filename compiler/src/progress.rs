//! A one-line progress bar on stderr while a blob is written: tensors done, bytes
//! written and the rate. Drawn only when asked (olmoc asks when stderr is a terminal),
//! at most ten times a second, and erased when the pack ends.

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Progress {
    enabled: bool,
    total_tensors: usize,
    total_bytes: u64,
    tensors: usize,
    bytes: u64,
    started: Instant,
    drawn: Option<Instant>,
}

const WIDTH: usize = 30;
const MIB: f64 = (1 << 20) as f64;

impl Progress {
    pub fn new(enabled: bool, total_tensors: usize, total_bytes: u64) -> Progress {
        Progress {
            enabled,
            total_tensors,
            total_bytes,
            tensors: 0,
            bytes: 0,
            started: Instant::now(),
            drawn: None,
        }
    }

    /// One more tensor of `bytes` bytes is written.
    pub fn advance(&mut self, bytes: u64) {
        self.tensors += 1;
        self.bytes += bytes;
        if !self.enabled {
            return;
        }
        let due = self.drawn.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || self.tensors == self.total_tensors {
            self.draw();
            self.drawn = Some(Instant::now());
        }
    }

    /// The bar's text, e.g. `[=========>    ] 12/21 tensors  120.3/800.0 MiB  250.1 MiB/s`.
    pub fn line(&self) -> String {
        let fraction = if self.total_bytes == 0 {
            1.0
        } else {
            (self.bytes as f64 / self.total_bytes as f64).min(1.0)
        };
        let filled = (fraction * WIDTH as f64) as usize;
        let mut bar = "=".repeat(filled);
        if filled < WIDTH {
            bar.push('>');
            bar.push_str(&" ".repeat(WIDTH - filled - 1));
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 { self.bytes as f64 / MIB / seconds } else { 0.0 };
        format!(
            "[{bar}] {}/{} tensors  {:.1}/{:.1} MiB  {rate:.1} MiB/s",
            self.tensors,
            self.total_tensors,
            self.bytes as f64 / MIB,
            self.total_bytes as f64 / MIB,
        )
    }

    fn draw(&self) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{}", self.line());
        let _ = err.flush();
    }

    /// Erases the bar (the summary line takes its place).
    pub fn finish(&mut self) {
        if self.enabled && self.drawn.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
        self.drawn = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_tensors_and_bytes() {
        let mut p = Progress::new(false, 4, 4 << 20);
        p.advance(1 << 20);
        p.advance(1 << 20);
        let line = p.line();
        assert!(line.starts_with("[===============>"), "{line}");
        assert!(line.contains("] 2/4 tensors  2.0/4.0 MiB  "), "{line}");
        assert!(line.ends_with(" MiB/s"), "{line}");
    }
}
