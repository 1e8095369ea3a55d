//! Where payd's log lines go: appended to a buffer in memory and written to stdout
//! by one thread, many lines per `write`, at most [`FLUSH_EVERY`] after they were
//! logged.
//!
//! Every created order logs a line; written straight to stdout, that was a `write`
//! system call on the request's worker thread, about 3 % of the CPU a create costs,
//! and a stdout that stops reading (a stuck log collector) stalled the request path.
//! Here the worker appends under a mutex and goes on. The flusher thread sleeps
//! while nothing is buffered, is woken by the first line after a flush, waits
//! [`FLUSH_EVERY`] for more, and writes them all at once.
//!
//! If the output cannot keep up and [`MAX_BUFFERED`] bytes are waiting, further
//! lines are dropped rather than blocking payments; the flusher then writes how many
//! were dropped, and `payd_log_lines_dropped_total` counts them. Logs are not the
//! record of what happened to an order — storage is (its timeline and journal).
//!
//! A SIGKILL loses the lines of the last [`FLUSH_EVERY`]; [`LogGuard`] flushes on a
//! normal exit.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the flusher gathers lines after the first one.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// Bytes buffered at most; lines beyond are dropped and counted.
pub const MAX_BUFFERED: usize = 16 << 20;

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: u64,
    /// The flusher is writing bytes it took out of the buffer.
    writing: bool,
    closed: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Signalled when a line arrives in an empty buffer, and on close.
    wake: Condvar,
    /// Signalled after each write to the output (for [`LogBuffer::flush`]).
    written: Condvar,
    max: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A panic while holding the lock leaves only bytes behind: keep logging.
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The [`MakeWriter`] of payd's log lines; cheap to clone.
#[derive(Clone)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

/// Flushes what is buffered and stops the flusher when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

/// A buffer and its flusher thread writing to `out`.
pub fn buffered<W: Write + Send + 'static>(out: W) -> std::io::Result<(LogBuffer, LogGuard)> {
    with_limit(out, MAX_BUFFERED)
}

fn with_limit<W: Write + Send + 'static>(
    out: W,
    max: usize,
) -> std::io::Result<(LogBuffer, LogGuard)> {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Buffer::default()),
        wake: Condvar::new(),
        written: Condvar::new(),
        max,
    });
    let flusher = std::thread::Builder::new().name("payd-log".into()).spawn({
        let shared = shared.clone();
        move || flush_loop(&shared, out)
    })?;
    Ok((
        LogBuffer {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            flusher: Some(flusher),
        },
    ))
}

fn flush_loop<W: Write>(shared: &Shared, mut out: W) {
    let mut spare = Vec::new();
    loop {
        let mut buf = shared.lock();
        while buf.bytes.is_empty() && buf.dropped == 0 && !buf.closed {
            buf = shared.wake.wait(buf).unwrap_or_else(|e| e.into_inner());
        }
        if !buf.closed {
            // Gather the lines of the next few milliseconds into the same write.
            drop(buf);
            std::thread::sleep(FLUSH_EVERY);
            buf = shared.lock();
        }
        std::mem::swap(&mut buf.bytes, &mut spare);
        let dropped = std::mem::take(&mut buf.dropped);
        let closed = buf.closed;
        buf.writing = true;
        drop(buf);
        // Errors (a closed stdout) are ignored, as the default writer does.
        let _ = out.write_all(&spare);
        if dropped > 0 {
            ::metrics::counter!(crate::metrics::LOG_LINES_DROPPED).increment(dropped);
            let _ = writeln!(
                out,
                "payd: {dropped} log lines dropped: the log output could not keep up"
            );
        }
        let _ = out.flush();
        spare.clear();
        if spare.capacity() > 1 << 20 {
            spare = Vec::new();
        }
        let mut buf = shared.lock();
        buf.writing = false;
        shared.written.notify_all();
        if closed && buf.bytes.is_empty() {
            return;
        }
    }
}

impl LogBuffer {
    /// Waits until everything logged so far has been written.
    pub fn flush(&self) {
        let mut buf = self.shared.lock();
        while (!buf.bytes.is_empty() || buf.writing) && !buf.closed {
            self.shared.wake.notify_one();
            buf = self
                .shared
                .written
                .wait_timeout(buf, FLUSH_EVERY * 10)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn append(&self, line: &[u8]) {
        let mut buf = self.shared.lock();
        if buf.bytes.len() + line.len() > self.shared.max {
            buf.dropped += 1;
            return;
        }
        let was_empty = buf.bytes.is_empty();
        buf.bytes.extend_from_slice(line);
        drop(buf);
        if was_empty {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { to: self }
    }
}

/// One event's writer: the formatter hands it the whole line in one `write_all`.
pub struct LineWriter<'a> {
    to: &'a LogBuffer,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.to.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that keeps what was written, and each `write` call's size.
    #[derive(Clone, Default)]
    struct Sink {
        data: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<Mutex<()>>,
        entered: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.entered
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let _open = self.gate.lock().unwrap();
            self.data.lock().unwrap().extend_from_slice(b);
            self.writes.lock().unwrap().push(b.len());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(s: &Sink) -> String {
        String::from_utf8(s.data.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_arrive_in_order_and_many_per_write() {
        let sink = Sink::default();
        let (buf, guard) = buffered(sink.clone()).unwrap();
        let mut expected = String::new();
        for i in 0..1000 {
            let line = format!("line {i}\n");
            buf.make_writer().write_all(line.as_bytes()).unwrap();
            expected.push_str(&line);
        }
        buf.flush();
        assert_eq!(text(&sink), expected);
        let writes = sink.writes.lock().unwrap().len();
        assert!(writes < 100, "{writes} writes for 1000 lines");
        drop(guard);
    }

    #[test]
    fn a_line_is_written_within_moments_and_the_guard_flushes_the_rest() {
        let sink = Sink::default();
        let (buf, guard) = buffered(sink.clone()).unwrap();
        buf.make_writer().write_all(b"first\n").unwrap();
        let t0 = std::time::Instant::now();
        while text(&sink).is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(text(&sink), "first\n");
        buf.make_writer().write_all(b"last\n").unwrap();
        drop(guard);
        assert_eq!(text(&sink), "first\nlast\n");
    }

    #[test]
    fn a_stuck_output_drops_lines_and_says_how_many() {
        let sink = Sink::default();
        let stuck = sink.gate.lock().unwrap();
        let (buf, guard) = with_limit(sink.clone(), 20).unwrap();
        // The first line is taken by the flusher, which then blocks on the output.
        buf.make_writer().write_all(b"0123456789\n").unwrap();
        let t0 = std::time::Instant::now();
        while !sink.entered.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(t0.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..5 {
            buf.make_writer().write_all(b"abcdefghi\n").unwrap();
        }
        drop(stuck);
        drop(guard);
        assert_eq!(
            text(&sink),
            "0123456789\nabcdefghi\nabcdefghi\n\
             payd: 3 log lines dropped: the log output could not keep up\n"
        );
    }
}
