//! Polling instead of sleeping while a stdio session is busy.
//!
//! A call through `warden mcp` waits three times: for the agent's request, for the log's
//! `fdatasync`, and for the server's answer. Sleeping in `epoll_wait` for the first and the last
//! idles the thread's vCPU, and on a virtual machine an idle vCPU halts: the pipe write that
//! ends the wait then has to wake it through the hypervisor, tens of microseconds on the call's
//! path (see `docs/BENCHMARKS.md`). Guest kernels can poll before halting (`cpuidle-haltpoll`),
//! but many VMs, this project's CI machine among them, turn that off.
//!
//! So the stdio face does it for its own thread: after each event of a session (a line read
//! from the agent, an answer written to it, a request forwarded upstream, an answer received)
//! a task keeps the runtime polling its I/O, without blocking, until the session has been quiet
//! for a window; then the thread sleeps as usual. The window adapts the way KVM's halt polling
//! does: it starts at zero, grows (10 µs, then doubling, up to
//! [`FaceSettings::idle_poll_us`](crate::FaceSettings::idle_poll_us)) each time the thread slept
//! and the next event came within that limit, and halves each time the quiet lasted longer. A
//! busy session with a fast server and a fast agent polls through its calls; an agent that
//! thinks for seconds between calls shrinks the window to nothing within a few calls. What it
//! costs is CPU time: at most the window per event, spent only while events come that fast.
//!
//! Only current-thread runtimes poll (`warden mcp`): there the polling task runs between the
//! session's own tasks on the one thread. A multi-thread runtime serves other sessions
//! meanwhile and never polls.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The first window after polling was off.
const GROW_START: Duration = Duration::from_micros(10);

/// When a session polls, and how long: pure bookkeeping over times the caller measures.
#[derive(Debug)]
struct Window {
    max: Duration,
    window: Duration,
    /// When the last event happened.
    last: Duration,
    /// Whether polling gave up since the last event (the thread sleeps, or is about to).
    asleep: bool,
}

impl Window {
    fn new(max: Duration) -> Self {
        Self {
            max,
            window: Duration::ZERO,
            last: Duration::ZERO,
            asleep: false,
        }
    }

    /// An event at `now`: a quiet period that outlasted polling resizes the window.
    fn event(&mut self, now: Duration) {
        if self.asleep {
            let quiet = now.saturating_sub(self.last);
            self.window = if quiet <= self.max {
                grow(self.window, self.max)
            } else {
                shrink(self.window)
            };
            self.asleep = false;
        }
        self.last = now;
    }

    /// Until when to poll after the last event.
    fn deadline(&self) -> Duration {
        self.last.saturating_add(self.window)
    }

    fn gave_up(&mut self) {
        self.asleep = true;
    }
}

fn grow(window: Duration, max: Duration) -> Duration {
    if window < GROW_START {
        GROW_START.min(max)
    } else {
        window.saturating_mul(2).min(max)
    }
}

fn shrink(window: Duration) -> Duration {
    let half = window / 2;
    if half < GROW_START {
        Duration::ZERO
    } else {
        half
    }
}

/// One stdio session's poller: events are reported with [`IdlePoll::event`]; a task of the
/// face's runtime polls until the window after the last one has passed.
#[derive(Debug)]
pub(crate) struct IdlePoll {
    origin: Instant,
    window: Mutex<Window>,
    woken: Notify,
}

impl IdlePoll {
    /// Starts polling for a session on the current runtime, for at most `max` after each event;
    /// `None` when `max` is zero or the runtime is not a current-thread one. Polling stops when
    /// the returned guard is dropped.
    pub(crate) fn start(max: Duration) -> Option<(Arc<Self>, PollTask)> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if max.is_zero() || runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread
        {
            return None;
        }
        let poll = Arc::new(Self {
            origin: Instant::now(),
            window: Mutex::new(Window::new(max)),
            woken: Notify::new(),
        });
        let task = runtime.spawn(poll.clone().run()).abort_handle();
        Some((poll, PollTask(task)))
    }

    /// Something happened in the session: poll for the next thing for a window from now.
    pub(crate) fn event(&self) {
        let now = self.origin.elapsed();
        if let Ok(mut w) = self.window.lock() {
            w.event(now);
        }
        self.woken.notify_one();
    }

    async fn run(self: Arc<Self>) {
        loop {
            self.woken.notified().await;
            while self.still_polling() {
                // On a current-thread runtime a yielded task runs again only after the runtime
                // has polled its I/O driver without blocking and run what became ready.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Whether the window after the last event is still open; records giving up when not.
    fn still_polling(&self) -> bool {
        let now = self.origin.elapsed();
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        if now < w.deadline() {
            return true;
        }
        w.gave_up();
        false
    }
}

/// Stops a session's polling task when dropped.
#[derive(Debug)]
pub(crate) struct PollTask(tokio::task::AbortHandle);

impl Drop for PollTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Events `gap` apart, each after polling gave up (the worst case for growing).
    fn events(w: &mut Window, from: Duration, gap: Duration, n: u32) -> Duration {
        let mut t = from;
        for _ in 0..n {
            t += gap;
            w.event(t);
            w.gave_up();
        }
        t
    }

    #[test]
    fn starts_off_and_grows_to_the_limit_while_events_come_fast() {
        let mut w = Window::new(200 * US);
        w.event(Duration::ZERO);
        assert_eq!(
            w.deadline(),
            Duration::ZERO,
            "no polling before any evidence"
        );
        w.gave_up();
        let t = events(&mut w, Duration::ZERO, 60 * US, 1);
        assert_eq!(w.window, 10 * US);
        events(&mut w, t, 60 * US, 10);
        assert_eq!(w.window, 200 * US, "capped at the limit");
    }

    #[test]
    fn a_session_that_goes_quiet_stops_polling() {
        let mut w = Window::new(200 * US);
        let t = events(&mut w, Duration::ZERO, 60 * US, 12);
        assert_eq!(w.window, 200 * US);
        let t = events(&mut w, t, Duration::from_secs(2), 5);
        assert_eq!(w.window, Duration::ZERO, "200 → 100 → 50 → 25 → 12.5 → off");
        events(&mut w, t, 60 * US, 1);
        assert_eq!(w.window, 10 * US, "and starts again from the bottom");
    }

    #[test]
    fn events_while_polling_keep_the_window_and_move_the_deadline() {
        let mut w = Window::new(200 * US);
        let t = events(&mut w, Duration::ZERO, 60 * US, 12);
        w.event(t + 60 * US);
        assert_eq!(w.window, 200 * US);
        w.event(t + 110 * US);
        assert_eq!(w.window, 200 * US);
        assert_eq!(w.deadline(), t + 310 * US);
    }

    #[test]
    fn the_window_never_exceeds_a_small_limit() {
        let mut w = Window::new(5 * US);
        events(&mut w, Duration::ZERO, US, 5);
        assert_eq!(w.window, 5 * US);
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn only_current_thread_runtimes_with_a_limit_poll() {
        assert!(current_thread().block_on(async { IdlePoll::start(Duration::ZERO).is_none() }));
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert!(multi.block_on(async { IdlePoll::start(200 * US).is_none() }));
    }

    /// The runtime thread's voluntary context switches so far (each blocking wait is one).
    fn voluntary_switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits on the runtime for a byte another thread writes into a pipe 2 ms later; returns
    /// how often the runtime's thread blocked meanwhile.
    async fn blocked_while_waiting_for_a_pipe() -> u64 {
        use std::io::Write as _;
        use tokio::io::AsyncReadExt as _;
        let (tx, mut rx) = tokio::net::unix::pipe::pipe().unwrap();
        let mut tx = std::fs::File::from(tx.into_blocking_fd().unwrap());
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            tx.write_all(b"x").unwrap();
        });
        let before = voluntary_switches();
        let mut byte = [0u8; 1];
        rx.read_exact(&mut byte).await.unwrap();
        let blocked = voluntary_switches() - before;
        assert_eq!(&byte, b"x");
        writer.join().unwrap();
        blocked
    }

    /// With the window open the thread never blocks: the runtime polls its I/O between the
    /// session's tasks, sees the pipe become readable and runs the reader. Without polling the
    /// same wait blocks. (The window is set directly: how it grows is tested above.)
    #[test]
    fn a_busy_session_waits_without_blocking_its_thread() {
        current_thread().block_on(async {
            let (poll, task) = IdlePoll::start(Duration::from_secs(2)).unwrap();
            poll.window.lock().unwrap().window = Duration::from_secs(2);
            poll.event();
            assert_eq!(blocked_while_waiting_for_a_pipe().await, 0);
            // Once the window has passed, polling gives up.
            poll.window.lock().unwrap().window = Duration::from_millis(1);
            poll.event();
            tokio::time::sleep(Duration::from_millis(20)).await;
            {
                let w = poll.window.lock().unwrap();
                assert!(w.asleep, "{w:?} at {:?}", poll.origin.elapsed());
            }
            poll.window.lock().unwrap().window = Duration::from_secs(2);
            drop(task);
            poll.event();
            assert!(blocked_while_waiting_for_a_pipe().await > 0);
        });
    }
}
