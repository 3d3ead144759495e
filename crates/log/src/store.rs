//! Durable storage with group commit: one writer thread, one frame and one `fdatasync` per batch.

use std::collections::HashMap;
use std::fs::{self, File};
use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
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
    /// `fdatasync` is in flight.
    pub batch_wait: Duration,
    /// A new segment file is started once the current one would exceed this many bytes.
    pub segment_bytes: u64,
    /// Write the `tlog-tiles` tree, the published `checkpoint` and the id index after each commit.
    pub publish: bool,
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
            danger_fail_writes_after: None,
        }
    }
}

/// An acknowledged append: the record is durable at `index`.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The record's index.
    pub index: u64,
    /// The signed checkpoint of the batch that made it durable.
    pub checkpoint: Arc<SignedCheckpoint>,
    /// Its `tlog-proof` receipt against that checkpoint.
    pub receipt: Receipt,
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
        self.ready.notify_all();
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

enum Msg {
    Append(Vec<u8>, Completer),
    Shutdown,
}

struct Published {
    records: Vec<Vec<u8>>,
    checkpoint: Arc<SignedCheckpoint>,
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
}

impl Shared {
    fn finish(&self, result: Result<Committed, LogError>) -> Result<Appended, LogError> {
        let c = result?;
        let size = c.checkpoint.checkpoint().size;
        let proof = self
            .tree
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .inclusion_proof(c.index, size)?;
        let receipt = Receipt {
            extra: None,
            index: c.index,
            proof,
            checkpoint: c.checkpoint.note().to_vec(),
        };
        Ok(Appended {
            index: c.index,
            checkpoint: c.checkpoint,
            receipt,
        })
    }

    fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A cloneable handle that appends records; share it between threads and tasks.
#[derive(Clone)]
pub struct LogWriter {
    tx: Sender<Msg>,
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
    /// Queues `record` and returns a ticket for its acknowledgement. Refuses records larger than
    /// [`MAX_RECORD_LEN`] and any record once the writer has stopped or the log is closed.
    pub fn submit(&self, record: Vec<u8>) -> Result<Ticket, LogError> {
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
        self.tx
            .send(Msg::Append(record, Completer(Arc::clone(&slot))))
            .map_err(|_| LogError::Closed)?;
        Ok(Ticket {
            slot,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Appends `record` and blocks until it is durable; returns its index and receipt.
    pub fn append(&self, record: Vec<u8>) -> Result<Appended, LogError> {
        self.submit(record)?.wait()
    }
}

/// An open transparency log directory with its writer thread.
pub struct Log {
    /// Held (with an exclusive `flock`) until the log is closed: one writer per directory.
    lock: Option<File>,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
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
    len: u64,
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
        fs::create_dir_all(&seg_dir)
            .map_err(|e| LogError::io(format!("creating `{}`", seg_dir.display()), e))?;
        create_segment(dir, 0)?;
        segment::sync_dir(dir)?;
        Self::open(dir, signer, options)
    }

    /// Opens an existing log: cuts a torn tail, recomputes the tree from the records, and refuses
    /// to start if the last stored signature or the published checkpoint disagrees with it.
    pub fn open(dir: &Path, signer: NoteSigner, options: LogOptions) -> Result<Self, LogError> {
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
        let file = fs::OpenOptions::new()
            .append(true)
            .open(&last_path)
            .map_err(|e| LogError::io(format!("opening `{}`", last_path.display()), e))?;
        let seg = SegmentFile {
            file,
            first: last_first,
            len: last_len,
        };

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
        });

        let publisher_tx = if options.publish {
            let (ptx, prx) = mpsc::channel::<Published>();
            let tiles = prepare_publisher(&shared, published)?;
            let sh = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name("warden-log-publish".into())
                .spawn(move || publisher_loop(&sh, tiles, &prx))
                .map_err(|e| LogError::io("starting the publisher thread", e))?;
            Some((ptx, handle))
        } else {
            None
        };
        let (ptx, publisher) = match publisher_tx {
            Some((t, h)) => (Some(t), Some(h)),
            None => (None, None),
        };

        let (tx, rx) = mpsc::channel::<Msg>();
        let sh = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("warden-log-writer".into())
            .spawn(move || {
                let mut w = Writer {
                    shared: sh,
                    signer,
                    seg,
                    options,
                    publish: ptx,
                    frames_written: 0,
                };
                w.run(&rx);
            })
            .map_err(|e| LogError::io("starting the writer thread", e))?;
        Ok(Self {
            lock: Some(lock),
            shared,
            tx,
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
            tx: self.tx.clone(),
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
        let _ = self.tx.send(Msg::Shutdown);
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
    let path = segment_path(dir, first);
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| LogError::io(format!("creating `{}`", path.display()), e))?;
    f.write_all(&encode_segment_header(first))
        .and_then(|()| f.sync_all())
        .map_err(|e| LogError::io(format!("writing `{}`", path.display()), e))?;
    segment::sync_dir(&segments_dir(dir))?;
    Ok(f)
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
    shared: Arc<Shared>,
    signer: NoteSigner,
    seg: SegmentFile,
    options: LogOptions,
    publish: Option<Sender<Published>>,
    frames_written: u64,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Msg>) {
        let max = self.options.max_batch.max(1);
        let mut shutting = false;
        while !shutting {
            let Ok(first) = rx.recv() else {
                break;
            };
            let mut records = Vec::new();
            let mut waiters = Vec::new();
            match first {
                Msg::Append(r, c) => {
                    records.push(r);
                    waiters.push(c);
                }
                Msg::Shutdown => shutting = true,
            }
            let deadline = Instant::now() + self.options.batch_wait;
            while !shutting && records.len() < max {
                let next = match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(m) => m,
                            Err(_) => break,
                        }
                    }
                    Err(TryRecvError::Disconnected) => break,
                };
                match next {
                    Msg::Append(r, c) => {
                        records.push(r);
                        waiters.push(c);
                    }
                    Msg::Shutdown => shutting = true,
                }
            }
            if records.is_empty() {
                continue;
            }
            if let Some(why) = self.shared.stopped() {
                for w in waiters {
                    w.complete(Err(LogError::WriterStopped(why.clone())));
                }
                continue;
            }
            match self.commit(&records) {
                Ok((first_index, checkpoint)) => {
                    for (i, w) in waiters.into_iter().enumerate() {
                        w.complete(Ok(Committed {
                            index: first_index + i as u64,
                            checkpoint: Arc::clone(&checkpoint),
                        }));
                    }
                    if let Some(p) = &self.publish {
                        let _ = p.send(Published {
                            records,
                            checkpoint,
                        });
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    *self.shared.stopped.lock().unwrap_or_else(lock_poisoned) = Some(why.clone());
                    for w in waiters {
                        w.complete(Err(LogError::WriterStopped(why.clone())));
                    }
                }
            }
        }
        // Anything still queued is refused (the completers resolve with `Closed` on drop).
        while let Ok(m) = rx.try_recv() {
            drop(m);
        }
    }

    fn commit(&mut self, records: &[Vec<u8>]) -> Result<(u64, Arc<SignedCheckpoint>), LogError> {
        let leaves: Vec<Hash> = records.iter().map(|r| Hash::leaf(r)).collect();
        let (first, size, root) = {
            let mut tree = self.shared.tree.write().unwrap_or_else(lock_poisoned);
            let first = tree.size();
            for l in leaves {
                tree.push(l);
            }
            let size = tree.size();
            (first, size, tree.root(size)?)
        };
        match self.write_frame(first, size, root, records) {
            Ok(cp) => Ok((first, cp)),
            Err(e) => {
                self.shared
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
            let file = create_segment(&self.shared.dir, first)?;
            self.seg = SegmentFile {
                file,
                first,
                len: SEGMENT_HEADER_LEN as u64,
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
        let path = || {
            segment_path(&self.shared.dir, self.seg.first)
                .display()
                .to_string()
        };
        self.seg
            .file
            .write_all(&frame)
            .map_err(|e| LogError::io(format!("appending to `{}`", path()), e))?;
        self.seg
            .file
            .sync_data()
            .map_err(|e| LogError::io(format!("fdatasync of `{}`", path()), e))?;
        self.frames_written += 1;
        let offset = self.seg.len;
        self.seg.len += frame.len() as u64;
        self.shared
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
        *self.shared.latest.write().unwrap_or_else(lock_poisoned) = Arc::clone(&signed);
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

fn publisher_loop(shared: &Shared, mut tiles: TileWriter, rx: &Receiver<Published>) {
    let index_path = id_index_path(&shared.dir);
    let mut index_file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&index_path)
        .ok();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
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
