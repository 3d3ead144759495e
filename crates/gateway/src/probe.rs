//! TEMPORARY timing probe (not committed).
use std::cell::RefCell;
use std::time::Instant;
thread_local! {
    static T: RefCell<(Option<Instant>, Vec<Vec<u32>>, u64)> = RefCell::new((None, vec![Vec::new(); 16], 0));
}
pub fn start() { T.with(|t| { t.borrow_mut().0 = Some(Instant::now()); }); }
pub fn mark(stage: usize) {
    T.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(s) = t.0 { let d = s.elapsed().as_nanos() as u32; t.1[stage].push(d); }
    });
}
pub fn end() {
    T.with(|t| {
        let mut t = t.borrow_mut();
        t.2 += 1;
        if t.2 % 500 == 0 {
            let mut out = String::new();
            for (i, v) in t.1.iter_mut().enumerate() {
                if v.is_empty() { continue; }
                v.sort_unstable();
                out += &format!(" s{i}={:.1}", v[v.len() / 2] as f64 / 1000.0);
                v.clear();
            }
            eprintln!("PROBE{out}");
        }
    });
}
