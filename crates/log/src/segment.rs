//! The on-disk format: segment files of CRC-framed batches.
//!
//! A segment file `DIR/segments/<first index, 20 digits>.seg` starts with a 20-byte header
//! (`WARDLOG1`, first record index u64 BE, CRC-32 of those 16 bytes) followed by frames. A frame
//! is one group commit:
//!
//! ```text
//! "WFRM" | payload length u32 BE | CRC-32(length ‖ payload) u32 BE | payload
//! payload = first index u64 BE | count u32 BE | (length u16 BE | record bytes) × count
//!           | signature length u8 | key id ‖ Ed25519 signature of the checkpoint at the new size
//! ```
//!
//! The last segment may end in zero bytes: space reserved ahead of the frames (see the store),
//! read as the end of the log. A zero byte can never start a frame.
//!
//! The checkpoint text itself is not stored: it is rebuilt from the origin and the recomputed root,
//! so a stored signature verifies only if the records reproduce the signed root.

use std::fs;
use std::path::{Path, PathBuf};

use crate::LogError;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"WARDLOG1";
pub(crate) const SEGMENT_HEADER_LEN: usize = 20;
pub(crate) const FRAME_MAGIC: &[u8; 4] = b"WFRM";
pub(crate) const FRAME_HEADER_LEN: usize = 12;
/// The largest entry a `tlog-tiles` entry bundle can carry (a big-endian uint16 length prefix).
pub const MAX_RECORD_LEN: usize = u16::MAX as usize;
/// Upper bound on a frame's payload, so a damaged length field cannot ask for gigabytes.
pub(crate) const MAX_FRAME_PAYLOAD: usize = 64 * 1024 * 1024;

/// Encodes a segment header.
pub(crate) fn encode_segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut out = [0u8; SEGMENT_HEADER_LEN];
    let (head, crc) = out.split_at_mut(16);
    let (magic, first) = head.split_at_mut(8);
    magic.copy_from_slice(SEGMENT_MAGIC);
    first.copy_from_slice(&first_index.to_be_bytes());
    crc.copy_from_slice(&crc32fast::hash(head).to_be_bytes());
    out
}

/// Decodes a segment header, returning the index of its first record.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, LogError> {
    let Some((head, _)) = bytes.split_first_chunk::<SEGMENT_HEADER_LEN>() else {
        return Err(LogError::Corrupt(
            "segment header is shorter than 20 bytes".into(),
        ));
    };
    let (body, crc) = head.split_at(16);
    if body.get(..8) != Some(SEGMENT_MAGIC.as_slice()) {
        return Err(LogError::Corrupt(
            "segment does not start with `WARDLOG1`".into(),
        ));
    }
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(LogError::Corrupt("segment header checksum mismatch".into()));
    }
    let first: [u8; 8] = body
        .get(8..16)
        .and_then(|s| s.try_into().ok())
        .unwrap_or_default();
    Ok(u64::from_be_bytes(first))
}

/// Encodes one frame.
pub(crate) fn encode_frame(
    first_index: u64,
    records: &[Vec<u8>],
    sig: &[u8],
) -> Result<Vec<u8>, LogError> {
    let sig_len =
        u8::try_from(sig.len()).map_err(|_| LogError::Corrupt("signature too long".into()))?;
    let count = u32::try_from(records.len())
        .map_err(|_| LogError::Corrupt("too many records in one frame".into()))?;
    let body: usize = records.iter().map(|r| r.len() + 2).sum::<usize>() + 13 + sig.len();
    if body > MAX_FRAME_PAYLOAD {
        return Err(LogError::Corrupt("frame too large".into()));
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body);
    out.extend_from_slice(FRAME_MAGIC);
    out.extend_from_slice(&(body as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&first_index.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for r in records {
        let len = u16::try_from(r.len()).map_err(|_| LogError::RecordTooLarge {
            len: r.len(),
            max: MAX_RECORD_LEN,
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(r);
    }
    out.push(sig_len);
    out.extend_from_slice(sig);
    let mut h = crc32fast::Hasher::new();
    h.update(&(body as u32).to_be_bytes());
    h.update(out.get(FRAME_HEADER_LEN..).unwrap_or_default());
    let crc = h.finalize().to_be_bytes();
    if let Some(slot) = out.get_mut(8..12) {
        slot.copy_from_slice(&crc);
    }
    Ok(out)
}

/// A decoded frame, borrowing its records from the segment bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Index of the first record.
    pub first_index: u64,
    /// The records, in order.
    pub records: Vec<&'a [u8]>,
    /// Key id ‖ signature of the checkpoint at `first_index + records.len()`.
    pub signature: &'a [u8],
    /// Total encoded length, header included.
    pub encoded_len: usize,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end before the frame does (a torn write, if at the end of a file).
    Incomplete,
    /// The frame is damaged: bad magic, bad checksum or inconsistent contents.
    Damaged(String),
}

/// Decodes the frame at the start of `bytes`.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some((header, rest)) = bytes.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(FrameError::Incomplete);
    };
    let [m0, m1, m2, m3, l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    if [m0, m1, m2, m3] != *FRAME_MAGIC {
        return Err(FrameError::Damaged("bad frame magic".into()));
    }
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::Damaged(format!(
            "frame length {len} is implausible"
        )));
    }
    let Some(payload) = rest.get(..len) else {
        return Err(FrameError::Incomplete);
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&[l0, l1, l2, l3]);
    h.update(payload);
    if h.finalize() != u32::from_be_bytes([c0, c1, c2, c3]) {
        return Err(FrameError::Damaged("frame checksum mismatch".into()));
    }
    let damaged = |what: &str| FrameError::Damaged(format!("frame {what}"));
    let mut r = Reader { bytes: payload };
    let first_index = u64::from_be_bytes(r.array().ok_or_else(|| damaged("has no first index"))?);
    let count = u32::from_be_bytes(r.array().ok_or_else(|| damaged("has no count"))?);
    let mut records = Vec::with_capacity((count as usize).min(len / 2));
    for _ in 0..count {
        let n = u16::from_be_bytes(r.array().ok_or_else(|| damaged("record length is cut"))?);
        records.push(r.take(n as usize).ok_or_else(|| damaged("record is cut"))?);
    }
    let [sig_len] = r.array().ok_or_else(|| damaged("has no signature"))?;
    let signature = r
        .take(sig_len as usize)
        .ok_or_else(|| damaged("signature is cut"))?;
    if !r.bytes.is_empty() {
        return Err(damaged("has trailing bytes"));
    }
    if first_index.checked_add(u64::from(count)).is_none() {
        return Err(damaged("index overflows"));
    }
    Ok(Frame {
        first_index,
        records,
        signature,
        encoded_len: FRAME_HEADER_LEN + len,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| s.try_into().ok())
    }
}

/// The segments directory of a log directory.
pub(crate) fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

pub(crate) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    segments_dir(dir).join(format!("{first_index:020}.seg"))
}

/// Lists segment files in index order, with the first index their names claim.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let seg_dir = segments_dir(dir);
    let entries = fs::read_dir(&seg_dir)
        .map_err(|e| LogError::io(format!("reading `{}`", seg_dir.display()), e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| LogError::io(format!("reading `{}`", seg_dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        let first = (stem.len() == 20)
            .then(|| stem.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| {
                LogError::Corrupt(format!("unexpected file `{name}` among the segments"))
            })?;
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// A half-written frame at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset where the damaged tail starts.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "torn tail: {} unfinished byte(s) at byte {} of segment `{}` (never acknowledged; cut when the log is opened)",
            self.len,
            self.offset,
            self.segment.display()
        )
    }
}

/// Where a frame lives, for reading records back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameLoc {
    pub first_index: u64,
    pub count: u32,
    pub segment_first: u64,
    pub offset: u64,
}

/// What a scan found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    pub size: u64,
    pub frames: Vec<FrameLoc>,
    pub torn: Option<TornTail>,
    /// The last segment (first index, path, length up to the end of the last good frame).
    pub last_segment: Option<(u64, PathBuf, u64)>,
}

/// Reads every segment in order, checks framing, checksums and index continuity, and calls
/// `visit` for each good frame. Damage anywhere but a torn tail of the last segment is an error
/// naming the segment, the byte range and the first record index that cannot be trusted.
pub(crate) fn scan(
    dir: &Path,
    visit: &mut dyn FnMut(&Frame<'_>, &Path, u64) -> Result<(), LogError>,
) -> Result<ScanOutcome, LogError> {
    let segments = list_segments(dir)?;
    let mut expected = 0u64;
    let mut frames = Vec::new();
    let mut torn = None;
    let mut last_segment = None;
    let count = segments.len();
    for (i, (named_first, path)) in segments.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let shown = path.display().to_string();
        let bytes = fs::read(&path).map_err(|e| LogError::io(format!("reading `{shown}`"), e))?;
        let first = decode_segment_header(&bytes)
            .map_err(|e| LogError::Corrupt(format!("segment `{shown}`: {e}")))?;
        if first != named_first {
            return Err(LogError::Corrupt(format!(
                "segment `{shown}` holds records from index {first} but its name says {named_first} (renamed or reordered segment)"
            )));
        }
        if first != expected {
            return Err(LogError::Corrupt(format!(
                "segment `{shown}` starts at record {first} but the segments before it end at record {expected} (missing, truncated or reordered segment)"
            )));
        }
        let mut offset = SEGMENT_HEADER_LEN;
        while offset < bytes.len() {
            let rest = bytes.get(offset..).unwrap_or_default();
            match decode_frame(rest) {
                Ok(frame) => {
                    if frame.first_index != expected {
                        return Err(LogError::Corrupt(format!(
                            "frame at byte {offset} of segment `{shown}` starts at record {} but record {expected} was expected (reordered or duplicated frames)",
                            frame.first_index
                        )));
                    }
                    visit(&frame, &path, offset as u64)?;
                    let n = frame.records.len() as u64;
                    frames.push(FrameLoc {
                        first_index: expected,
                        count: frame.records.len() as u32,
                        segment_first: first,
                        offset: offset as u64,
                    });
                    expected += n;
                    offset += frame.encoded_len;
                }
                Err(_) if is_last && rest.iter().all(|b| *b == 0) => {
                    // Space reserved ahead of the frames (zeros): the end of the log.
                    break;
                }
                Err(err) => {
                    let why = match err {
                        FrameError::Incomplete => "the file ends inside it".to_owned(),
                        FrameError::Damaged(why) => why,
                    };
                    let later = count_valid_frames_after(rest);
                    if !is_last || later > 0 {
                        return Err(LogError::Corrupt(format!(
                            "segment `{shown}`: bytes {offset}..{} are damaged ({why}) and {later} intact frame(s) follow{}; records from index {expected} on cannot be trusted",
                            bytes.len(),
                            if is_last {
                                ""
                            } else {
                                " in a segment that is not the last"
                            }
                        )));
                    }
                    torn = Some(TornTail {
                        segment: path.clone(),
                        offset: offset as u64,
                        len: (bytes.len() - offset) as u64,
                    });
                    break;
                }
            }
        }
        if is_last {
            last_segment = Some((first, path.clone(), offset as u64));
        }
    }
    Ok(ScanOutcome {
        size: expected,
        frames,
        torn,
        last_segment,
    })
}

/// How many well-formed frames start somewhere after the first byte of `bytes`: a damaged frame
/// followed by good ones is corruption, not a torn write.
fn count_valid_frames_after(bytes: &[u8]) -> usize {
    let mut n = 0;
    let mut start = 1;
    while let Some(rest) = bytes.get(start..) {
        let Some(pos) = rest.windows(4).position(|w| w == FRAME_MAGIC) else {
            break;
        };
        let at = start + pos;
        match bytes.get(at..).map(decode_frame) {
            Some(Ok(frame)) => {
                n += 1;
                start = at + frame.encoded_len;
            }
            _ => start = at + 1,
        }
    }
    n
}

/// Truncates a torn tail and makes the cut durable.
pub(crate) fn cut_tail(torn: &TornTail) -> Result<(), LogError> {
    let ctx = || format!("cutting the torn tail of `{}`", torn.segment.display());
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&torn.segment)
        .map_err(|e| LogError::io(ctx(), e))?;
    f.set_len(torn.offset).map_err(|e| LogError::io(ctx(), e))?;
    f.sync_all().map_err(|e| LogError::io(ctx(), e))?;
    Ok(())
}

/// fsyncs a directory so a created or renamed file in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    let f =
        fs::File::open(dir).map_err(|e| LogError::io(format!("opening `{}`", dir.display()), e))?;
    f.sync_all()
        .map_err(|e| LogError::io(format!("syncing `{}`", dir.display()), e))
}
