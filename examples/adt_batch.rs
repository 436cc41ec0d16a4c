//! Writes a `translate --batch` input of N synthetic ADT messages to stdout:
//! `bench`'s sample message (`cwsgw_scenario::sample::sample_adt`) with the
//! trigger rotating A01 / A04 / A08, distinct message control ids and
//! patients, separated by blank lines (or MLLP-framed with `--mllp`).
//!
//! ```text
//! cargo run --release --example adt_batch -- 50000 > /tmp/adt-50k.hl7
//! cargo run --release --example adt_batch -- 1500000 > /tmp/adt-1g.hl7   # ≈ 1 GB
//! ```

use std::io::Write;

fn main() -> std::io::Result<()> {
    let mut n: u64 = 50_000;
    let mut mllp = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--mllp" => mllp = true,
            other => match other.parse() {
                Ok(v) => n = v,
                Err(_) => {
                    eprintln!("usage: adt_batch [COUNT] [--mllp]");
                    std::process::exit(2);
                }
            },
        }
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    for i in 0..n {
        let msg = cwsgw_scenario::sample::sample_adt(i);
        let msg = match i % 3 {
            0 => msg,
            1 => msg
                .replace("ADT^A01^ADT_A01", "ADT^A04^ADT_A01")
                .replace("EVN|A01", "EVN|A04"),
            _ => msg
                .replace("ADT^A01^ADT_A01", "ADT^A08^ADT_A01")
                .replace("EVN|A01", "EVN|A08"),
        };
        if mllp {
            out.write_all(&hl7v2::mllp::frame(msg.as_bytes()))?;
        } else {
            out.write_all(msg.as_bytes())?;
            out.write_all(b"\r\n")?;
        }
    }
    out.flush()
}
