//! Durable storage: group commit, receipts, recovery, damage detection, fail-closed writes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use ed25519_dalek::SigningKey;
use warden_log::{
    Log, LogError, LogOptions, NoteSigner, NoteVerifier, SignedCheckpoint, verify_consistency,
    verify_dir,
};

const ORIGIN: &str = "warden.test/log";

fn signer() -> NoteSigner {
    NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[42; 32])).unwrap()
}

fn verifier() -> NoteVerifier {
    signer().verifier()
}

fn record(i: u64) -> Vec<u8> {
    format!("{{\"decision\":\"allow\",\"id\":\"rec-{i}\",\"tool\":\"srv/echo\",\"type\":\"warden.decision\",\"v\":1}}").into_bytes()
}

fn fill(dir: &Path, n: u64, options: LogOptions) {
    let log = Log::create(dir, signer(), options).unwrap();
    for i in 0..n {
        log.append(record(i)).unwrap();
    }
    log.close().unwrap();
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn concurrent_appends_are_durable_with_verifiable_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = Log::create(dir, signer(), LogOptions::default()).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let w = log.writer();
            std::thread::spawn(move || {
                (0..100u64)
                    .map(|i| {
                        let rec = record(t * 1000 + i);
                        let a = w.append(rec.clone()).unwrap();
                        a.receipt().unwrap().verify(&rec, &verifier()).unwrap();
                        (a.index, rec)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(
        all.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..800).collect::<Vec<_>>()
    );
    assert_eq!(log.size(), 800);
    assert_eq!(log.records(0).unwrap(), all);
    assert_eq!(log.records(790).unwrap().len(), 10);
    // A receipt from the latest checkpoint, and consistency from an older size.
    let r = log.receipt(17).unwrap();
    r.verify(&all[17].1, &verifier()).unwrap();
    let (cp, old_root, proof) = log.consistency_proof(300).unwrap();
    verify_consistency(300, 800, &old_root, &cp.checkpoint().root, &proof).unwrap();
    log.close().unwrap();

    let log = Log::open(dir, signer(), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 800);
    assert_eq!(log.records(0).unwrap(), all);
    assert_eq!(
        log.find_id("rec-3005"),
        Some(all.iter().find(|(_, r)| *r == record(3005)).unwrap().0)
    );
    let next = log.append(record(9999)).unwrap();
    assert_eq!(next.index, 800);
    log.close().unwrap();

    let report = verify_dir(dir, &verifier(), &mut |_, _| {}).unwrap();
    assert_eq!(report.size, 801);
    assert!(report.torn_tail.is_none());
    assert_eq!(report.published, Some(801));
    assert!(report.tiles_checked > 0);
    assert_eq!(report.ids_checked, 801);
}

#[test]
fn oversized_records_are_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::create(tmp.path(), signer(), LogOptions::default()).unwrap();
    let err = log.append(vec![b'x'; 65_536]).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::RecordTooLarge {
                len: 65_536,
                max: 65_535
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("65535"), "{err}");
    assert_eq!(log.append(vec![b'x'; 65_535]).unwrap().index, 0);
}

#[test]
fn a_write_error_stops_the_writer_for_every_caller() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        danger_fail_writes_after: Some(3),
        ..LogOptions::default()
    };
    let log = Log::create(tmp.path(), signer(), options).unwrap();
    for i in 0..3 {
        log.append(record(i)).unwrap();
    }
    let err = log.append(record(3)).unwrap_err();
    assert!(matches!(err, LogError::WriterStopped(_)), "{err}");
    assert!(log.health().is_err());
    // Later callers, from any handle, are refused too; the size did not move.
    let w = log.writer();
    assert!(matches!(
        w.append(record(4)).unwrap_err(),
        LogError::WriterStopped(_)
    ));
    assert!(matches!(
        w.submit(record(5)).unwrap_err(),
        LogError::WriterStopped(_)
    ));
    assert_eq!(log.size(), 3);
    drop(log);
    let log = Log::open(tmp.path(), signer(), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 3);
}

#[test]
fn the_wrong_key_is_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    fill(tmp.path(), 5, LogOptions::default());
    let other = NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[43; 32])).unwrap();
    let err = Log::open(tmp.path(), other, LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Mismatch(_)), "{err}");
}

#[test]
fn a_torn_tail_is_reported_then_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fill(
        dir,
        10,
        LogOptions {
            publish: false,
            ..LogOptions::default()
        },
    );
    let seg = segments(dir).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    // Half a frame: a frame header that promises more bytes than follow.
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(b"WFRM\x00\x00\x01\x00\x12\x34\x56\x78partial");
    fs::write(&seg, &bytes).unwrap();
    let report = verify_dir(dir, &verifier(), &mut |_, _| {}).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!(torn.offset, good_len);
    assert!(torn.to_string().contains("torn tail"), "{torn}");
    let log = Log::open(dir, signer(), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 10);
    log.close().unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    assert!(
        verify_dir(dir, &verifier(), &mut |_, _| {})
            .unwrap()
            .torn_tail
            .is_none()
    );
}

/// An open log reserves segment space ahead (zeros), so a commit's `fdatasync` does not commit
/// a size change; closing gives it back. After a crash the zeros are read as the end of the log,
/// and a frame torn inside them is cut like any torn tail.
#[test]
fn reserved_space_is_the_end_of_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let options = || LogOptions {
        publish: false,
        ..LogOptions::default()
    };
    let log = Log::create(dir, signer(), options()).unwrap();
    for i in 0..5 {
        log.append(record(i)).unwrap();
    }
    let seg = segments(dir).pop().unwrap();
    let open_len = fs::metadata(&seg).unwrap().len();
    // The reserve's zeros are written, not merely allocated: an unwritten extent (what
    // `fallocate` makes) reads as a hole, and writing a frame into it would change metadata.
    let file = fs::File::open(&seg).unwrap();
    let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(0)).unwrap();
    assert_eq!(
        hole, open_len,
        "the reserve has a hole (unwritten space) at {hole} of {open_len} bytes"
    );
    log.close().unwrap();
    let closed_len = fs::metadata(&seg).unwrap().len();
    assert!(
        open_len > closed_len + 512 * 1024,
        "no reserve: {open_len} bytes open, {closed_len} closed"
    );

    // A crash leaves the reserve: zeros after the last frame.
    let mut bytes = fs::read(&seg).unwrap();
    bytes.resize(closed_len as usize + 4096, 0);
    fs::write(&seg, &bytes).unwrap();
    let report = verify_dir(dir, &verifier(), &mut |_, _| {}).unwrap();
    assert_eq!(report.size, 5);
    assert!(report.torn_tail.is_none());
    let log = Log::open(dir, signer(), options()).unwrap();
    assert_eq!(log.size(), 5);
    assert_eq!(log.append(record(5)).unwrap().index, 5);
    log.close().unwrap();
    assert_eq!(
        read_all(dir),
        (0..6).map(record).collect::<Vec<_>>(),
        "the next frame went where the reserve began"
    );

    // A frame torn inside the reserve: a header, part of its payload, then zeros.
    let closed_len = fs::metadata(&seg).unwrap().len() as usize;
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(b"WFRM\x00\x00\x01\x00\x12\x34\x56\x78partial");
    bytes.resize(closed_len + 4096, 0);
    fs::write(&seg, &bytes).unwrap();
    let torn = verify_dir(dir, &verifier(), &mut |_, _| {})
        .unwrap()
        .torn_tail
        .unwrap();
    assert_eq!(torn.offset, closed_len as u64);
    let log = Log::open(dir, signer(), options()).unwrap();
    assert_eq!(log.size(), 6);
    log.close().unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len() as usize, closed_len);
}

/// Zeros at the end of a segment that is not the last are damage, not a reserve: a rotated
/// segment is trimmed before the next one starts.
#[test]
fn zeros_after_a_segment_that_is_not_the_last_are_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = multi_segment(tmp.path());
    let first = segs.first().unwrap();
    let mut bytes = fs::read(first).unwrap();
    bytes.resize(bytes.len() + 4096, 0);
    fs::write(first, &bytes).unwrap();
    let err = verify_dir(tmp.path(), &verifier(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the last"), "{err}");
    assert!(Log::open(tmp.path(), signer(), LogOptions::default()).is_err());
}

fn read_all(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    warden_log::read_records(dir, 0, &mut |_, r| {
        out.push(r.to_vec());
        Ok(())
    })
    .unwrap();
    out
}

fn flip(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_bit_in_the_middle_is_detected_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fill(dir, 10, LogOptions::default());
    let seg = segments(dir).pop().unwrap();
    flip(&seg, 60); // inside the first frame's first record
    let err = verify_dir(dir, &verifier(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("are damaged")
            && err.contains("intact frame(s) follow")
            && err.contains("from index 0"),
        "{err}"
    );
    let err = Log::open(dir, signer(), LogOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("damaged"), "{err}");
}

#[test]
fn a_flipped_bit_in_the_last_frame_is_caught_by_the_published_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fill(dir, 10, LogOptions::default());
    let seg = segments(dir).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len() as usize;
    flip(&seg, len - 80); // inside the last frame's record
    // It looks like an unfinished write, but the published checkpoint proves record 9 was
    // acknowledged: verification and opening both refuse.
    let err = verify_dir(dir, &verifier(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("acknowledged records are missing"), "{err}");
    let err = Log::open(dir, signer(), LogOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("acknowledged records are missing"), "{err}");
}

#[test]
fn an_altered_record_with_a_fixed_checksum_is_caught_by_the_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fill(
        dir,
        3,
        LogOptions {
            publish: false,
            ..LogOptions::default()
        },
    );
    let seg = segments(dir).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // Rewrite "rec-0" to "rec-X" in the first frame and recompute that frame's CRC, as an
    // attacker with write access would.
    let pos = bytes.windows(5).position(|w| w == b"rec-0").unwrap();
    bytes[pos + 4] = b'X';
    let frame = 20usize;
    let len = u32::from_be_bytes(bytes[frame + 4..frame + 8].try_into().unwrap()) as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[frame + 4..frame + 8]);
    h.update(&bytes[frame + 12..frame + 12 + len]);
    bytes[frame + 8..frame + 12].copy_from_slice(&h.finalize().to_be_bytes());
    fs::write(&seg, bytes).unwrap();
    let err = verify_dir(dir, &verifier(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not verify") && err.contains("records 0..1"),
        "{err}"
    );
    assert!(matches!(
        Log::open(dir, signer(), LogOptions::default()).unwrap_err(),
        LogError::Mismatch(_)
    ));
}

fn multi_segment(dir: &Path) -> Vec<PathBuf> {
    // Small segments: each holds a few frames.
    fill(
        dir,
        40,
        LogOptions {
            segment_bytes: 600,
            publish: false,
            ..LogOptions::default()
        },
    );
    let segs = segments(dir);
    assert!(segs.len() >= 4, "{}", segs.len());
    assert!(verify_dir(dir, &verifier(), &mut |_, _| {}).is_ok());
    segs
}

#[test]
fn a_missing_segment_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = multi_segment(tmp.path());
    fs::remove_file(&segs[1]).unwrap();
    let err = verify_dir(tmp.path(), &verifier(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing, truncated or reordered"), "{err}");
    assert!(Log::open(tmp.path(), signer(), LogOptions::default()).is_err());
}

#[test]
fn a_truncated_segment_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = multi_segment(tmp.path());
    let len = fs::metadata(&segs[1]).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segs[1])
        .unwrap()
        .set_len(len - 30)
        .unwrap();
    let err = verify_dir(tmp.path(), &verifier(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the last"), "{err}");
    let name = segs[1].file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name), "{err}");
    assert!(Log::open(tmp.path(), signer(), LogOptions::default()).is_err());
    // Truncated exactly at a frame boundary: the next segment no longer follows on.
    let tmp = tempfile::tempdir().unwrap();
    let segs = multi_segment(tmp.path());
    let bytes = fs::read(&segs[1]).unwrap();
    let first_frame_len = 12 + u32::from_be_bytes(bytes[24..28].try_into().unwrap()) as usize;
    fs::write(&segs[1], &bytes[..20 + first_frame_len]).unwrap();
    let err = verify_dir(tmp.path(), &verifier(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing, truncated or reordered"), "{err}");
}

#[test]
fn reordered_segments_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = multi_segment(tmp.path());
    let a = fs::read(&segs[1]).unwrap();
    let b = fs::read(&segs[2]).unwrap();
    fs::write(&segs[1], b).unwrap();
    fs::write(&segs[2], a).unwrap();
    let err = verify_dir(tmp.path(), &verifier(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("renamed or reordered"), "{err}");
    assert!(Log::open(tmp.path(), signer(), LogOptions::default()).is_err());
}

#[test]
fn a_published_checkpoint_ahead_of_the_segments_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fill(dir, 20, LogOptions::default());
    let published = fs::read(dir.join("tiles/checkpoint")).unwrap();
    // Lose the last frame (as if a disk lied about fsync) while the published head survived.
    let seg = segments(dir).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    let mut off = 20;
    let mut last = off;
    while off < bytes.len() {
        last = off;
        off += 12 + u32::from_be_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
    }
    fs::write(&seg, &bytes[..last]).unwrap();
    let err = Log::open(dir, signer(), LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Mismatch(_)), "{err}");
    assert!(SignedCheckpoint::verify(&published, &verifier()).is_ok());
}

/// A minimal executor: the ticket must wake us from the writer thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn tickets_can_be_awaited() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::create(tmp.path(), signer(), LogOptions::default()).unwrap();
    let w = log.writer();
    let tickets: Vec<_> = (0..50).map(|i| w.submit(record(i)).unwrap()).collect();
    for (i, t) in tickets.into_iter().enumerate() {
        let a = block_on(t).unwrap();
        assert_eq!(a.index, i as u64);
        a.receipt()
            .unwrap()
            .verify(&record(i as u64), &verifier())
            .unwrap();
    }
    // Closing resolves pending and later appends with an error instead of hanging.
    log.close().unwrap();
    assert!(w.append(record(99)).is_err());
}

/// On an idle log the appender commits its own record: durable, with a resolved ticket, before
/// `commit_or_queue` returns (no hand-off to the writer thread).
#[test]
fn an_idle_log_commits_on_the_calling_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::create(tmp.path(), signer(), LogOptions::default()).unwrap();
    let w = log.writer();
    for i in 0..20u64 {
        let ticket = w.commit_or_queue(record(i)).unwrap();
        // Durable already: the checkpoint covers it before anyone waited.
        assert_eq!(log.size(), i + 1);
        let waker = Waker::from(Arc::new(NoWake));
        let mut t = std::pin::pin!(ticket);
        match t.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(a) => {
                a.unwrap()
                    .receipt()
                    .unwrap()
                    .verify(&record(i), &verifier())
                    .unwrap();
            }
            Poll::Pending => panic!("the ticket of an inline commit is not resolved"),
        }
    }
    log.close().unwrap();
    let r = verify_dir(tmp.path(), &verifier(), &mut |_, _| {}).unwrap();
    assert_eq!((r.size, r.frames), (20, 20));
}

struct NoWake;
impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// A record queued for the writer thread is never overtaken by a later inline commit: frames
/// are written in the order records were handed in.
#[test]
fn inline_commits_keep_submission_order() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::create(tmp.path(), signer(), LogOptions::default()).unwrap();
    let w = log.writer();
    for i in 0..100u64 {
        let queued = w.submit(record(2 * i)).unwrap();
        let inline = w.commit_or_queue(record(2 * i + 1)).unwrap();
        let (a, b) = (queued.wait().unwrap(), inline.wait().unwrap());
        assert_eq!((a.index, b.index), (2 * i, 2 * i + 1));
    }
    log.close().unwrap();
    let mut seen = Vec::new();
    warden_log::read_records(tmp.path(), 0, &mut |i, r| {
        assert_eq!(r, record(i).as_slice());
        seen.push(i);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), 200);
}

/// A failed `fdatasync` of a queued (group) commit stops the log as a failed inline one does.
#[test]
fn a_write_error_in_a_group_commit_stops_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        danger_fail_writes_after: Some(2),
        ..LogOptions::default()
    };
    let log = Log::create(tmp.path(), signer(), options).unwrap();
    let w = log.writer();
    for i in 0..2 {
        w.submit(record(i)).unwrap().wait().unwrap();
    }
    // Queued together; the first failed frame stops the writer, so a later `submit` may
    // already be refused: every one of them fails either way.
    let tickets: Vec<_> = (2..7).map(|i| w.submit(record(i))).collect();
    for t in tickets {
        let err = t.and_then(warden_log::Ticket::wait).unwrap_err();
        assert!(matches!(err, LogError::WriterStopped(_)), "{err}");
    }
    assert!(log.health().is_err());
    assert!(matches!(
        w.commit_or_queue(record(11)).unwrap_err(),
        LogError::WriterStopped(_)
    ));
    assert_eq!(log.size(), 2);
    drop(log);
    let log = Log::open(tmp.path(), signer(), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 2);
}

/// The published tiles serve proofs through an independent tile reader.
#[test]
fn published_tiles_verify_with_tlog_tiles() {
    struct DirTiles(PathBuf);
    impl tlog_tiles::TileReader for DirTiles {
        fn height(&self) -> u8 {
            8
        }
        fn read_tiles(
            &self,
            tiles: &[tlog_tiles::Tile],
        ) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
            Ok(tiles
                .iter()
                .map(|t| fs::read(self.0.join(t.path().replacen("tile/8/", "tile/", 1))).unwrap())
                .collect())
        }
        fn save_tiles(&self, _: &[tlog_tiles::Tile], _: &[Vec<u8>]) {}
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = Log::create(dir, signer(), LogOptions::default()).unwrap();
    let w = log.writer();
    let tickets: Vec<_> = (0..700).map(|i| w.submit(record(i)).unwrap()).collect();
    for t in tickets {
        t.wait().unwrap();
    }
    log.close().unwrap();
    let note = fs::read(dir.join("tiles/checkpoint")).unwrap();
    let cp = SignedCheckpoint::verify(&note, &verifier()).unwrap();
    let cp = cp.checkpoint();
    assert_eq!(cp.size, 700);
    let tiles = DirTiles(dir.join("tiles"));
    let reader = tlog_tiles::TileHashReader::new(cp.size, tlog_tiles::Hash(cp.root.0), &tiles);
    for i in [0u64, 1, 255, 256, 511, 600, 699] {
        let proof = tlog_tiles::prove_record(cp.size, i, &reader).unwrap();
        tlog_tiles::check_record(
            &proof,
            cp.size,
            tlog_tiles::Hash(cp.root.0),
            i,
            tlog_tiles::record_hash(&record(i)),
        )
        .unwrap();
    }
    // Entry bundles hold the records.
    let bundle = fs::read(dir.join("tiles/tile/entries/002.p/188")).unwrap();
    let entries = warden_log::tiles::parse_bundle(&bundle).unwrap();
    assert_eq!(entries[0], record(512).as_slice());
}

#[test]
fn a_log_has_one_writer_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::create(tmp.path(), signer(), LogOptions::default()).unwrap();
    let err = Log::open(tmp.path(), signer(), LogOptions::default()).unwrap_err();
    assert!(err.to_string().contains("open in another process"), "{err}");
    log.close().unwrap();
    Log::open(tmp.path(), signer(), LogOptions::default()).unwrap();
}

#[test]
fn key_files_are_private_and_checked() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut calls = 0;
    let mut entropy = |buf: &mut [u8]| {
        calls += 1;
        buf.fill(9);
        Ok(())
    };
    let log = Log::open_or_create(dir, ORIGIN, &mut entropy, LogOptions::default()).unwrap();
    log.append(record(0)).unwrap();
    let vkey = log.verifier().clone();
    log.close().unwrap();
    let key = dir.join(warden_log::SIGNING_KEY_FILE);
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        warden_log::load_verifier(&dir.join(warden_log::PUBLIC_KEY_FILE)).unwrap(),
        vkey
    );
    // Reopening reuses the key (no new randomness).
    let mut no_entropy =
        |_: &mut [u8]| -> Result<(), LogError> { panic!("a new key was generated") };
    Log::open_or_create(dir, ORIGIN, &mut no_entropy, LogOptions::default())
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(calls, 1);
    // Another origin, or a key readable by others, is refused.
    assert!(
        Log::open_or_create(
            dir,
            "other.example/log",
            &mut no_entropy,
            LogOptions::default()
        )
        .is_err()
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Log::open_or_create(dir, ORIGIN, &mut no_entropy, LogOptions::default()).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn handles_can_cross_threads_and_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Log>();
    send_sync::<warden_log::LogWriter>();
    send::<warden_log::Ticket>();
    send_sync::<warden_log::Appended>();
}

fn append_concurrently(dir: &Path, options: LogOptions, threads: u64, each: u64) {
    let log = Log::create(dir, signer(), options).unwrap();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let w = log.writer();
            std::thread::spawn(move || {
                for i in 0..each {
                    w.append(record(t * 1000 + i)).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    log.close().unwrap();
}

#[test]
fn concurrent_appends_share_frames_unless_batching_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    let grouped = LogOptions {
        batch_wait: std::time::Duration::from_millis(2),
        publish: false,
        ..LogOptions::default()
    };
    append_concurrently(tmp.path(), grouped, 16, 10);
    let r = verify_dir(tmp.path(), &verifier(), &mut |_, _| {}).unwrap();
    assert_eq!(r.size, 160);
    assert!(r.frames < 80, "{} frames for 160 records", r.frames);

    let tmp = tempfile::tempdir().unwrap();
    let one_by_one = LogOptions {
        max_batch: 1,
        publish: false,
        ..LogOptions::default()
    };
    append_concurrently(tmp.path(), one_by_one, 4, 10);
    let r = verify_dir(tmp.path(), &verifier(), &mut |_, _| {}).unwrap();
    assert_eq!((r.size, r.frames), (40, 40));
}

/// Waits up to `limit` for record `id` to be published (indexed); how long it took, if it was.
fn published_within(
    log: &Log,
    id: &str,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if log.find_id(id).is_some() {
            return Some(start.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}

/// An idle log publishes a commit at once; commits made less than the interval after a
/// publication wait for the interval's end and go together, without another commit or a close
/// to wake the publisher; after an idle interval the next commit is published at once again.
#[test]
fn publication_is_immediate_when_idle_and_coalesced_otherwise() {
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let interval = Duration::from_secs(2);
    let log = Log::create(
        tmp.path(),
        signer(),
        LogOptions {
            publish_interval: interval,
            ..LogOptions::default()
        },
    )
    .unwrap();
    log.append(record(0)).unwrap();
    assert!(
        published_within(&log, "rec-0", Duration::from_millis(1500)).is_some(),
        "an idle log's commit was not published at once"
    );
    log.append(record(1)).unwrap();
    log.append(record(2)).unwrap();
    assert!(
        published_within(&log, "rec-1", Duration::from_millis(500)).is_none(),
        "a commit right after a publication was published before the interval"
    );
    assert!(
        published_within(&log, "rec-2", Duration::from_secs(5)).is_some(),
        "commits within the interval were never published"
    );
    assert!(log.find_id("rec-1").is_some());
    std::thread::sleep(interval + Duration::from_millis(200));
    log.append(record(3)).unwrap();
    assert!(
        published_within(&log, "rec-3", Duration::from_millis(1500)).is_some(),
        "a commit after an idle interval was not published at once"
    );
    log.append(record(4)).unwrap();
    log.close().unwrap();
    let published = fs::read_to_string(tmp.path().join("tiles/checkpoint")).unwrap();
    assert_eq!(
        published.lines().nth(1),
        Some("5"),
        "close publishes what is pending: {published}"
    );
}

/// A verifier that read a published checkpoint just before the publisher superseded it finds
/// that checkpoint's partial tiles deleted (as `tlog-tiles` allows) and reads the full or wider
/// tiles in their place; a wider tile whose prefix differs still fails.
#[test]
fn a_superseded_checkpoint_verifies_from_the_wider_tiles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fill(dir, 300, LogOptions::default());
    let old = fs::read(dir.join("tiles/checkpoint")).unwrap();
    let log = Log::open(dir, signer(), LogOptions::default()).unwrap();
    for i in 300..512 {
        log.append(record(i)).unwrap();
    }
    log.close().unwrap();
    for gone in ["tile/0/001.p/44", "tile/1/000.p/1", "tile/entries/001.p/44"] {
        assert!(!dir.join("tiles").join(gone).exists(), "{gone} was kept");
    }
    fs::write(dir.join("tiles/checkpoint"), &old).unwrap();
    let report = verify_dir(dir, &verifier(), &mut |_, _| {}).unwrap();
    assert_eq!(report.size, 512);

    // The full tile standing in for `001.p/44` must start with that partial tile's hashes.
    flip(&dir.join("tiles/tile/0/001"), 5);
    let err = verify_dir(dir, &verifier(), &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("tile/0/001.p/44"), "{err}");
}
