//! Signed notes, checkpoints, `tlog-proof` receipts and tile paths, cross-checked against the
//! independent `signed_note` and `tlog_tiles` crates (ports of Go's `note` and `tlog`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ed25519_dalek::SigningKey;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};
use warden_log::tiles::{TileId, new_tiles};
use warden_log::{
    Checkpoint, Hash, MerkleTree, NoteSigner, NoteVerifier, Receipt, SignedCheckpoint, SignedNote,
};

const ORIGIN: &str = "warden.example/log";

fn signer(seed: u8) -> NoteSigner {
    NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[seed; 32])).unwrap()
}

fn their_verifiers(v: &NoteVerifier) -> VerifierList {
    VerifierList::new(vec![Box::new(
        StandardVerifier::new(&v.to_string()).unwrap(),
    )])
}

#[test]
fn key_strings_and_ids_agree_with_signed_note() {
    let s = signer(7);
    let v = s.verifier();
    let theirs = StandardVerifier::new(&v.to_string()).unwrap();
    assert_eq!(signed_note::Verifier::key_id(&theirs), v.key_id());
    let mut raw = vec![1u8];
    raw.extend_from_slice(&SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes());
    assert_eq!(signed_note::key_id(ORIGIN, &raw), v.key_id());
    // Our signer key string is accepted by their signer, and ours round-trips.
    StandardSigner::new(&s.to_key_string()).unwrap();
    let back = NoteSigner::from_key_string(&s.to_key_string()).unwrap();
    assert_eq!(back.verifier(), v);
    assert_eq!(NoteVerifier::parse(&v.to_string()).unwrap(), v);
}

#[test]
fn bad_key_strings_are_refused() {
    let v = signer(1).verifier().to_string();
    let (name, rest) = v.split_once('+').unwrap();
    let (id, key) = rest.split_once('+').unwrap();
    for bad in [
        format!("{name}+00000000+{key}"),
        format!("other.example+{id}+{key}"),
        format!("{name}+{id}"),
        format!("{name}+{id}+AAAA"),
        format!("bad name+{id}+{key}"),
        format!("a+b+{id}+{key}"),
    ] {
        assert!(NoteVerifier::parse(&bad).is_err(), "{bad}");
    }
    assert!(NoteSigner::from_key_string("PRIVATE+KEY+x+00000000+AQ==").is_err());
}

#[test]
fn our_checkpoints_verify_with_their_implementations_and_vice_versa() {
    let s = signer(3);
    let v = s.verifier();
    let mut tree = MerkleTree::new();
    for i in 0..10u8 {
        tree.push(Hash::leaf(&[i]));
    }
    let cp = Checkpoint::new(ORIGIN, 10, tree.root(10).unwrap());
    let text = cp.to_text();
    let ours = s.sign(&text).unwrap();

    // Theirs verifies ours.
    let note = Note::from_bytes(&ours).unwrap();
    let (verified, _) = note.verify(&their_verifiers(&v)).unwrap();
    assert_eq!(verified.len(), 1);
    let parsed = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
    assert_eq!(parsed.origin(), ORIGIN);
    assert_eq!(parsed.size(), 10);
    assert_eq!(parsed.hash().0, cp.root.0);
    assert_eq!(parsed.to_bytes(), text.as_bytes());

    // Ours verifies theirs, and Ed25519 being deterministic the notes are byte-identical.
    let their_signer = StandardSigner::new(&s.to_key_string()).unwrap();
    let mut their_note = Note::new(text.as_bytes(), &[]).unwrap();
    their_note.add_sigs(&[&their_signer]).unwrap();
    let their_bytes = their_note.to_bytes();
    assert_eq!(their_bytes, ours);
    let signed = SignedCheckpoint::verify(&their_bytes, &v).unwrap();
    assert_eq!(signed.checkpoint(), &cp);
}

#[test]
fn tampered_or_foreign_notes_are_refused() {
    let s = signer(3);
    let v = s.verifier();
    let text = Checkpoint::new(ORIGIN, 1, Hash::leaf(b"a")).to_text();
    let good = s.sign(&text).unwrap();
    assert!(v.verify(&good).is_ok());

    // Changed text.
    let tampered = String::from_utf8(good.clone())
        .unwrap()
        .replacen("\n1\n", "\n2\n", 1);
    assert!(v.verify(tampered.as_bytes()).is_err());
    assert!(
        Note::from_bytes(tampered.as_bytes())
            .unwrap()
            .verify(&their_verifiers(&v))
            .is_err()
    );

    // Signed by another key with the same name: no signature by our key.
    let other = signer(4).sign(&text).unwrap();
    let err = v.verify(&other).unwrap_err().to_string();
    assert!(err.contains("no signature"), "{err}");

    // An unknown extra signature is ignored; our own still has to verify.
    let mut with_extra = good.clone();
    let extra = NoteSigner::new("witness.example", SigningKey::from_bytes(&[5; 32])).unwrap();
    let extra_line = String::from_utf8(extra.sign(&text).unwrap()).unwrap();
    with_extra.extend_from_slice(extra_line.lines().last().unwrap().as_bytes());
    with_extra.push(b'\n');
    assert!(v.verify(&with_extra).is_ok());

    // Structural damage.
    for bad in [
        &b"no blank line\n"[..],
        b"text\n\n",
        b"text\n\nnot a signature\n",
        b"text\n\n\xe2\x80\x94 name !!!\n",
        b"text\x01\n\n\xe2\x80\x94 name AAAAAAAA\n",
    ] {
        assert!(SignedNote::parse(bad).is_err(), "{bad:?}");
    }
    // A checkpoint whose origin is not the key name is refused even if signed by the key.
    let foreign = s
        .sign(&Checkpoint::new("elsewhere.example", 1, Hash::leaf(b"a")).to_text())
        .unwrap();
    assert!(SignedCheckpoint::verify(&foreign, &v).is_err());
}

#[test]
fn checkpoint_text_is_strict() {
    let root = Hash::leaf(b"x").to_base64();
    assert!(Checkpoint::parse_text(&format!("o\n0\n{root}\n")).is_ok());
    let with_ext = Checkpoint::parse_text(&format!("o\n5\n{root}\next one\n")).unwrap();
    assert_eq!(with_ext.extensions, vec!["ext one".to_owned()]);
    for bad in [
        format!("o\n05\n{root}\n"),
        format!("o\n5\n{root}"),
        format!("\n5\n{root}\n"),
        format!("o\n-5\n{root}\n"),
        "o\n5\nAAAA\n".to_owned(),
        format!("o\n5\n{root}\n\n"),
        "o\n5\n".to_owned(),
    ] {
        assert!(Checkpoint::parse_text(&bad).is_err(), "{bad:?}");
    }
}

fn receipt_fixture() -> (NoteSigner, Vec<Vec<u8>>, MerkleTree) {
    let s = signer(9);
    let entries: Vec<Vec<u8>> = (0..13)
        .map(|i| format!("{{\"id\":\"r{i}\"}}").into_bytes())
        .collect();
    let mut tree = MerkleTree::new();
    for e in &entries {
        tree.push(Hash::leaf(e));
    }
    (s, entries, tree)
}

#[test]
fn receipts_round_trip_and_verify() {
    let (s, entries, tree) = receipt_fixture();
    let note = s
        .sign(&Checkpoint::new(ORIGIN, 13, tree.root(13).unwrap()).to_text())
        .unwrap();
    for index in 0..13u64 {
        let r = Receipt {
            extra: None,
            index,
            proof: tree.inclusion_proof(index, 13).unwrap(),
            checkpoint: note.clone(),
        };
        let bytes = r.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(&format!("c2sp.org/tlog-proof@v1\nindex {index}\n")));
        let back = Receipt::parse(&bytes).unwrap();
        assert_eq!(back, r);
        let cp = back
            .verify(&entries[index as usize], &s.verifier())
            .unwrap();
        assert_eq!(cp.size, 13);
        // The checkpoint part is the verbatim note, parseable by the independent note parser.
        let tail = &bytes[bytes.len() - note.len()..];
        assert_eq!(tail, &note[..]);
        Note::from_bytes(tail)
            .unwrap()
            .verify(&their_verifiers(&s.verifier()))
            .unwrap();
        // Wrong entry or wrong key fails.
        assert!(back.verify(b"other", &s.verifier()).is_err());
        assert!(
            back.verify(&entries[index as usize], &signer(10).verifier())
                .is_err()
        );
    }
    let with_extra = Receipt {
        extra: Some(b"ctx".to_vec()),
        index: 2,
        proof: tree.inclusion_proof(2, 13).unwrap(),
        checkpoint: note.clone(),
    };
    let bytes = with_extra.encode();
    assert!(
        String::from_utf8(bytes.clone())
            .unwrap()
            .contains("\nextra Y3R4\nindex 2\n")
    );
    assert_eq!(Receipt::parse(&bytes).unwrap(), with_extra);
}

#[test]
fn malformed_receipts_are_refused() {
    let (s, entries, tree) = receipt_fixture();
    let note = s
        .sign(&Checkpoint::new(ORIGIN, 13, tree.root(13).unwrap()).to_text())
        .unwrap();
    let good = Receipt {
        extra: None,
        index: 4,
        proof: tree.inclusion_proof(4, 13).unwrap(),
        checkpoint: note.clone(),
    }
    .encode();
    let text = String::from_utf8(good.clone()).unwrap();
    for bad in [
        text.replacen("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2", 1),
        text.replacen("index 4", "index 04", 1),
        text.replacen("index 4", "idx 4", 1),
        text.replacen("index 4\n", "index 4\nnot-base64!\n", 1),
        text[..text.find("\n\n").unwrap()].to_owned(),
    ] {
        assert!(Receipt::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    // Parses, but the proof no longer leads to the signed root.
    let moved = Receipt::parse(text.replacen("index 4", "index 5", 1).as_bytes()).unwrap();
    assert!(moved.verify(&entries[4], &s.verifier()).is_err());
    let mut longer = Receipt::parse(&good).unwrap();
    longer.proof.push(Hash::leaf(b"x"));
    assert!(longer.verify(&entries[4], &s.verifier()).is_err());
}

#[test]
fn tile_paths_agree_with_tlog_tiles() {
    for (old, new) in [
        (0u64, 1u64),
        (0, 256),
        (10, 70_000),
        (255, 257),
        (65_535, 65_537),
        (1, 300_000),
    ] {
        let mut ours: Vec<String> = new_tiles(old, new).iter().map(TileId::path).collect();
        let mut theirs: Vec<String> = tlog_tiles::Tile::new_tiles(8, old, new)
            .iter()
            .map(|t| t.path().replacen("tile/8/", "tile/", 1))
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{old} -> {new}");
        for p in &ours {
            assert_eq!(&TileId::parse(p).unwrap().path(), p);
        }
    }
}
