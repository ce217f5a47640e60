//! Log output that keeps requests off the write(2) path.
//!
//! Formatted lines are appended to a shared in-memory buffer (one uncontended
//! lock per line, no syscall, no thread wake-up); a background thread writes
//! the buffer out every [`FLUSH_EVERY`], and a line that fills the buffer past
//! [`FLUSH_AT`] is written at once by whoever appended it. Dropping the
//! [`FlushGuard`] writes what is left. A process killed with SIGKILL may lose
//! the last [`FLUSH_EVERY`] of log lines; the audit ledger, not the log, is
//! the record of requests.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
pub const FLUSH_AT: usize = 64 * 1024;

struct Inner {
    buf: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn flush(&self) {
        let pending = std::mem::take(&mut *lock(&self.buf));
        if !pending.is_empty() {
            let mut out = lock(&self.out);
            // Nowhere to report a failing log sink; drop the lines.
            let _ = out.write_all(&pending);
            let _ = out.flush();
        }
    }
}

/// The `MakeWriter` handed to `tracing_subscriber`.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Inner>,
}

/// Stops the flushing thread and writes what is buffered, when dropped.
pub struct FlushGuard {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl LogSink {
    /// A sink writing to `out`, with its flushing thread.
    pub fn new(out: Box<dyn Write + Send>) -> (Self, FlushGuard) {
        let inner = Arc::new(Inner {
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            out: Mutex::new(out),
            stop: AtomicBool::new(false),
        });
        let flusher = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("palisade-log".into())
            .spawn(move || {
                while !flusher.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    flusher.flush();
                }
            })
            .ok();
        (
            Self {
                inner: Arc::clone(&inner),
            },
            FlushGuard { inner, thread },
        )
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        self.inner.flush();
    }
}

pub struct LineWriter<'a> {
    inner: &'a Inner,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = lock(&self.inner.buf);
            buf.extend_from_slice(bytes);
            buf.len() >= FLUSH_AT
        };
        if full {
            self.inner.flush();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl palisade_server::access_log::AccessSink for LogSink {
    fn write_line(&self, line: &[u8]) {
        let _ = self.make_writer().write_all(line);
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { inner: &self.inner }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_the_guard_flushes_the_rest() {
        let out = Shared::default();
        let (sink, guard) = LogSink::new(Box::new(out.clone()));
        let mut expected = Vec::new();
        for i in 0..5000 {
            let line = format!("line {i} {}\n", "x".repeat(i % 50));
            sink.make_writer().write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        drop(guard);
        assert_eq!(*lock(&out.0), expected);
    }

    #[test]
    fn the_thread_flushes_without_the_guard() {
        let out = Shared::default();
        let (sink, _guard) = LogSink::new(Box::new(out.clone()));
        sink.make_writer().write_all(b"hello\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&out.0).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*lock(&out.0), b"hello\n");
    }
}
