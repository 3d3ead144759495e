//! Calls held for a human: a pending queue, decided from the CLI or the admin endpoint; a timeout
//! denies.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

/// What an operator sees of a held call.
#[derive(Debug, Clone, Serialize)]
pub struct PendingCall {
    /// Approval id (the id of the `needs_approval` decision record).
    pub id: String,
    /// Calling agent.
    pub agent: String,
    /// Session.
    pub session: Option<String>,
    /// `<server>/<tool>`.
    pub tool: String,
    /// The arguments.
    pub arguments: Value,
    /// Why approval is needed.
    pub reason: String,
    /// Rule ids.
    pub rules: Vec<String>,
    /// When it was held, RFC 3339.
    pub held_at: String,
}

/// An operator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Granted or refused.
    pub granted: bool,
    /// Who answered.
    pub approver: String,
}

/// The pending queue.
#[derive(Debug, Default)]
pub struct ApprovalQueue {
    held: Mutex<BTreeMap<String, (PendingCall, oneshot::Sender<Answer>)>>,
}

impl ApprovalQueue {
    /// Holds `call`; the receiver gets the answer.
    pub fn hold(&self, call: PendingCall) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut held) = self.held.lock() {
            held.insert(call.id.clone(), (call, tx));
        }
        rx
    }

    /// Drops a held call (answered by timeout or its agent went away); false when it was no
    /// longer held (an operator's answer took it first, and is on its way to the receiver).
    pub fn forget(&self, id: &str) -> bool {
        self.held
            .lock()
            .map(|mut held| held.remove(id).is_some())
            .unwrap_or(false)
    }

    /// The held calls.
    pub fn list(&self) -> Vec<PendingCall> {
        self.held
            .lock()
            .map(|h| h.values().map(|(c, _)| c.clone()).collect())
            .unwrap_or_default()
    }

    /// Answers a held call; false if no such call is waiting.
    pub fn answer(&self, id: &str, answer: Answer) -> bool {
        let entry = self.held.lock().ok().and_then(|mut h| h.remove(id));
        match entry {
            Some((_, tx)) => tx.send(answer).is_ok(),
            None => false,
        }
    }
}

/// The source of time for the gateway (injected so tests are deterministic).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str) -> PendingCall {
        PendingCall {
            id: id.into(),
            agent: "spiffe://x/a".into(),
            session: None,
            tool: "s/t".into(),
            arguments: Value::Null,
            reason: "r".into(),
            rules: vec![],
            held_at: String::new(),
        }
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_957_200_123)),
            "2026-11-29T13:00:00.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn answers_reach_the_holder_once() {
        let q = ApprovalQueue::default();
        let mut rx = q.hold(pending("a1"));
        assert_eq!(q.list().len(), 1);
        assert!(q.answer(
            "a1",
            Answer {
                granted: true,
                approver: "alice".into()
            }
        ));
        assert!(!q.answer(
            "a1",
            Answer {
                granted: false,
                approver: "mallory".into()
            }
        ));
        assert_eq!(rx.try_recv().unwrap().approver, "alice");
        assert!(q.list().is_empty());
    }

    /// A timeout and an operator's answer race for a held call: exactly one of them takes it
    /// off the queue, and `forget` tells the timeout whether the answer won (then the answer,
    /// which the operator was told went through, is what the call gets).
    #[test]
    fn the_timeout_learns_whether_an_answer_took_the_call_first() {
        let q = ApprovalQueue::default();
        let yes = Answer {
            granted: true,
            approver: "alice".into(),
        };
        // The answer first: the timeout finds nothing to forget, and the answer is waiting.
        let mut rx = q.hold(pending("a1"));
        assert!(q.answer("a1", yes.clone()));
        assert!(!q.forget("a1"));
        assert_eq!(rx.try_recv().unwrap(), yes);
        // The timeout first: the operator is told no call was waiting.
        let _rx = q.hold(pending("a2"));
        assert!(q.forget("a2"));
        assert!(!q.answer("a2", yes));
    }
}
