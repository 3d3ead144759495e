#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use warden_sandbox::*;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn smoke() {
    let opts = Options {
        helper: HelperBinary::Path(env!("CARGO_BIN_EXE_warden-sandbox-helper").into()),
        ..Options::default()
    };
    let sb = Sandbox::new(Profile::default(), opts);
    let (o, e) = (Buf::default(), Buf::default());
    let argv: Vec<String> = ["/bin/sh", "-c", "id; ls /; cat /proc/self/status | grep -i cap; echo hi > /tmp/x && cat /tmp/x; touch /etc/x"].iter().map(|s| s.to_string()).collect();
    let out = sb
        .run(
            &argv,
            Stdio::null(),
            Box::new(o.clone()),
            Box::new(e.clone()),
        )
        .unwrap();
    println!(
        "{out:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.0.lock().unwrap()),
        String::from_utf8_lossy(&e.0.lock().unwrap())
    );
}
