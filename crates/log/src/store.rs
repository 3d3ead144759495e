//! Durable storage with group commit: an idle log is committed by the appending thread itself;
//! under load one writer thread writes one frame and one `fdatasync` per batch.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::LogError;
use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::hash::Hash;
use crate::note::{NoteSigner, NoteVerifier, assemble};
use crate::receipt::Receipt;
use crate::segment::{
    self, FRAME_HEADER_LEN, FrameLoc, MAX_FRAME_PAYLOAD, MAX_RECORD_LEN, SEGMENT_HEADER_LEN,
    decode_frame, encode_frame, encode_segment_header, segment_path, segments_dir,
};
use crate::tiles::{TILE_WIDTH, TileWriter, tile_data};
use crate::tree::MerkleTree;

/// Tuning of a [`Log`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Most records in one frame (one `fdatasync`). 1 gives a one-fsync-per-record log.
    pub max_batch: usize,
    /// How long the writer may wait for more records after the first of a batch. Zero (the
    /// default) takes only what is already queued: batches grow by themselves while an
    /// `fdatasync` is in flight. A non-zero wait also sends every record through the writer
    /// thread (no inline commit by an appender of an idle log).
    pub batch_wait: Duration,
    /// A new segment file is started once the current one would exceed this many bytes.
    pub segment_bytes: u64,
    /// Write the `tlog-tiles` tree, the published `checkpoint` and the id index after commits.
    pub publish: bool,
    /// Least time between two publications: commits made meanwhile are published together.
    /// Publishing writes, renames and removes several small files, whose file-system work
    /// competes with the commits' `fdatasync`; an idle log publishes at once. The published
    /// checkpoint and the id index lag the durable log by at most this much.
    pub publish_interval: Duration,
    /// Sign checkpoints with nonces a background thread computes ahead of time (see
    /// `warden-presign`): the signature in each commit then costs ~1 µs on the appender's path
    /// instead of ~14 µs. The signatures verify as before; they are not RFC 8032's
    /// deterministic bytes.
    pub presign: bool,
    /// Fault injection for tests: after this many successful frames every write fails as if the
    /// disk returned an I/O error. Never set it outside tests.
    pub danger_fail_writes_after: Option<u64>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            batch_wait: Duration::ZERO,
            segment_bytes: 64 * 1024 * 1024,
            publish: true,
            publish_interval: Duration::from_millis(100),
            presign: true,
            danger_fail_writes_after: None,
        }
    }
}

/// An acknowledged append: the record is durable at `index`.
#[derive(Clone)]
pub struct Appended {
    /// The record's index.
    pub index: u64,
    /// The signed checkpoint of the batch that made it durable.
    pub checkpoint: Arc<SignedCheckpoint>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Appended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appended")
            .field("index", &self.index)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl Appended {
    /// The record's `tlog-proof` receipt against [`Appended::checkpoint`]. Made on request, not
    /// on every acknowledgement: most appenders (the gateway's decisions) never ask for it.
    pub fn receipt(&self) -> Result<Receipt, LogError> {
        let size = self.checkpoint.checkpoint().size;
        let proof = self
            .shared
            .tree
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .inclusion_proof(self.index, size)?;
        Ok(Receipt {
            extra: None,
            index: self.index,
            proof,
            checkpoint: self.checkpoint.note().to_vec(),
        })
    }
}

#[derive(Debug, Clone)]
struct Committed {
    index: u64,
    checkpoint: Arc<SignedCheckpoint>,
}

#[derive(Default)]
struct SlotState {
    result: Option<Result<Committed, LogError>>,
    waker: Option<Waker>,
    /// A thread blocks in [`Ticket::wait`]: only then is the condition variable notified (a
    /// notification is a system call even with nobody waiting, on every commit).
    blocked: bool,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl Slot {
    fn complete(&self, result: Result<Committed, LogError>) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.result.is_none() {
            st.result = Some(result);
        }
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        if st.blocked {
            self.ready.notify_all();
        }
    }
}

/// The writer's side of a slot: resolving it wakes the caller; dropping it unresolved (writer
/// gone) resolves it with an error, so no caller waits forever.
struct Completer(Arc<Slot>);

impl Completer {
    fn complete(self, result: Result<Committed, LogError>) {
        self.0.complete(result);
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        self.0.complete(Err(LogError::Closed));
    }
}

/// A pending append. Wait for it with [`Ticket::wait`] (blocking) or `.await` it (it is a
/// `Future` woken by the writer thread, usable from any async runtime without blocking a worker).
pub struct Ticket {
    slot: Arc<Slot>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").finish_non_exhaustive()
    }
}

impl Ticket {
    /// Blocks until the record is durable (or the append failed).
    pub fn wait(self) -> Result<Appended, LogError> {
        let result = {
            let mut st = self
                .slot
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(r) = st.result.take() {
                    break r;
                }
                st.blocked = true;
                st = self
                    .slot
                    .ready
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        self.shared.finish(result)
    }
}

impl Future for Ticket {
    type Output = Result<Appended, LogError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let taken = {
            let mut st = self
                .slot
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match st.result.take() {
                Some(r) => Some(r),
                None => {
                    st.waker = Some(cx.waker().clone());
                    None
                }
            }
        };
        match taken {
            Some(r) => Poll::Ready(self.shared.finish(r)),
            None => Poll::Pending,
        }
    }
}

/// Records waiting for a committer, and whether one is at work.
#[derive(Default)]
struct Queue {
    items: VecDeque<(Vec<u8>, Completer)>,
    /// A committer (an appender committing its own record, or the writer thread) is writing a
    /// frame; it looks at `items` again when done.
    // INVARIANT: at most one committer at a time, so frames are written in queue order.
    committing: bool,
    /// Set by `Log::shutdown`: nothing more is accepted; the writer thread commits what is
    /// queued and stops.
    shutdown: bool,
    /// Records in the last frame. More than one means appenders are concurrent: an empty queue
    /// then only means the others are about to come back, and committing inline would write a
    /// frame of one while they wait for the next `fdatasync`, so records go to the writer
    /// thread (whose wake-up lets them gather) until a frame holds one record again.
    last_batch: usize,
}

struct Published {
    records: Vec<Vec<u8>>,
    checkpoint: Arc<SignedCheckpoint>,
}

/// Commits waiting for the publisher. A commit wakes the publisher only when it sleeps with
/// nothing to do; while it waits out the interval between publications, commits just add to
/// the batch. (A channel would wake the publisher thread at every commit, a system call on the
/// committing thread and a thread competing for a CPU right when the call goes upstream.)
#[derive(Default)]
struct PublishQueue {
    state: Mutex<PublishState>,
    wake: Condvar,
}

#[derive(Default)]
struct PublishState {
    pending: Vec<Published>,
    /// The publisher sleeps until a commit comes.
    idle: bool,
    /// No more commits: publish what is pending and stop.
    closed: bool,
}

impl PublishQueue {
    fn send(&self, published: Published) {
        let mut st = self.state.lock().unwrap_or_else(lock_poisoned);
        st.pending.push(published);
        if st.idle {
            st.idle = false;
            self.wake.notify_one();
        }
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(lock_poisoned).closed = true;
        self.wake.notify_one();
    }

    /// The next batch: waits for a commit, then until `not_before` (unless closed) gathering
    /// what else is committed; `None` once closed with nothing pending.
    fn next_batch(&self, not_before: Option<Instant>) -> Option<Vec<Published>> {
        let mut st = self.state.lock().unwrap_or_else(lock_poisoned);
        while st.pending.is_empty() {
            if st.closed {
                return None;
            }
            st.idle = true;
            st = self.wake.wait(st).unwrap_or_else(lock_poisoned);
        }
        st.idle = false;
        if let Some(at) = not_before {
            loop {
                let now = Instant::now();
                if now >= at || st.closed {
                    break;
                }
                st = self
                    .wake
                    .wait_timeout(st, at - now)
                    .unwrap_or_else(lock_poisoned)
                    .0;
            }
        }
        Some(std::mem::take(&mut st.pending))
    }
}

struct Shared {
    dir: PathBuf,
    verifier: NoteVerifier,
    tree: RwLock<MerkleTree>,
    latest: RwLock<Arc<SignedCheckpoint>>,
    frames: RwLock<Vec<FrameLoc>>,
    stopped: Mutex<Option<String>>,
    closed: AtomicBool,
    ids: RwLock<HashMap<String, u64>>,
    publish_error: Mutex<Option<String>>,
    queue: Mutex<Queue>,
    /// Wakes the writer thread (records queued while nobody commits, or shutdown).
    wake: Condvar,
    /// The segment file, the signer and the publisher's channel. Held only by the committer.
    writer: Mutex<Writer>,
    /// Whether an appender may commit its own record when the log is idle (see
    /// [`LogWriter::commit_or_queue`]); off when `batch_wait` asks the writer to gather.
    inline_commits: bool,
    max_batch: usize,
    batch_wait: Duration,
}

impl Shared {
    fn finish(self: &Arc<Self>, result: Result<Committed, LogError>) -> Result<Appended, LogError> {
        let c = result?;
        Ok(Appended {
            index: c.index,
            checkpoint: c.checkpoint,
            shared: Arc::clone(self),
        })
    }

    fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Writes `records` as one frame and resolves their waiters. A failure stops the log for
    /// good: these waiters and every later append get [`LogError::WriterStopped`].
    fn commit_batch(&self, writer: &mut Writer, records: Vec<Vec<u8>>, waiters: Vec<Completer>) {
        if records.is_empty() {
            return;
        }
        if let Some(why) = self.stopped() {
            for w in waiters {
                w.complete(Err(LogError::WriterStopped(why.clone())));
            }
            return;
        }
        match writer.commit(self, &records) {
            Ok((first_index, checkpoint)) => {
                for (i, w) in waiters.into_iter().enumerate() {
                    w.complete(Ok(Committed {
                        index: first_index + i as u64,
                        checkpoint: Arc::clone(&checkpoint),
                    }));
                }
                if let Some(p) = &writer.publish {
                    p.send(Published {
                        records,
                        checkpoint,
                    });
                }
            }
            Err(e) => {
                let why = e.to_string();
                *self.stopped.lock().unwrap_or_else(lock_poisoned) = Some(why.clone());
                for w in waiters {
                    w.complete(Err(LogError::WriterStopped(why.clone())));
                }
            }
        }
    }

    /// Queues `record`, or, when `inline` and nobody is committing or waiting, claims the
    /// commit and hands the record back: the caller then commits it itself.
    fn enqueue(
        &self,
        record: Vec<u8>,
        completer: Completer,
        inline: bool,
    ) -> Result<Option<(Vec<u8>, Completer)>, LogError> {
        let mut q = self.queue.lock().unwrap_or_else(lock_poisoned);
        if q.shutdown {
            return Err(LogError::Closed);
        }
        if inline && self.inline_commits && !q.committing && q.items.is_empty() && q.last_batch <= 1
        {
            q.committing = true;
            return Ok(Some((record, completer)));
        }
        q.items.push_back((record, completer));
        if !q.committing {
            self.wake.notify_one();
        }
        Ok(None)
    }

    /// Commits one record on the calling thread (the commit was claimed by [`Self::enqueue`]),
    /// then hands whatever was queued meanwhile to the writer thread.
    fn commit_inline(&self, record: Vec<u8>, completer: Completer) {
        {
            let mut w = self.writer.lock().unwrap_or_else(lock_poisoned);
            self.commit_batch(&mut w, vec![record], vec![completer]);
        }
        let mut q = self.queue.lock().unwrap_or_else(lock_poisoned);
        q.committing = false;
        q.last_batch = 1;
        if !q.items.is_empty() || q.shutdown {
            self.wake.notify_one();
        }
    }

    /// The writer thread: group-commits what appenders queued while a frame was being written
    /// (one frame and one `fdatasync` per batch), until shutdown.
    fn writer_loop(&self) {
        let max = self.max_batch.max(1);
        loop {
            let (records, waiters) = {
                let mut q = self.queue.lock().unwrap_or_else(lock_poisoned);
                loop {
                    if !q.committing && !q.items.is_empty() {
                        break;
                    }
                    if q.shutdown && !q.committing {
                        // Nothing queued and nothing more accepted: close the publisher's
                        // channel so it finishes, and leave the segment without its reserve
                        // (a closed log's files end at their last frame; if this fails, the
                        // reserve is read as the end at the next open all the same).
                        drop(q);
                        let mut w = self.writer.lock().unwrap_or_else(lock_poisoned);
                        if let Some(p) = w.publish.take() {
                            p.close();
                        }
                        let _ = w.seg.trim();
                        return;
                    }
                    q = self.wake.wait(q).unwrap_or_else(lock_poisoned);
                }
                let deadline = Instant::now() + self.batch_wait;
                while q.items.len() < max && !q.shutdown {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    q = self
                        .wake
                        .wait_timeout(q, deadline - now)
                        .unwrap_or_else(lock_poisoned)
                        .0;
                }
                q.committing = true;
                let n = q.items.len().min(max);
                q.last_batch = n;
                q.items.drain(..n).unzip::<_, _, Vec<_>, Vec<_>>()
            };
            {
                let mut w = self.writer.lock().unwrap_or_else(lock_poisoned);
                self.commit_batch(&mut w, records, waiters);
            }
            self.queue.lock().unwrap_or_else(lock_poisoned).committing = false;
        }
    }
}

/// A cloneable handle that appends records; share it between threads and tasks.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Queues `record` for the writer thread and returns a ticket for its acknowledgement
    /// (never blocks on I/O). Refuses records larger than [`MAX_RECORD_LEN`] and any record once
    /// the writer has stopped or the log is closed.
    pub fn submit(&self, record: Vec<u8>) -> Result<Ticket, LogError> {
        self.enqueue(record, false)
    }

    /// As [`LogWriter::submit`], except that when the log is idle (no frame being written, no
    /// record queued) the calling thread writes the record's frame and `fdatasync`s it itself,
    /// and the ticket is already resolved when this returns: no hand-off to the writer thread
    /// and back. Under load it queues like `submit`, and the record rides the writer thread's
    /// next group commit. Blocks for at most one frame write and `fdatasync`; call it from a
    /// thread that may block (or a current-thread runtime that has nothing better to do).
    pub fn commit_or_queue(&self, record: Vec<u8>) -> Result<Ticket, LogError> {
        self.enqueue(record, true)
    }

    fn enqueue(&self, record: Vec<u8>, inline: bool) -> Result<Ticket, LogError> {
        if record.len() > MAX_RECORD_LEN {
            return Err(LogError::RecordTooLarge {
                len: record.len(),
                max: MAX_RECORD_LEN,
            });
        }
        if let Some(why) = self.shared.stopped() {
            return Err(LogError::WriterStopped(why));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let slot = Arc::new(Slot::default());
        let completer = Completer(Arc::clone(&slot));
        if let Some((record, completer)) = self.shared.enqueue(record, completer, inline)? {
            self.shared.commit_inline(record, completer);
        }
        Ok(Ticket {
            slot,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Appends `record` and blocks until it is durable; returns its index and receipt. When the
    /// log is idle the calling thread commits the record itself (see
    /// [`LogWriter::commit_or_queue`]); otherwise it waits for the writer thread's group commit.
    pub fn append(&self, record: Vec<u8>) -> Result<Appended, LogError> {
        self.commit_or_queue(record)?.wait()
    }
}

/// An open transparency log directory with its writer thread.
pub struct Log {
    /// Held (with an exclusive `flock`) until the log is closed: one writer per directory.
    lock: Option<File>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    publisher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

struct SegmentFile {
    file: File,
    first: u64,
    /// End of the last frame: where the next frame goes.
    len: u64,
    /// Bytes of the file, `len` included; beyond `len` they are reserved zeros (see
    /// [`SegmentFile::reserve`]).
    capacity: u64,
}

/// Space reserved (zeros written) at the end of the segment at a time: about 700 decision
/// records. Growing it costs one commit a 1 MiB write and a `fsync` (a few ms), once per reserve.
const RESERVE_BYTES: u64 = 1024 * 1024;

impl SegmentFile {
    fn open(path: &Path, first: u64, len: u64) -> Result<Self, LogError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| LogError::io(format!("opening `{}`", path.display()), e))?;
        let capacity = file
            .metadata()
            .map_err(|e| LogError::io(format!("reading `{}`", path.display()), e))?
            .len()
            .max(len);
        Ok(Self {
            file,
            first,
            len,
            capacity,
        })
    }

    /// Makes room for `need` more bytes. The file is extended ahead, by [`RESERVE_BYTES`], with
    /// zeros actually written (not `fallocate`d: a write into an unwritten extent converts it,
    /// a metadata change that costs every `fdatasync` a journal commit, ~50 µs here) and its new
    /// size made durable once, so that the frames written into the reserve change no metadata
    /// and their `fdatasync` flushes data only. Recovery reads an all-zero rest of the last
    /// segment as its end. Where the space cannot be reserved (a full disk), frames extend the
    /// file as they are written, and fail when that fails.
    fn reserve(&mut self, need: u64) -> Result<(), LogError> {
        if self.len + need <= self.capacity {
            return Ok(());
        }
        let target = self.len + need + RESERVE_BYTES;
        let zeros = vec![0u8; usize::try_from(target - self.capacity).unwrap_or(0)];
        if self.file.write_all_at(&zeros, self.capacity).is_err() {
            // Whatever part was written reads as zeros after the last frame: the end, as before.
            return Ok(());
        }
        self.file
            .sync_all()
            .map_err(|e| LogError::io("reserving segment space", e))?;
        self.capacity = target;
        Ok(())
    }

    /// Gives the reserve back (before the segment is left for a new one), durably.
    fn trim(&mut self) -> Result<(), LogError> {
        if self.capacity > self.len {
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| LogError::io("trimming a segment", e))?;
            self.capacity = self.len;
        }
        Ok(())
    }
}

fn lock_poisoned<T>(e: PoisonError<T>) -> T {
    e.into_inner()
}

impl Log {
    /// Creates a new, empty log in `dir` (which may exist but must not hold a log) and opens it.
    /// The checkpoint origin is the signer's key name.
    pub fn create(dir: &Path, signer: NoteSigner, options: LogOptions) -> Result<Self, LogError> {
        let seg_dir = segments_dir(dir);
        if seg_dir.exists() {
            return Err(LogError::Mismatch(format!(
                "`{}` already holds a log",
                dir.display()
            )));
        }
        // Built under a temporary name and renamed: `segments/` exists only with its first
        // segment in it, whatever moment a crash hits.
        let tmp_dir = dir.join("segments.creating");
        let _ = fs::remove_dir_all(&tmp_dir);
        fs::create_dir_all(&tmp_dir)
            .map_err(|e| LogError::io(format!("creating `{}`", tmp_dir.display()), e))?;
        let first = tmp_dir.join(format!("{:020}.seg", 0));
        let mut f = File::create(&first)
            .map_err(|e| LogError::io(format!("creating `{}`", first.display()), e))?;
        f.write_all(&encode_segment_header(0))
            .and_then(|()| f.sync_all())
            .map_err(|e| LogError::io(format!("writing `{}`", first.display()), e))?;
        segment::sync_dir(&tmp_dir)?;
        fs::rename(&tmp_dir, &seg_dir)
            .map_err(|e| LogError::io(format!("renaming `{}`", tmp_dir.display()), e))?;
        segment::sync_dir(dir)?;
        Self::open(dir, signer, options)
    }

    /// Opens an existing log: cuts a torn tail, recomputes the tree from the records, and refuses
    /// to start if the last stored signature or the published checkpoint disagrees with it.
    pub fn open(dir: &Path, mut signer: NoteSigner, options: LogOptions) -> Result<Self, LogError> {
        if !segments_dir(dir).is_dir() {
            return Err(LogError::Mismatch(format!(
                "`{}` holds no log (no `segments` directory)",
                dir.display()
            )));
        }
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LogError::io(format!("opening `{}`", lock_path.display()), e))?;
        lock.try_lock().map_err(|_| {
            LogError::Mismatch(format!(
                "log `{}` is open in another process",
                dir.display()
            ))
        })?;
        if options.presign {
            signer.start_presigning(Box::new(|buf| crate::keys::os_entropy(buf).is_ok()))?;
        }
        let origin = signer.name().to_owned();
        let verifier = signer.verifier();
        let mut tree = MerkleTree::new();
        let mut last_sig: Option<(u64, Vec<u8>)> = None;
        let mut ids = HashMap::new();
        let outcome = segment::scan(dir, &mut |frame, _, _| {
            for (i, r) in frame.records.iter().enumerate() {
                tree.push(Hash::leaf(r));
                if let Some(id) = record_id(r) {
                    ids.entry(id).or_insert(frame.first_index + i as u64);
                }
            }
            last_sig = Some((tree.size(), frame.signature.to_vec()));
            Ok(())
        })?;
        if let Some(torn) = &outcome.torn {
            segment::cut_tail(torn)?;
        }
        let size = outcome.size;
        let root = tree.root(size)?;
        let text = Checkpoint::new(&origin, size, root).to_text();
        let note = match last_sig {
            Some((at, blob)) => {
                let note = assemble(&text, &origin, &blob);
                if at != size || verifier.verify(&note).is_err() {
                    return Err(LogError::Mismatch(format!(
                        "the checkpoint stored with the last frame (size {size}) is not a valid signature by `{verifier}` over the recomputed root {root}; wrong key or altered records"
                    )));
                }
                note
            }
            None => signer.sign(&text)?,
        };
        let latest = Arc::new(SignedCheckpoint::from_parts(
            Checkpoint::new(&origin, size, root),
            note,
        ));
        let published = check_published(dir, &verifier, &tree, size)?;

        let (last_first, last_path, last_len) = outcome.last_segment.ok_or_else(|| {
            LogError::Corrupt(format!(
                "`{}` has no segment file",
                segments_dir(dir).display()
            ))
        })?;
        let seg = SegmentFile::open(&last_path, last_first, last_len)?;

        let publish_queue = options.publish.then(|| Arc::new(PublishQueue::default()));
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            verifier,
            tree: RwLock::new(tree),
            latest: RwLock::new(latest),
            frames: RwLock::new(outcome.frames),
            stopped: Mutex::new(None),
            closed: AtomicBool::new(false),
            ids: RwLock::new(ids),
            publish_error: Mutex::new(None),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            inline_commits: options.batch_wait.is_zero(),
            max_batch: options.max_batch,
            batch_wait: options.batch_wait,
            writer: Mutex::new(Writer {
                signer,
                seg,
                options,
                publish: publish_queue.clone(),
                frames_written: 0,
            }),
        });

        let publisher = match publish_queue {
            Some(queue) => {
                let interval = shared
                    .writer
                    .lock()
                    .unwrap_or_else(lock_poisoned)
                    .options
                    .publish_interval;
                let tiles = prepare_publisher(&shared, published)?;
                let sh = Arc::clone(&shared);
                Some(
                    std::thread::Builder::new()
                        .name("warden-log-publish".into())
                        .spawn(move || publisher_loop(&sh, tiles, &queue, interval))
                        .map_err(|e| LogError::io("starting the publisher thread", e))?,
                )
            }
            None => None,
        };

        let sh = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("warden-log-writer".into())
            .spawn(move || sh.writer_loop())
            .map_err(|e| LogError::io("starting the writer thread", e))?;
        Ok(Self {
            lock: Some(lock),
            shared,
            writer: Some(writer),
            publisher,
        })
    }

    /// Opens the log in `dir`, creating it (and its key files) if needed: the signing key is
    /// `DIR/log-signing.key` (see [`crate::load_or_create_signing_key`]) named `origin`.
    pub fn open_or_create(
        dir: &Path,
        origin: &str,
        entropy: &mut dyn FnMut(&mut [u8]) -> Result<(), LogError>,
        options: LogOptions,
    ) -> Result<Self, LogError> {
        let signer = crate::keys::load_or_create_signing_key(dir, origin, entropy)?;
        if segments_dir(dir).is_dir() {
            Self::open(dir, signer, options)
        } else {
            Self::create(dir, signer, options)
        }
    }

    /// A handle for appending.
    pub fn writer(&self) -> LogWriter {
        LogWriter {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Appends one record and waits until it is durable (shorthand for `writer().append`).
    pub fn append(&self, record: Vec<u8>) -> Result<Appended, LogError> {
        self.writer().append(record)
    }

    /// The latest signed checkpoint (every record below its size is durable).
    pub fn checkpoint(&self) -> Arc<SignedCheckpoint> {
        Arc::clone(&self.shared.latest.read().unwrap_or_else(lock_poisoned))
    }

    /// The number of durable records.
    pub fn size(&self) -> u64 {
        self.checkpoint().checkpoint().size
    }

    /// The key that verifies this log's checkpoints.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.shared.verifier
    }

    /// `Err(WriterStopped)` once a write or `fdatasync` failed.
    pub fn health(&self) -> Result<(), LogError> {
        match self.shared.stopped() {
            Some(why) => Err(LogError::WriterStopped(why)),
            None => Ok(()),
        }
    }

    /// The error that stopped publishing tiles, if any (durability is not affected).
    pub fn publish_error(&self) -> Option<String> {
        self.shared
            .publish_error
            .lock()
            .unwrap_or_else(lock_poisoned)
            .clone()
    }

    /// A receipt for record `index` against the latest checkpoint.
    pub fn receipt(&self, index: u64) -> Result<Receipt, LogError> {
        let cp = self.checkpoint();
        let size = cp.checkpoint().size;
        let proof = self
            .shared
            .tree
            .read()
            .unwrap_or_else(lock_poisoned)
            .inclusion_proof(index, size)?;
        Ok(Receipt {
            extra: None,
            index,
            proof,
            checkpoint: cp.note().to_vec(),
        })
    }

    /// The consistency proof from `old_size` to the latest checkpoint.
    pub fn consistency_proof(
        &self,
        old_size: u64,
    ) -> Result<(Arc<SignedCheckpoint>, Hash, Vec<Hash>), LogError> {
        let cp = self.checkpoint();
        let tree = self.shared.tree.read().unwrap_or_else(lock_poisoned);
        let size = cp.checkpoint().size;
        if old_size > size {
            return Err(LogError::SizeOutOfRange {
                size: old_size,
                current: size,
            });
        }
        let old_root = tree.root(old_size)?;
        let proof = tree.consistency_proof(old_size, size)?;
        Ok((Arc::clone(&cp), old_root, proof))
    }

    /// The index of the record whose JSON `id` field is `id`, once the publisher indexed it.
    pub fn find_id(&self, id: &str) -> Option<u64> {
        self.shared
            .ids
            .read()
            .unwrap_or_else(lock_poisoned)
            .get(id)
            .copied()
    }

    /// The durable records from `from` on (up to the size at the time of the call), for example
    /// to rebuild rate-limit state after a restart.
    pub fn records(&self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        read_from_frames(&self.shared, from)
    }

    /// Stops accepting appends, lets the writer finish what is queued, and waits for the
    /// publisher to catch up.
    pub fn close(mut self) -> Result<(), LogError> {
        self.shutdown();
        self.health()
    }

    fn shutdown(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared
            .queue
            .lock()
            .unwrap_or_else(lock_poisoned)
            .shutdown = true;
        self.shared.wake.notify_one();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        if let Some(h) = self.publisher.take() {
            let _ = h.join();
        }
        self.lock = None;
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn create_segment(dir: &Path, first: u64) -> Result<File, LogError> {
    // Written under a temporary name and renamed, so a crash leaves either no segment or one
    // with a complete header (never a half-written header that would block recovery).
    let path = segment_path(dir, first);
    let tmp = path.with_extension("seg.tmp");
    let ctx = |what: &str, p: &Path| format!("{what} `{}`", p.display());
    {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| LogError::io(ctx("creating", &tmp), e))?;
        f.write_all(&encode_segment_header(first))
            .and_then(|()| f.sync_all())
            .map_err(|e| LogError::io(ctx("writing", &tmp), e))?;
    }
    if path.exists() {
        return Err(LogError::Corrupt(format!(
            "segment `{}` already exists",
            path.display()
        )));
    }
    fs::rename(&tmp, &path).map_err(|e| LogError::io(ctx("renaming", &tmp), e))?;
    segment::sync_dir(&segments_dir(dir))?;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::io(ctx("opening", &path), e))
}

/// The JSON `id` field of a record, if it is a JSON object with a string `id`.
pub(crate) fn record_id(record: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_slice::<IdOnly>(record)
        .ok()
        .and_then(|r| r.id)
}

/// Checks the published `tiles/checkpoint` against the recomputed tree; returns its size.
fn check_published(
    dir: &Path,
    verifier: &NoteVerifier,
    tree: &MerkleTree,
    size: u64,
) -> Result<u64, LogError> {
    let path = dir.join("tiles").join("checkpoint");
    let Ok(note) = fs::read(&path) else {
        return Ok(0);
    };
    let signed = SignedCheckpoint::verify(&note, verifier).map_err(|e| {
        LogError::Mismatch(format!("published checkpoint `{}`: {e}", path.display()))
    })?;
    let cp = signed.checkpoint();
    if cp.size > size {
        return Err(LogError::Mismatch(format!(
            "published checkpoint `{}` has size {} but only {size} records are durable: acknowledged records are missing",
            path.display(),
            cp.size
        )));
    }
    if tree.root(cp.size)? != cp.root {
        return Err(LogError::Mismatch(format!(
            "published checkpoint `{}` has a different root at size {} than the stored records",
            path.display(),
            cp.size
        )));
    }
    Ok(cp.size)
}

struct Writer {
    signer: NoteSigner,
    seg: SegmentFile,
    options: LogOptions,
    publish: Option<Arc<PublishQueue>>,
    frames_written: u64,
}

impl Writer {
    fn commit(
        &mut self,
        shared: &Shared,
        records: &[Vec<u8>],
    ) -> Result<(u64, Arc<SignedCheckpoint>), LogError> {
        let leaves: Vec<Hash> = records.iter().map(|r| Hash::leaf(r)).collect();
        let (first, size, root) = {
            let mut tree = shared.tree.write().unwrap_or_else(lock_poisoned);
            let first = tree.size();
            for l in leaves {
                tree.push(l);
            }
            let size = tree.size();
            (first, size, tree.root(size)?)
        };
        match self.write_frame(shared, first, size, root, records) {
            Ok(cp) => Ok((first, cp)),
            Err(e) => {
                shared
                    .tree
                    .write()
                    .unwrap_or_else(lock_poisoned)
                    .truncate(first);
                Err(e)
            }
        }
    }

    fn write_frame(
        &mut self,
        shared: &Shared,
        first: u64,
        size: u64,
        root: Hash,
        records: &[Vec<u8>],
    ) -> Result<Arc<SignedCheckpoint>, LogError> {
        let origin = self.signer.name().to_owned();
        let checkpoint = Checkpoint::new(&origin, size, root);
        let text = checkpoint.to_text();
        let blob = self.signer.signature_blob(text.as_bytes());
        let frame = encode_frame(first, records, &blob)?;
        if self.seg.len > SEGMENT_HEADER_LEN as u64
            && self.seg.len + frame.len() as u64 > self.options.segment_bytes
        {
            // The old segment ends at its last frame: no reserve left behind in it.
            self.seg.trim()?;
            let file = create_segment(&shared.dir, first)?;
            self.seg = SegmentFile {
                file,
                first,
                len: SEGMENT_HEADER_LEN as u64,
                capacity: SEGMENT_HEADER_LEN as u64,
            };
        }
        if self
            .options
            .danger_fail_writes_after
            .is_some_and(|n| self.frames_written >= n)
        {
            return Err(LogError::io(
                "writing a frame",
                std::io::Error::other("injected write failure"),
            ));
        }
        self.seg.reserve(frame.len() as u64)?;
        let path = || {
            segment_path(&shared.dir, self.seg.first)
                .display()
                .to_string()
        };
        self.seg
            .file
            .write_all_at(&frame, self.seg.len)
            .map_err(|e| LogError::io(format!("appending to `{}`", path()), e))?;
        self.seg
            .file
            .sync_data()
            .map_err(|e| LogError::io(format!("fdatasync of `{}`", path()), e))?;
        self.frames_written += 1;
        let offset = self.seg.len;
        self.seg.len += frame.len() as u64;
        shared
            .frames
            .write()
            .unwrap_or_else(lock_poisoned)
            .push(FrameLoc {
                first_index: first,
                count: records.len() as u32,
                segment_first: self.seg.first,
                offset,
            });
        let note = assemble(&text, &origin, &blob);
        let signed = Arc::new(SignedCheckpoint::from_parts(checkpoint, note));
        *shared.latest.write().unwrap_or_else(lock_poisoned) = Arc::clone(&signed);
        Ok(signed)
    }
}

/// Brings the tiles up to date with the durable log and returns the tile writer.
fn prepare_publisher(shared: &Shared, published: u64) -> Result<TileWriter, LogError> {
    let root = shared.dir.join("tiles");
    // Restart from the start of the last entry bundle, so a bundle or tile torn by a crash
    // after the previous publication is rewritten.
    let start = published / TILE_WIDTH * TILE_WIDTH;
    let records = read_from_frames(shared, start)?;
    let mut tw = TileWriter::new(root, start, Vec::new());
    let size = shared
        .latest
        .read()
        .unwrap_or_else(lock_poisoned)
        .checkpoint()
        .size;
    if size > 0 {
        let note = shared
            .latest
            .read()
            .unwrap_or_else(lock_poisoned)
            .note()
            .to_vec();
        let tree = shared.tree.read().unwrap_or_else(lock_poisoned);
        tw.publish(
            &|id| tile_data(&tree, id),
            records.into_iter().map(|(_, r)| r),
            size,
            Some(&note),
        )?;
        tw.remove_stale_partials(published, size);
    }
    rewrite_id_index(shared)?;
    Ok(tw)
}

fn read_from_frames(shared: &Shared, from: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
    let size = shared
        .latest
        .read()
        .unwrap_or_else(lock_poisoned)
        .checkpoint()
        .size;
    let frames: Vec<FrameLoc> = shared
        .frames
        .read()
        .unwrap_or_else(lock_poisoned)
        .iter()
        .filter(|f| f.first_index + u64::from(f.count) > from && f.first_index < size)
        .copied()
        .collect();
    let mut out = Vec::new();
    let mut open: Option<(u64, File)> = None;
    for loc in frames {
        let file = match &open {
            Some((first, f)) if *first == loc.segment_first => f,
            _ => {
                let path = segment_path(&shared.dir, loc.segment_first);
                let f = File::open(&path)
                    .map_err(|e| LogError::io(format!("opening `{}`", path.display()), e))?;
                &open.insert((loc.segment_first, f)).1
            }
        };
        let mut header = [0u8; FRAME_HEADER_LEN];
        file.read_exact_at(&mut header, loc.offset)
            .map_err(|e| LogError::io("reading a frame", e))?;
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(LogError::Corrupt(format!(
                "frame at byte {} changed on disk",
                loc.offset
            )));
        }
        let mut buf = vec![0u8; FRAME_HEADER_LEN + len];
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(|e| LogError::io("reading a frame", e))?;
        let frame = decode_frame(&buf).map_err(|e| {
            LogError::Corrupt(format!(
                "frame at byte {} changed on disk: {e:?}",
                loc.offset
            ))
        })?;
        for (i, r) in frame.records.iter().enumerate() {
            let index = frame.first_index + i as u64;
            if index >= from && index < size {
                out.push((index, r.to_vec()));
            }
        }
    }
    Ok(out)
}

fn id_index_path(dir: &Path) -> PathBuf {
    dir.join("index").join("ids")
}

/// Rewrites `DIR/index/ids` (one `"<json id>" <index>` line per record with an id).
fn rewrite_id_index(shared: &Shared) -> Result<(), LogError> {
    let ids = shared.ids.read().unwrap_or_else(lock_poisoned);
    let mut pairs: Vec<(&String, &u64)> = ids.iter().collect();
    pairs.sort_by_key(|(_, i)| **i);
    let mut text = String::new();
    for (id, index) in pairs {
        text.push_str(&serde_json::Value::String(id.clone()).to_string());
        text.push(' ');
        text.push_str(&index.to_string());
        text.push('\n');
    }
    crate::tiles::write_atomic(&id_index_path(&shared.dir), text.as_bytes())
}

fn publisher_loop(
    shared: &Shared,
    mut tiles: TileWriter,
    queue: &PublishQueue,
    interval: Duration,
) {
    let index_path = id_index_path(&shared.dir);
    let mut index_file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&index_path)
        .ok();
    let mut last_published: Option<Instant> = None;
    // Coalesce what is committed until the interval since the last publication is over (at
    // once when the log was idle that long); closing ends the wait.
    while let Some(batch) = queue.next_batch(last_published.map(|t| t + interval)) {
        last_published = Some(Instant::now());
        if shared
            .publish_error
            .lock()
            .unwrap_or_else(lock_poisoned)
            .is_some()
        {
            continue;
        }
        let Some(last) = batch.last() else { continue };
        let checkpoint = Arc::clone(&last.checkpoint);
        let size = checkpoint.checkpoint().size;
        let mut index_lines = String::new();
        let mut records = Vec::new();
        let mut next = tiles.published();
        {
            let mut ids = shared.ids.write().unwrap_or_else(lock_poisoned);
            for p in batch {
                for r in p.records {
                    if let Some(id) = record_id(&r) {
                        index_lines.push_str(&serde_json::Value::String(id.clone()).to_string());
                        index_lines.push(' ');
                        index_lines.push_str(&next.to_string());
                        index_lines.push('\n');
                        ids.entry(id).or_insert(next);
                    }
                    records.push(r);
                    next += 1;
                }
            }
        }
        let result = tiles
            .publish(
                &|id| {
                    let tree = shared.tree.read().unwrap_or_else(lock_poisoned);
                    tile_data(&tree, id)
                },
                records,
                size,
                Some(checkpoint.note()),
            )
            .and_then(|()| match &mut index_file {
                Some(f) => f
                    .write_all(index_lines.as_bytes())
                    .map_err(|e| LogError::io("appending to the id index", e)),
                None => Err(LogError::Corrupt(format!(
                    "cannot open `{}`",
                    index_path.display()
                ))),
            });
        if let Err(e) = result {
            *shared.publish_error.lock().unwrap_or_else(lock_poisoned) = Some(e.to_string());
        }
    }
}

/// A callback receiving `(index, record)`.
pub type RecordVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), LogError> + 'a;

/// Reads the records of a log directory from index `from` on without opening it for writing
/// (frames are checksum-checked; signatures are not: use [`crate::verify_dir`] for that).
/// Calls `visit(index, record)` in order and returns the number of records in the log.
pub fn read_records(dir: &Path, from: u64, visit: &mut RecordVisitor<'_>) -> Result<u64, LogError> {
    let outcome = segment::scan(dir, &mut |frame, _, _| {
        for (i, r) in frame.records.iter().enumerate() {
            let index = frame.first_index + i as u64;
            if index >= from {
                visit(index, r)?;
            }
        }
        Ok(())
    })?;
    Ok(outcome.size)
}
