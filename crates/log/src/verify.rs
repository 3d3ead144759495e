//! Offline checks of a log directory (`warden log verify`) and rebuilding its derived files.

use std::fs;
use std::path::Path;

use crate::LogError;
use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::hash::Hash;
use crate::note::{NoteVerifier, assemble};
use crate::proof::verify_consistency;
use crate::segment::{self, TornTail, list_segments};
use crate::store::record_id;
use crate::tiles::{TILE_WIDTH, TileId, TileWriter, parse_bundle, tile_data, tiles_for_size};
use crate::tree::MerkleTree;

/// What [`verify_dir`] checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Number of records.
    pub size: u64,
    /// Root at that size.
    pub root: Hash,
    /// Frames (group commits), each with a verified checkpoint signature.
    pub frames: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes of record data.
    pub record_bytes: u64,
    /// Bytes of segment files.
    pub segment_bytes: u64,
    /// A half-written tail (not an error: it was never acknowledged).
    pub torn_tail: Option<TornTail>,
    /// Size of the published `tiles/checkpoint`, if any.
    pub published: Option<u64>,
    /// Tiles and entry bundles compared with the recomputed tree.
    pub tiles_checked: usize,
    /// Lines of the id index checked.
    pub ids_checked: usize,
}

/// Reads tile (or entry bundle) `id` under `root`. A partial tile the publisher has superseded
/// since the checkpoint was read is deleted, as `tlog-tiles` allows; as the spec tells clients,
/// the full tile (or a wider partial one) is read instead: it starts with the same contents.
/// Returns the contents and whether they are `id`'s own (else the caller checks the prefix).
fn read_tile(root: &Path, id: &TileId, what: &str) -> Result<(Vec<u8>, bool), LogError> {
    let err = |e| LogError::io(format!("{what} `{}`", id.path()), e);
    match fs::read(root.join(id.path())) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && u64::from(id.width) < TILE_WIDTH => {
            let wider = (id.width + 1..=u16::try_from(TILE_WIDTH).unwrap_or(u16::MAX)).rev();
            for width in wider {
                let path = root.join(TileId { width, ..*id }.path());
                if let Ok(data) = fs::read(path) {
                    return Ok((data, false));
                }
            }
            Err(err(e))
        }
        other => other.map(|data| (data, true)).map_err(err),
    }
}

/// Reads every record, recomputes the tree, checks every frame's checkpoint signature with
/// `verifier` and its consistency with the previous checkpoint, then the published checkpoint,
/// the tiles, the entry bundles and the id index. `progress(done_bytes, total_bytes)` is called
/// as segments are read.
pub fn verify_dir(
    dir: &Path,
    verifier: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, LogError> {
    let segments = list_segments(dir)?;
    let total: u64 = segments
        .iter()
        .filter_map(|(_, p)| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let origin = verifier.name().to_owned();
    let mut tree = MerkleTree::new();
    let mut prev: (u64, Hash) = (0, Hash::empty_root());
    let mut frames = 0u64;
    let mut record_bytes = 0u64;
    let mut done_before = 0u64;
    let mut current_segment = std::path::PathBuf::new();
    let mut ids_with_id = 0usize;
    let outcome = segment::scan(dir, &mut |frame, path, offset| {
        if path != current_segment {
            if !current_segment.as_os_str().is_empty() {
                done_before += fs::metadata(&current_segment).map(|m| m.len()).unwrap_or(0);
            }
            current_segment = path.to_owned();
        }
        for r in &frame.records {
            tree.push(Hash::leaf(r));
            record_bytes += r.len() as u64;
            if record_id(r).is_some() {
                ids_with_id += 1;
            }
        }
        let size = tree.size();
        let root = tree.root(size)?;
        let text = Checkpoint::new(&origin, size, root).to_text();
        let note = assemble(&text, &origin, frame.signature);
        let where_ = || {
            format!(
                "frame at byte {offset} of segment `{}` (records {}..{size})",
                path.display(),
                frame.first_index
            )
        };
        verifier.verify(&note).map_err(|e| {
            LogError::Corrupt(format!("{}: its checkpoint does not verify against the records ({e}); records were altered or signed by another key", where_()))
        })?;
        let proof = tree.consistency_proof(prev.0, size)?;
        verify_consistency(prev.0, size, &prev.1, &root, &proof).map_err(|e| {
            LogError::Corrupt(format!(
                "{}: not consistent with the previous checkpoint ({e})",
                where_()
            ))
        })?;
        prev = (size, root);
        frames += 1;
        progress(done_before + offset, total);
        Ok(())
    })?;
    progress(total, total);
    let size = outcome.size;
    let root = tree.root(size)?;

    let tiles_root = dir.join("tiles");
    let mut published = None;
    let mut tiles_checked = 0;
    if let Ok(note) = fs::read(tiles_root.join("checkpoint")) {
        let signed = SignedCheckpoint::verify(&note, verifier)
            .map_err(|e| LogError::Corrupt(format!("published checkpoint: {e}")))?;
        let cp = signed.checkpoint();
        if cp.size > size {
            return Err(LogError::Corrupt(format!(
                "published checkpoint has size {} but the segments hold only {size} records: acknowledged records are missing",
                cp.size
            )));
        }
        if tree.root(cp.size)? != cp.root {
            return Err(LogError::Corrupt(format!(
                "published checkpoint root at size {} differs from the records",
                cp.size
            )));
        }
        published = Some(cp.size);
        for id in tiles_for_size(cp.size) {
            let (data, own) = read_tile(&tiles_root, &id, "tile")?;
            let want = tile_data(&tree, &id)?;
            let seen = if own {
                Some(data.as_slice())
            } else {
                data.get(..want.len())
            };
            if seen != Some(want.as_slice()) {
                return Err(LogError::Corrupt(format!(
                    "tile `{}` does not match the recomputed tree",
                    id.path()
                )));
            }
            tiles_checked += 1;
        }
        let bundles = cp.size.div_ceil(TILE_WIDTH);
        for n in 0..bundles {
            let width = (cp.size - n * TILE_WIDTH).min(TILE_WIDTH) as u16;
            let id = TileId {
                level: None,
                index: n,
                width,
            };
            let (data, own) = read_tile(&tiles_root, &id, "entry bundle")?;
            let mut entries = parse_bundle(&data)
                .map_err(|e| LogError::Corrupt(format!("entry bundle `{}`: {e}", id.path())))?;
            // A wider bundle read in place of a superseded partial one starts with its entries.
            if !own && entries.len() > usize::from(width) {
                entries.truncate(usize::from(width));
            }
            if entries.len() != usize::from(width) {
                return Err(LogError::Corrupt(format!(
                    "entry bundle `{}` has {} entries",
                    id.path(),
                    entries.len()
                )));
            }
            for (i, e) in entries.iter().enumerate() {
                if Hash::leaf(e) != tree.leaf(n * TILE_WIDTH + i as u64)? {
                    return Err(LogError::Corrupt(format!(
                        "entry bundle `{}`: entry {} differs from record {}",
                        id.path(),
                        i,
                        n * TILE_WIDTH + i as u64
                    )));
                }
            }
            tiles_checked += 1;
        }
    }

    let mut ids_checked = 0;
    if let Ok(text) = fs::read_to_string(dir.join("index").join("ids")) {
        for (n, line) in text.lines().enumerate() {
            let bad =
                || LogError::Corrupt(format!("id index line {}: `{line}` is malformed", n + 1));
            let (id, index) = line.rsplit_once(' ').ok_or_else(bad)?;
            serde_json::from_str::<String>(id).map_err(|_| bad())?;
            let index: u64 = index.parse().map_err(|_| bad())?;
            if index >= size {
                return Err(LogError::Corrupt(format!(
                    "id index line {} points at record {index}, past the end",
                    n + 1
                )));
            }
            ids_checked += 1;
        }
        if ids_checked > ids_with_id {
            return Err(LogError::Corrupt(format!(
                "id index has {ids_checked} entries but only {ids_with_id} records carry an id"
            )));
        }
    }
    Ok(VerifyReport {
        size,
        root,
        frames,
        segments: segments.len(),
        record_bytes,
        segment_bytes: total,
        torn_tail: outcome.torn,
        published,
        tiles_checked,
        ids_checked,
    })
}

/// Deletes and rewrites `DIR/tiles` and `DIR/index` from the segments (the log must not be
/// open). The last stored checkpoint signature is verified with `verifier` before anything is
/// published. Returns the size.
pub fn rebuild_derived(
    dir: &Path,
    verifier: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, LogError> {
    let origin = verifier.name().to_owned();
    let segments = list_segments(dir)?;
    let total: u64 = segments
        .iter()
        .filter_map(|(_, p)| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let tiles_root = dir.join("tiles");
    let tmp_root = dir.join("tiles.rebuild");
    let _ = fs::remove_dir_all(&tmp_root);
    let mut tree = MerkleTree::new();
    let mut writer = TileWriter::new(tmp_root.clone(), 0, Vec::new());
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut ids = String::new();
    let mut last_sig = Vec::new();
    let mut err: Option<LogError> = None;
    let mut seen = 0u64;
    segment::scan(dir, &mut |frame, _, offset| {
        for r in &frame.records {
            if let Some(id) = record_id(r) {
                ids.push_str(&serde_json::Value::String(id).to_string());
                ids.push(' ');
                ids.push_str(&tree.size().to_string());
                ids.push('\n');
            }
            tree.push(Hash::leaf(r));
            pending.push(r.to_vec());
        }
        last_sig = frame.signature.to_vec();
        if pending.len() >= 64 * 1024 {
            let size = tree.size();
            if let Err(e) = writer.publish(
                &|id| tile_data(&tree, id),
                std::mem::take(&mut pending),
                size,
                None,
            ) {
                err = Some(e);
            }
        }
        seen = offset;
        progress(seen.min(total), total);
        Ok(())
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    let size = tree.size();
    let root = tree.root(size)?;
    let text = Checkpoint::new(&origin, size, root).to_text();
    let note = assemble(&text, &origin, &last_sig);
    if size > 0 {
        verifier.verify(&note).map_err(|e| {
            LogError::Mismatch(format!(
                "the last stored checkpoint does not verify ({e}); not publishing"
            ))
        })?;
        writer.publish(&|id| tile_data(&tree, id), pending, size, Some(&note))?;
    }
    let _ = fs::remove_dir_all(&tiles_root);
    if size > 0 {
        fs::rename(&tmp_root, &tiles_root)
            .map_err(|e| LogError::io("moving the rebuilt tiles in place", e))?;
    }
    crate::tiles::write_atomic(&dir.join("index").join("ids"), ids.as_bytes())?;
    progress(total, total);
    Ok(size)
}

/// A read-only view of a closed (or running) log directory: the recomputed tree and the last
/// stored checkpoint, whose signature is checked. Serves receipts and consistency proofs
/// without opening the log for writing.
#[derive(Debug)]
pub struct Snapshot {
    tree: MerkleTree,
    checkpoint: SignedCheckpoint,
}

impl Snapshot {
    /// Reads `dir` and checks its last stored checkpoint against `verifier`.
    pub fn load(dir: &Path, verifier: &NoteVerifier) -> Result<Self, LogError> {
        let origin = verifier.name().to_owned();
        let mut tree = MerkleTree::new();
        let mut last_sig = Vec::new();
        segment::scan(dir, &mut |frame, _, _| {
            for r in &frame.records {
                tree.push(Hash::leaf(r));
            }
            last_sig = frame.signature.to_vec();
            Ok(())
        })?;
        let size = tree.size();
        if size == 0 {
            return Err(LogError::Mismatch(format!(
                "log `{}` is empty",
                dir.display()
            )));
        }
        let cp = Checkpoint::new(&origin, size, tree.root(size)?);
        let note = assemble(&cp.to_text(), &origin, &last_sig);
        let checkpoint = SignedCheckpoint::verify(&note, verifier).map_err(|e| {
            LogError::Mismatch(format!("the last stored checkpoint does not verify: {e}"))
        })?;
        Ok(Self { tree, checkpoint })
    }

    /// The last stored checkpoint.
    pub fn checkpoint(&self) -> &SignedCheckpoint {
        &self.checkpoint
    }

    /// A receipt for record `index` against that checkpoint.
    pub fn receipt(&self, index: u64) -> Result<crate::Receipt, LogError> {
        let size = self.checkpoint.checkpoint().size;
        Ok(crate::Receipt {
            extra: None,
            index,
            proof: self.tree.inclusion_proof(index, size)?,
            checkpoint: self.checkpoint.note().to_vec(),
        })
    }

    /// The root at `old_size` and the consistency proof from it to the checkpoint.
    pub fn consistency(&self, old_size: u64) -> Result<(Hash, Vec<Hash>), LogError> {
        let size = self.checkpoint.checkpoint().size;
        if old_size > size {
            return Err(LogError::SizeOutOfRange {
                size: old_size,
                current: size,
            });
        }
        Ok((
            self.tree.root(old_size)?,
            self.tree.consistency_proof(old_size, size)?,
        ))
    }
}
