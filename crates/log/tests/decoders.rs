//! Every decoder returns an error value on any input (never panics), and a single flipped bit in
//! a signed or checksummed encoding is never accepted as the original.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use warden_log::tiles::{TileId, parse_bundle, parse_tile};
use warden_log::{
    Checkpoint, ExportFormat, Hash, MerkleTree, NoteSigner, NoteVerifier, Receipt, SignedNote,
    decode_frame, decode_segment_header, export_line, summary_line,
};

fn signer() -> NoteSigner {
    NoteSigner::new("fuzz.example/log", SigningKey::from_bytes(&[3; 32])).unwrap()
}

fn valid_receipt() -> (Vec<u8>, Vec<u8>) {
    let entries: Vec<Vec<u8>> = (0..21u8).map(|i| vec![i; 5]).collect();
    let mut t = MerkleTree::new();
    for e in &entries {
        t.push(Hash::leaf(e));
    }
    let note = signer()
        .sign(&Checkpoint::new("fuzz.example/log", 21, t.root(21).unwrap()).to_text())
        .unwrap();
    let r = Receipt {
        extra: Some(b"x".to_vec()),
        index: 9,
        proof: t.inclusion_proof(9, 21).unwrap(),
        checkpoint: note,
    };
    (r.encode(), entries[9].clone())
}

/// A real segment written to disk once (one frame holding one record).
fn real_segment() -> &'static [u8] {
    static SEG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SEG.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let options = warden_log::LogOptions {
            publish: false,
            ..Default::default()
        };
        let log = warden_log::Log::create(tmp.path(), signer(), options).unwrap();
        log.append(b"{\"id\":\"a\"}".to_vec()).unwrap();
        log.close().unwrap();
        std::fs::read(tmp.path().join("segments/00000000000000000000.seg")).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedNote::parse(&data);
        let _ = Receipt::parse(&data);
        let _ = decode_frame(&data);
        let _ = decode_segment_header(&data);
        let _ = parse_bundle(&data);
        let _ = parse_tile(&data);
        let _ = export_line(ExportFormat::Ocsf, 1, &data);
        let _ = export_line(ExportFormat::Cef, 1, &data);
        let _ = summary_line(1, &data);
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = Checkpoint::parse_text(s);
            let _ = NoteVerifier::parse(s);
            let _ = NoteSigner::from_key_string(s);
            let _ = TileId::parse(s);
        }
    }

    #[test]
    fn text_decoders_never_panic(s in "[a-z0-9+/=\\n .x\u{2014}-]{0,300}") {
        let _ = Checkpoint::parse_text(&s);
        let _ = SignedNote::parse(s.as_bytes());
        let _ = Receipt::parse(s.as_bytes());
        let _ = TileId::parse(&s);
        let _ = NoteVerifier::parse(&s);
    }

    #[test]
    fn a_flipped_bit_in_a_receipt_never_verifies_as_the_original(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut bytes, entry) = valid_receipt();
        let original = Receipt::parse(&bytes).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(r) = Receipt::parse(&bytes)
            && r.verify(&entry, &signer().verifier()).is_ok()
        {
                // Only the unauthenticated extra data may differ.
                prop_assert_eq!(r.index, original.index);
                prop_assert_eq!(&r.proof, &original.proof);
                prop_assert_eq!(&r.checkpoint, &original.checkpoint);
        }
    }

    #[test]
    fn a_flipped_bit_in_a_frame_is_always_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let seg = real_segment();
        let frame = &seg[20..];
        prop_assert!(decode_frame(frame).is_ok());
        let mut bad = frame.to_vec();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(decode_frame(&bad).is_err());
    }
}
