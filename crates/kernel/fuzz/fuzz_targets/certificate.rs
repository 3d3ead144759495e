//! Certificate decoding and verification: errors, never panics; a decoded certificate re-encodes
//! to bytes that decode to the same certificate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_kernel::{CallCertificate, CertSigningKey, CertificateVerifier, Timestamp};

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = CallCertificate::decode(data) {
        let again = CallCertificate::decode(&cert.to_bytes()).expect("re-decodes");
        assert_eq!(again, cert);
        let key = CertSigningKey::from_seed(&[1; 32]).verifying_key();
        let verifier = CertificateVerifier::new(vec![key], "Server::\"s\"");
        let _ = verifier.verify(
            &cert,
            "t",
            b"{}",
            Timestamp::from_unix_millis(1_795_464_229_000),
        );
    }
});
