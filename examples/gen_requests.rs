//! Writes COUNT pass requests (one per line) from DISTINCT software device keys, for benchmarks.
//!
//!   cargo run --release --example gen_requests -- COUNT DISTINCT NOW > requests.txt

use hwpass::MemoryKey;
use hwpass::{sign_request, BindingKind, RequestClaims};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).map_or(Ok(10000), |c| c.parse())?;
    let distinct: usize = args.get(2).map_or(Ok(1000), |c| c.parse())?;
    let now: i64 = match args.get(3) {
        Some(c) => c.parse()?,
        None => hwpass::os::now()?,
    };
    let requests: Vec<String> = (0..distinct.max(1))
        .map(|i| {
            let claims = RequestClaims {
                sub: format!("user{i}@corp"),
                iat: now,
                kind: BindingKind::Software,
                ttl: Some(86400),
                dev: Some(format!("bench-{i}")),
                att: None,
                stm: None,
            };
            sign_request(&claims, &MemoryKey::generate())
        })
        .collect::<Result<_, _>>()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..count {
        use std::io::Write as _;
        writeln!(out, "{}", requests[i % requests.len()])?;
    }
    Ok(())
}
