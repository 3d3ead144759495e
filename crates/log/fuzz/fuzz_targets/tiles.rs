//! Tile path, tile and entry bundle decoding never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data)
        && let Ok(id) = warden_log::tiles::TileId::parse(path)
    {
        assert_eq!(id.path(), path);
    }
    let _ = warden_log::tiles::parse_tile(data);
    let _ = warden_log::tiles::parse_bundle(data);
});
