//! The real [`Authority`]: the Warden kernel decides, a [`RecordSink`] (the log) makes every
//! record durable before the verdict is returned.
//!
//! Tools learned from an upstream's `tools/list` are added to the kernel on first use (and when
//! their pinned definition changes), so the allowlist's argument rules apply to them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use warden_kernel::{
    Decision, Integrity as KIntegrity, Kernel, Label as KLabel, Labeled, Source, Timestamp, ToolId,
    ToolSpec,
};

use crate::approval::Clock;
use crate::authority::{Approval, Authority, AuthorityError, CallRequest, PendingVerdict, Verdict};
use crate::labels::{Integrity, Label};

/// The acknowledgement of a submitted entry: resolves once the entry is durable (or refused).
pub type RecordAck = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Where records go: the log. `append` returns only once the entry is durable.
pub trait RecordSink: Send + Sync {
    /// Appends one entry (the JCS bytes of a record) durably.
    fn append(&self, entry: &[u8]) -> Result<(), String>;

    /// Queues one entry and returns its acknowledgement, to be awaited without blocking a
    /// thread. The default appends at once (blocking) and returns a ready acknowledgement.
    fn submit(&self, entry: Vec<u8>) -> RecordAck {
        let result = self.append(&entry);
        Box::pin(std::future::ready(result))
    }
}

impl RecordSink for warden_log::LogWriter {
    fn append(&self, entry: &[u8]) -> Result<(), String> {
        warden_log::LogWriter::append(self, entry.to_vec())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn submit(&self, entry: Vec<u8>) -> RecordAck {
        // When the log is idle this thread writes and `fdatasync`s the record itself and the
        // ticket is resolved on return (no hand-off to the log's writer thread and back); under
        // load the record rides the writer thread's next group commit and the ticket is woken
        // by it.
        match warden_log::LogWriter::commit_or_queue(self, entry) {
            Ok(ticket) => {
                Box::pin(async move { ticket.await.map(|_| ()).map_err(|e| e.to_string()) })
            }
            Err(e) => Box::pin(std::future::ready(Err(e.to_string()))),
        }
    }
}

/// Restores the kernel's budgets, rate limits and settled approvals from the decision records
/// in `log` (after a restart). Returns how many records were replayed.
pub fn rebuild_from_log(kernel: &Kernel, log: &warden_log::Log) -> Result<usize, String> {
    let entries = log.records(0).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for (index, bytes) in entries {
        match warden_kernel::DecisionRecord::from_log_entry(&bytes) {
            Ok(Some(r)) => records.push(r),
            Ok(None) => {}
            Err(e) => return Err(format!("log entry {index}: {e}")),
        }
    }
    kernel.rebuild_from(&records).map_err(|e| e.to_string())
}

/// The kernel and the log behind the gateway's seam.
pub struct KernelAuthority<R> {
    kernel: RwLock<Kernel>,
    sink: Arc<dyn RecordSink>,
    clock: Arc<dyn Clock>,
    rng: Mutex<R>,
    held: Arc<Mutex<HashMap<String, warden_kernel::PendingCall>>>,
}

impl<R> std::fmt::Debug for KernelAuthority<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelAuthority").finish_non_exhaustive()
    }
}

impl<R: rand_core::CryptoRng + Send> KernelAuthority<R> {
    /// Decides with `kernel`, logs to `sink`, reads time from `clock`, draws ids from `rng`.
    pub fn new(kernel: Kernel, sink: Arc<dyn RecordSink>, clock: Arc<dyn Clock>, rng: R) -> Self {
        Self {
            kernel: RwLock::new(kernel),
            sink,
            clock,
            rng: Mutex::new(rng),
            held: Arc::default(),
        }
    }

    /// The current kernel (with the tools learned so far).
    pub fn kernel(&self) -> Option<Kernel> {
        self.kernel.read().ok().map(|k| k.clone())
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(self.clock.now())
    }

    /// Makes sure the kernel knows `call`'s tool with exactly the pinned definition.
    fn learn(&self, call: &CallRequest) -> Result<(), AuthorityError> {
        let Ok(id) = ToolId::new(&call.server, &call.tool) else {
            return Ok(());
        };
        let known = self
            .kernel
            .read()
            .map_err(|_| AuthorityError("kernel lock poisoned".into()))?
            .tool(&id)
            .map(|t| t.definition_hash().to_owned());
        if known.as_deref() == Some(call.definition_hash.as_str()) {
            return Ok(());
        }
        let spec = ToolSpec::from_mcp_definition(&call.server, &call.definition);
        let mut kernel = self
            .kernel
            .write()
            .map_err(|_| AuthorityError("kernel lock poisoned".into()))?;
        let next = match spec {
            Ok(spec) => kernel.with_tools(vec![spec]),
            // A definition the kernel cannot type-check stays unknown, and so does the tool,
            // even when an earlier definition of it was learned: the kernel then denies calls
            // to it (`unknown-tool`), with a record, never judging them by the old schema.
            Err(_) => kernel.without_tool(&id),
        }
        .map_err(|e| AuthorityError(format!("cannot learn `{id}`: {e}")))?;
        *kernel = next;
        Ok(())
    }

    /// Records the denial of a call the gateway refused before policy (durable first).
    fn refuse(
        &self,
        call: &CallRequest,
        refusal: &crate::Refusal,
    ) -> Result<Verdict, AuthorityError> {
        let mut bytes = [0u8; 16];
        self.rng
            .lock()
            .map_err(|_| AuthorityError("rng lock poisoned".into()))?
            .fill_bytes(&mut bytes);
        let record = crate::delegation::refusal_record(
            call,
            refusal,
            hex::encode(bytes),
            self.now().to_string(),
        );
        self.append(&record)?;
        Ok(Verdict::Deny {
            record: record.id,
            rules: record.rules,
            reason: refusal.reason.clone(),
        })
    }

    fn append(&self, record: &warden_kernel::DecisionRecord) -> Result<(), AuthorityError> {
        self.sink
            .append(&record.to_jcs_bytes())
            .map_err(|e| AuthorityError(format!("the log refused the record: {e}")))
    }
}

impl<R: rand_core::CryptoRng + Send> KernelAuthority<R> {
    /// Runs the kernel on `call`: its record (JCS bytes) and its decision, not yet logged.
    fn enforce(
        &self,
        call: &CallRequest,
    ) -> Result<(warden_kernel::DecisionRecord, Decision), AuthorityError> {
        self.learn(call)?;
        let tool =
            ToolId::new(&call.server, &call.tool).map_err(|e| AuthorityError(e.to_string()))?;
        let arguments =
            serde_json::to_vec(&call.arguments).map_err(|e| AuthorityError(e.to_string()))?;
        let mut request = warden_kernel::CallRequest::new(call.agent.clone(), tool, arguments);
        request.delegation = call.delegation.clone();
        request.session = call.session.clone();
        request.labels = call
            .labels
            .iter()
            .map(|(k, l)| (k.clone(), to_kernel_label(l)))
            .collect();
        request.intent = call
            .intent
            .as_ref()
            .map(|(text, label)| Labeled::new(text.clone(), to_kernel_label(label)));
        let now = self.now();
        let enforcement = {
            let kernel = self
                .kernel
                .read()
                .map_err(|_| AuthorityError("kernel lock poisoned".into()))?;
            // Another session may have learned another definition of the tool meanwhile (an
            // operator accepted a change): never decide a call by a definition it was not made
            // under.
            if kernel
                .tool(&request.tool)
                .is_some_and(|t| t.definition_hash() != call.definition_hash)
            {
                return Err(AuthorityError(format!(
                    "the definition of `{}` changed while the call was decided",
                    request.tool
                )));
            }
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| AuthorityError("rng lock poisoned".into()))?;
            kernel.enforce(&request, now, &mut *rng)
        };
        Ok((enforcement.record, enforcement.decision))
    }
}

impl<R: rand_core::CryptoRng + Send> Authority for KernelAuthority<R> {
    fn decide(&self, call: &CallRequest) -> Result<Verdict, AuthorityError> {
        if let Some(refusal) = &call.refusal {
            return self.refuse(call, refusal);
        }
        let (record, decision) = self.enforce(call)?;
        // Durable first; only then is the verdict acted on.
        self.append(&record)?;
        verdict_of(&self.held, record, decision)
    }

    fn decide_deferred(&self, call: &CallRequest) -> PendingVerdict {
        if let Some(refusal) = &call.refusal {
            // Rare (refused before policy): recorded durably right here.
            return Box::pin(std::future::ready(self.refuse(call, refusal)));
        }
        let (record, decision) = match self.enforce(call) {
            Ok(d) => d,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let ack = self.sink.submit(record.to_jcs_bytes());
        let held = self.held.clone();
        Box::pin(async move {
            // Durable first: the verdict exists only once the log acknowledged its record.
            ack.await
                .map_err(|e| AuthorityError(format!("the log refused the record: {e}")))?;
            verdict_of(&held, record, decision)
        })
    }

    fn resolve(
        &self,
        _call: &CallRequest,
        pending_record: &str,
        approval: &Approval,
    ) -> Result<Verdict, AuthorityError> {
        let pending = self
            .held
            .lock()
            .map_err(|_| AuthorityError("lock poisoned".into()))?
            .remove(pending_record)
            .ok_or_else(|| AuthorityError(format!("no held call `{pending_record}`")))?;
        let now = self.now();
        let kernel = self
            .kernel
            .read()
            .map_err(|_| AuthorityError("kernel lock poisoned".into()))?
            .clone();
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| AuthorityError("rng lock poisoned".into()))?;
        if approval.granted {
            match kernel.approve(&pending, &approval.approver, now, &mut *rng) {
                Ok((cert, record)) => {
                    self.append(&record)?;
                    return Ok(Verdict::Allow {
                        certificate: raw_certificate(&cert)?,
                        record: record.id,
                        rules: record.rules,
                    });
                }
                Err(e) => {
                    // Approved too late (or twice): refused, with a record.
                    let record = kernel
                        .refuse(&pending, &approval.approver, &e.to_string(), now, &mut *rng)
                        .map_err(|e| AuthorityError(e.to_string()))?;
                    self.append(&record)?;
                    return Ok(Verdict::Deny {
                        record: record.id,
                        rules: record.rules,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let reason = if approval.approver == "warden:timeout" {
            "no approval before the timeout".to_owned()
        } else {
            format!("refused by `{}`", approval.approver)
        };
        let record = kernel
            .refuse(&pending, &approval.approver, &reason, now, &mut *rng)
            .map_err(|e| AuthorityError(e.to_string()))?;
        self.append(&record)?;
        Ok(Verdict::Deny {
            record: record.id,
            rules: record.rules,
            reason,
        })
    }

    fn record_event(&self, event: &Value) -> Result<(), AuthorityError> {
        let bytes =
            serde_json_canonicalizer::to_vec(event).map_err(|e| AuthorityError(e.to_string()))?;
        self.sink
            .append(&bytes)
            .map_err(|e| AuthorityError(format!("the log refused the record: {e}")))
    }
}

/// The certificate's JCS text: forwarded as it is, never re-encoded.
fn raw_certificate(cert: &warden_kernel::CallCertificate) -> Result<String, AuthorityError> {
    String::from_utf8(cert.to_bytes())
        .map_err(|_| AuthorityError("the certificate is not UTF-8".into()))
}

/// The verdict of a durable decision; a held call is remembered for [`Authority::resolve`].
fn verdict_of(
    held: &Mutex<HashMap<String, warden_kernel::PendingCall>>,
    record: warden_kernel::DecisionRecord,
    decision: Decision,
) -> Result<Verdict, AuthorityError> {
    Ok(match decision {
        Decision::Allow(cert) => Verdict::Allow {
            certificate: raw_certificate(&cert)?,
            record: record.id,
            rules: record.rules,
        },
        Decision::NeedsApproval(pending) => {
            let reason = pending.reason().to_owned();
            let id = pending.id().to_owned();
            held.lock()
                .map_err(|_| AuthorityError("lock poisoned".into()))?
                .insert(id.clone(), pending);
            Verdict::NeedsApproval {
                record: id,
                rules: record.rules,
                reason,
            }
        }
        Decision::Deny(denial) => Verdict::Deny {
            record: record.id,
            rules: denial.rules,
            reason: denial.reason,
        },
    })
}

/// The kernel's form of a gateway label. A source the kernel cannot parse (from a client's
/// declaration) becomes `declared`, untrusted: labels are only ever added.
pub fn to_kernel_label(label: &Label) -> KLabel {
    let integrity = match label.integrity {
        Integrity::Trusted => KIntegrity::Trusted,
        Integrity::Untrusted => KIntegrity::Untrusted,
    };
    let mut out = KLabel::empty();
    let mut any = false;
    for s in &label.sources {
        let (source, integrity) = match Source::new(s) {
            Ok(source) => (source, integrity),
            Err(_) => (
                Source::new("declared").unwrap_or_else(|_| Source::user()),
                KIntegrity::Untrusted,
            ),
        };
        out = out.join(&KLabel::new(source, integrity));
        any = true;
    }
    if !any && integrity == KIntegrity::Untrusted {
        out = out.join(&KLabel::new(
            Source::new("unknown").unwrap_or_else(|_| Source::user()),
            KIntegrity::Untrusted,
        ));
    }
    out
}

/// The gateway's form of a kernel label.
pub fn from_kernel_label(label: &KLabel) -> Label {
    Label::new(
        label.source_strings(),
        if label.is_trusted() {
            Integrity::Trusted
        } else {
            Integrity::Untrusted
        },
    )
}
