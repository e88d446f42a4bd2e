//! Where log lines go: appended to a buffer in memory and written to stderr by a thread
//! of its own, every `INTERVAL` or as soon as `BATCH` bytes wait, in one `write(2)`.
//!
//! A channel per line (tracing-appender's writer) wakes the writing thread for nearly
//! every line under load: a futex wake and a context switch per request, which on a
//! gateway sharing its core cost more than formatting the line. Here a request's line
//! costs a lock and a copy. Logging never waits for stderr: when `LIMIT` bytes wait
//! (stderr slower than the requests, or read by nobody), new lines are dropped and
//! counted, and a warning says how many once stderr takes lines again. (Logging used to
//! write them out itself and wait: with a stderr nobody read, every request, `/healthz`
//! and the shutdown waited for good.) Dropping the `FlushGuard` writes what waits, so a
//! clean shutdown loses no line, waiting at most `FLUSH_WAIT` for a stderr that takes
//! nothing; a `SIGKILL` loses at most the last `INTERVAL` of them.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in memory.
const INTERVAL: Duration = Duration::from_millis(50);
/// Waiting bytes that wake the writing thread before `INTERVAL` is up.
const BATCH: usize = 64 * 1024;
/// Waiting bytes beyond which new lines are dropped (and counted).
const LIMIT: usize = 4 * 1024 * 1024;
/// How long a shutdown waits for the last lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The writer to give `tracing_subscriber::fmt().with_writer`.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Writes out what waits when dropped, and stops the writing thread.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    waiting: Mutex<Waiting>,
    wake: Condvar,
    /// Held while writing to `out`, taken before `waiting`: batches leave in the order
    /// they were filled, whoever writes them.
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    stop: bool,
    /// Lines dropped since the last warning about them.
    dropped: u64,
}

impl BatchedWriter {
    /// Starts the writing thread for `out` (stderr in the binary, anything in tests).
    pub fn new(out: impl Write + Send + 'static) -> (BatchedWriter, FlushGuard) {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting::default()),
            wake: Condvar::new(),
            out: Mutex::new(Box::new(out)),
        });
        let thread = std::thread::Builder::new()
            .name("hookgate-log".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })
            .expect("the log thread starts");
        (
            BatchedWriter {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                thread: Some(thread),
            },
        )
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let stop = {
                let waiting = lock(&self.waiting);
                let (waiting, _) = self
                    .wake
                    .wait_timeout_while(waiting, INTERVAL, |w| w.bytes.len() < BATCH && !w.stop)
                    .unwrap_or_else(PoisonError::into_inner);
                waiting.stop
            };
            self.write_out();
            let dropped = std::mem::take(&mut lock(&self.waiting).dropped);
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "log lines dropped: stderr did not take them while 4 MiB of lines waited"
                );
            }
            if stop {
                return;
            }
        }
    }

    /// Writes everything waiting, in one write; errors are ignored (there is nowhere
    /// left to report them).
    fn write_out(&self) {
        let mut out = lock(&self.out);
        let bytes = std::mem::take(&mut lock(&self.waiting).bytes);
        if !bytes.is_empty() {
            let _ = out.write_all(&bytes);
            let _ = out.flush();
        }
    }
}

impl Write for BatchedWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let waiting_len = {
            let mut waiting = lock(&self.shared.waiting);
            if waiting.bytes.len() >= LIMIT {
                waiting.dropped += 1;
                return Ok(line.len());
            }
            waiting.bytes.extend_from_slice(line);
            waiting.bytes.len()
        };
        if waiting_len >= BATCH && waiting_len - line.len() < BATCH {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = BatchedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        lock(&self.shared.waiting).stop = true;
        self.shared.wake.notify_one();
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A stderr that takes nothing holds the thread in its write: the process exits
        // without those lines rather than never.
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        while !thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.join();
        // Lines logged while the thread stopped.
        self.shared.write_out();
    }
}

/// A panic elsewhere while holding the lock leaves whole lines behind: keep logging.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read while the writer still holds it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_order_once_the_guard_is_dropped() {
        let out = Captured::default();
        let (writer, guard) = BatchedWriter::new(out.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        writer
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let (t, i) = line
                .strip_prefix("thread ")
                .and_then(|rest| rest.split_once(" line "))
                .unwrap_or_else(|| panic!("a torn line: {line:?}"));
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines in order");
            next[t] += 1;
        }
        assert_eq!(next, [20_000; 4], "no line lost");
    }

    /// An output that takes nothing, ever (a pipe nobody reads).
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Err(io::Error::other("never"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// With a stderr nobody reads, logging kept waiting for it once 4 MiB waited: every
    /// request, `/healthz` and the shutdown stopped for good. Lines are dropped instead.
    #[test]
    fn a_stderr_that_takes_nothing_never_holds_up_logging_nor_the_shutdown() {
        let (_never, receiver) = std::sync::mpsc::channel();
        let (mut writer, guard) = BatchedWriter::new(Stalled(receiver));
        let line = [b'x'; 1000];
        let started = std::time::Instant::now();
        for _ in 0..3 * LIMIT / line.len() {
            writer.write_all(&line).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(lock(&writer.shared.waiting).dropped > 0);
        let stopping = std::time::Instant::now();
        drop(guard);
        assert!(stopping.elapsed() < FLUSH_WAIT + Duration::from_secs(1));
    }

    #[test]
    fn a_line_is_written_within_the_interval_without_more_lines_or_a_flush() {
        let out = Captured::default();
        let (mut writer, _guard) = BatchedWriter::new(out.clone());
        writer.write_all(b"one line\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"one line\n");
    }
}
