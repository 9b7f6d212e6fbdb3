//! The two things the runtime asks of the operating system through libc: the local time
//! formatted by the C library's `strftime` (what Python's `datetime.now().strftime`
//! calls, for chat templates' `strftime_now`), and Ctrl-C caught as a flag so a chat
//! stops a reply instead of ending.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

/// The current local time formatted by the C library's `strftime` (as Python's
/// `datetime.now().strftime(format)` does for the directives C knows).
pub fn strftime_now(format: &str) -> Result<String, String> {
    if format.is_empty() {
        return Ok(String::new());
    }
    let c_format = CString::new(format).map_err(|_| "strftime_now: the format holds a NUL character".to_string())?;
    // A one-character prefix tells an empty result (`%p` in some locales) from a buffer
    // that was too small: strftime returns 0 in both cases.
    let mut prefixed = Vec::with_capacity(format.len() + 2);
    prefixed.push(b'x');
    prefixed.extend_from_slice(c_format.as_bytes_with_nul());
    let mut size = 256usize;
    while size <= 1 << 20 {
        let mut buffer = vec![0u8; size];
        // SAFETY: `time` and `localtime_r` write into the locals passed to them;
        // `strftime` writes at most `size` bytes into `buffer`, which holds `size`, and
        // reads the NUL-terminated `prefixed` and the `tm` filled just before.
        let written = unsafe {
            let now = libc::time(std::ptr::null_mut());
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&now, &mut tm).is_null() {
                return Err("strftime_now: the local time is unavailable".into());
            }
            libc::strftime(buffer.as_mut_ptr().cast(), size, prefixed.as_ptr().cast(), &tm)
        };
        if written > 0 {
            buffer.truncate(written);
            return String::from_utf8(buffer.split_off(1))
                .map_err(|_| "strftime_now: the C library's result is not UTF-8".to_string());
        }
        size *= 4;
    }
    Err("strftime_now: the formatted time is longer than 1 MiB".into())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static CATCHING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    if CATCHING.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    } else {
        // Not inside a reply: Ctrl-C ends the program, as it would have without the
        // handler (exit status 128 + SIGINT). Only async-signal-safe calls here.
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
        unsafe {
            libc::write(2, b"\n".as_ptr().cast(), 1);
            libc::_exit(130);
        }
    }
}

/// Ctrl-C (SIGINT) as a flag. While [`Interrupts::catch`] is on, Ctrl-C sets the flag
/// (see [`Interrupts::flag`]) and the program goes on; otherwise it ends the program.
pub struct Interrupts;

impl Interrupts {
    /// Installs the handler (once per process is enough; again is harmless).
    pub fn install() -> Result<Interrupts, String> {
        // SAFETY: the sigaction struct is zeroed then filled; the handler only touches
        // atomics and async-signal-safe calls.
        let ok = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut()) == 0
        };
        if ok {
            Ok(Interrupts)
        } else {
            Err(format!("cannot catch Ctrl-C: {}", std::io::Error::last_os_error()))
        }
    }

    /// Whether Ctrl-C sets the flag (true) or ends the program (false). Turning it on
    /// clears the flag.
    pub fn catch(&self, on: bool) {
        if on {
            INTERRUPTED.store(false, Ordering::SeqCst);
        }
        CATCHING.store(on, Ordering::SeqCst);
    }

    /// Set by Ctrl-C while catching.
    pub fn flag(&self) -> &'static AtomicBool {
        &INTERRUPTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_now_formats_the_local_time() {
        let year = strftime_now("%Y").unwrap();
        assert_eq!(year.len(), 4, "{year}");
        let y: u32 = year.parse().unwrap();
        assert!((2024..3000).contains(&y), "{y}");
        assert_eq!(strftime_now("%%").unwrap(), "%");
        assert_eq!(strftime_now("no directives").unwrap(), "no directives");
        assert_eq!(strftime_now("").unwrap(), "");
        let day = strftime_now("%d %b %Y").unwrap();
        assert!(day.len() >= 10 && day.ends_with(&year), "{day}");
        assert!(strftime_now("a\0b").unwrap_err().contains("NUL"));
        let long = "%Y".repeat(5000);
        assert_eq!(strftime_now(&long).unwrap(), year.repeat(5000));
    }
}
