//! The static C2SP `tlog-tiles` layout: `checkpoint`, `tile/<L>/<N>[.p/<W>]` and
//! `tile/entries/<N>[.p/<W>]`, with tiles of height 8 (256 hashes, 8,192 bytes when full).
//!
//! The directory `DIR/tiles` can be served as-is by any static web server.

use std::fs;
use std::path::{Path, PathBuf};

use crate::LogError;
use crate::hash::Hash;
use crate::segment::MAX_RECORD_LEN;
use crate::tree::MerkleTree;

/// Hashes per full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tile height in tree levels.
pub const TILE_HEIGHT: u32 = 8;

/// Which tile a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileId {
    /// `None` for an entry bundle, else the tile level.
    pub level: Option<u8>,
    /// Index within the level.
    pub index: u64,
    /// Width: 256 for a full tile, 1..=255 for a partial one.
    pub width: u16,
}

impl TileId {
    /// The path relative to the log prefix, e.g. `tile/0/x001/234.p/7`.
    pub fn path(&self) -> String {
        let level = self
            .level
            .map_or_else(|| "entries".to_owned(), |l| l.to_string());
        let mut s = format!("tile/{level}/{}", encode_index(self.index));
        if u64::from(self.width) != TILE_WIDTH {
            s.push_str(&format!(".p/{}", self.width));
        }
        s
    }

    /// Parses a canonical tile or entry bundle path.
    pub fn parse(path: &str) -> Result<Self, LogError> {
        let bad = || LogError::Malformed(format!("`{path}` is not a tlog-tiles path"));
        let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
        let (level_str, rest) = rest.split_once('/').ok_or_else(bad)?;
        let level = if level_str == "entries" {
            None
        } else {
            let l = crate::checkpoint::parse_decimal(level_str).ok_or_else(bad)?;
            Some(u8::try_from(l).ok().filter(|l| *l <= 63).ok_or_else(bad)?)
        };
        let (index_str, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                let w = crate::checkpoint::parse_decimal(w).ok_or_else(bad)?;
                let w = u16::try_from(w)
                    .ok()
                    .filter(|w| (1..=255).contains(w))
                    .ok_or_else(bad)?;
                (i, w)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let mut index: u64 = 0;
        let groups: Vec<&str> = index_str.split('/').collect();
        let last = groups.len().saturating_sub(1);
        for (i, g) in groups.iter().enumerate() {
            let digits = if i < last {
                g.strip_prefix('x').ok_or_else(bad)?
            } else {
                g
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let d: u64 = digits.parse().map_err(|_| bad())?;
            index = index
                .checked_mul(1000)
                .and_then(|v| v.checked_add(d))
                .ok_or_else(bad)?;
        }
        let id = Self {
            level,
            index,
            width,
        };
        if id.path() != path {
            return Err(bad());
        }
        Ok(id)
    }
}

/// `1234067` → `x001/x234/067`.
pub fn encode_index(mut n: u64) -> String {
    let mut s = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        s = format!("x{:03}/{s}", n % 1000);
    }
    s
}

/// Every hash tile a tree of `size` leaves is served with (full ones and the partial ones).
pub fn tiles_for_size(size: u64) -> Vec<TileId> {
    let mut out = Vec::new();
    let mut level = 0u32;
    while level <= 63 && (size >> (TILE_HEIGHT * level)) > 0 {
        let at_level = size >> (TILE_HEIGHT * level);
        for n in 0..at_level / TILE_WIDTH {
            out.push(TileId {
                level: Some(level as u8),
                index: n,
                width: TILE_WIDTH as u16,
            });
        }
        let w = at_level % TILE_WIDTH;
        if w > 0 {
            out.push(TileId {
                level: Some(level as u8),
                index: at_level / TILE_WIDTH,
                width: w as u16,
            });
        }
        level += 1;
    }
    out
}

/// The tiles that appear when the tree grows from `old` to `new` leaves: full tiles completed in
/// between, and the partial tiles of `new`.
pub fn new_tiles(old: u64, new: u64) -> Vec<TileId> {
    let mut out = Vec::new();
    let mut level = 0u32;
    while level <= 63 && (new >> (TILE_HEIGHT * level)) > 0 {
        let old_at = old >> (TILE_HEIGHT * level);
        let new_at = new >> (TILE_HEIGHT * level);
        for n in old_at / TILE_WIDTH..new_at / TILE_WIDTH {
            out.push(TileId {
                level: Some(level as u8),
                index: n,
                width: TILE_WIDTH as u16,
            });
        }
        let w = new_at % TILE_WIDTH;
        if w > 0 && (new_at != old_at) {
            out.push(TileId {
                level: Some(level as u8),
                index: new_at / TILE_WIDTH,
                width: w as u16,
            });
        }
        level += 1;
    }
    out
}

/// The contents of hash tile `id` (the tree must be large enough).
pub fn tile_data(tree: &MerkleTree, id: &TileId) -> Result<Vec<u8>, LogError> {
    let level = u32::from(id.level.unwrap_or(0)) * TILE_HEIGHT;
    let start = id.index * TILE_WIDTH;
    let hashes = tree.stored_range(level, start, u64::from(id.width))?;
    let mut out = Vec::with_capacity(hashes.len() * 32);
    for h in hashes {
        out.extend_from_slice(&h.0);
    }
    Ok(out)
}

/// Splits tile bytes into hashes.
pub fn parse_tile(data: &[u8]) -> Result<Vec<Hash>, LogError> {
    if data.is_empty() || !data.len().is_multiple_of(32) || data.len() > 32 * TILE_WIDTH as usize {
        return Err(LogError::Malformed(format!(
            "tile of {} bytes is not 1..=256 hashes",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            Hash(h)
        })
        .collect())
}

/// An entry bundle: each entry prefixed with its big-endian `u16` length.
pub fn encode_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).map_err(|_| LogError::RecordTooLarge {
            len: e.len(),
            max: MAX_RECORD_LEN,
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Splits an entry bundle into its entries.
pub fn parse_bundle(data: &[u8]) -> Result<Vec<&[u8]>, LogError> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            return Err(LogError::Malformed(
                "entry bundle ends inside a length prefix".into(),
            ));
        };
        let len = u16::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(LogError::Malformed(
                "entry bundle ends inside an entry".into(),
            ));
        }
        let (entry, tail) = tail.split_at(len);
        out.push(entry);
        rest = tail;
        if out.len() > TILE_WIDTH as usize {
            return Err(LogError::Malformed(
                "entry bundle has more than 256 entries".into(),
            ));
        }
    }
    Ok(out)
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see half a file.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), LogError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| LogError::io(format!("creating `{}`", parent.display()), e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, data).map_err(|e| LogError::io(format!("writing `{}`", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| LogError::io(format!("renaming `{}`", tmp.display()), e))
}

/// Writes the tiles and bundles of a growing tree under `root` (the `tiles` directory).
#[derive(Debug)]
pub(crate) struct TileWriter {
    root: PathBuf,
    published: u64,
    /// Records of the current, not yet full, entry bundle.
    pending: Vec<Vec<u8>>,
}

impl TileWriter {
    /// `published` is the size the files already reflect; `pending` the records from
    /// `published - published % 256` to `published`.
    pub(crate) fn new(root: PathBuf, published: u64, pending: Vec<Vec<u8>>) -> Self {
        Self {
            root,
            published,
            pending,
        }
    }

    pub(crate) fn published(&self) -> u64 {
        self.published
    }

    /// Publishes `records` (the entries `published..published + records.len()`), the hash tiles
    /// of `tree` for the new size, then the checkpoint note, then deletes superseded partials.
    pub(crate) fn publish(
        &mut self,
        tile_source: &dyn Fn(&TileId) -> Result<Vec<u8>, LogError>,
        records: impl IntoIterator<Item = Vec<u8>>,
        new_size: u64,
        checkpoint_note: Option<&[u8]>,
    ) -> Result<(), LogError> {
        let old = self.published;
        let mut bundle_index = old / TILE_WIDTH;
        for r in records {
            self.pending.push(r);
            if self.pending.len() as u64 == TILE_WIDTH {
                let id = TileId {
                    level: None,
                    index: bundle_index,
                    width: TILE_WIDTH as u16,
                };
                write_atomic(
                    &self.root.join(id.path()),
                    &encode_bundle(self.pending.iter().map(Vec::as_slice))?,
                )?;
                self.pending.clear();
                bundle_index += 1;
            }
        }
        if bundle_index * TILE_WIDTH + self.pending.len() as u64 != new_size {
            return Err(LogError::Corrupt(
                "tile writer fell out of step with the log".into(),
            ));
        }
        if !self.pending.is_empty() && new_size != old {
            let id = TileId {
                level: None,
                index: bundle_index,
                width: self.pending.len() as u16,
            };
            write_atomic(
                &self.root.join(id.path()),
                &encode_bundle(self.pending.iter().map(Vec::as_slice))?,
            )?;
        }
        for id in new_tiles(old, new_size) {
            write_atomic(&self.root.join(id.path()), &tile_source(&id)?)?;
        }
        if let Some(note) = checkpoint_note {
            write_atomic(&self.root.join("checkpoint"), note)?;
        }
        self.remove_stale_partials(old, new_size);
        self.published = new_size;
        Ok(())
    }

    /// Deletes the partial tiles and bundle of size `old` that size `new` does not use (the spec
    /// lets a log delete them once the full ones exist or a later size is published).
    pub(crate) fn remove_stale_partials(&self, old: u64, new: u64) {
        let keep: Vec<String> = partials(new).iter().map(TileId::path).collect();
        for id in partials(old) {
            let p = id.path();
            if !keep.contains(&p) {
                let _ = fs::remove_file(self.root.join(p));
            }
        }
    }
}

/// The partial tiles and the partial bundle of a size.
fn partials(size: u64) -> Vec<TileId> {
    let mut out: Vec<TileId> = tiles_for_size(size)
        .into_iter()
        .filter(|t| u64::from(t.width) != TILE_WIDTH)
        .collect();
    if !size.is_multiple_of(TILE_WIDTH) {
        out.push(TileId {
            level: None,
            index: size / TILE_WIDTH,
            width: (size % TILE_WIDTH) as u16,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_encoding_matches_the_spec_example() {
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(encode_index(0), "000");
        assert_eq!(encode_index(999), "999");
        assert_eq!(encode_index(1000), "x001/000");
    }

    #[test]
    fn paths_round_trip_and_reject_non_canonical() {
        for id in [
            TileId {
                level: Some(0),
                index: 1234067,
                width: 256,
            },
            TileId {
                level: Some(2),
                index: 0,
                width: 1,
            },
            TileId {
                level: None,
                index: 5,
                width: 17,
            },
        ] {
            assert_eq!(TileId::parse(&id.path()).unwrap(), id);
        }
        for bad in [
            "tile/0/1",
            "tile/0/x000/001",
            "tile/00/001",
            "tile/64/001",
            "tile/0/001.p/256",
            "tile/0/001.p/0",
            "tile/0/001.p/07",
            "tile/entries/001/002",
        ] {
            assert!(TileId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn size_70000_has_the_tiles_the_spec_lists() {
        let t = tiles_for_size(70_000);
        let full0 = t
            .iter()
            .filter(|t| t.level == Some(0) && t.width == 256)
            .count();
        assert_eq!(full0, 273);
        assert!(t.contains(&TileId {
            level: Some(0),
            index: 273,
            width: 112
        }));
        assert!(t.contains(&TileId {
            level: Some(1),
            index: 0,
            width: 256
        }));
        assert!(t.contains(&TileId {
            level: Some(1),
            index: 1,
            width: 17
        }));
        assert!(t.contains(&TileId {
            level: Some(2),
            index: 0,
            width: 1
        }));
        assert_eq!(t.len(), 273 + 1 + 1 + 1 + 1);
        let t = tiles_for_size(256);
        assert_eq!(
            t,
            vec![
                TileId {
                    level: Some(0),
                    index: 0,
                    width: 256
                },
                TileId {
                    level: Some(1),
                    index: 0,
                    width: 1
                }
            ]
        );
    }

    #[test]
    fn bundles_round_trip_and_reject_truncation() {
        let b = encode_bundle([b"a".as_slice(), b"", b"xyz"]).unwrap();
        assert_eq!(
            parse_bundle(&b).unwrap(),
            vec![b"a".as_slice(), b"", b"xyz"]
        );
        assert!(parse_bundle(&b[..b.len() - 1]).is_err());
        assert!(parse_bundle(&[0]).is_err());
        assert!(encode_bundle([vec![0u8; 65536].as_slice()]).is_err());
    }
}
