//! SHA-1 for deterministic ids: `uuid5(ID_NAMESPACE, key)` hashed and
//! formatted on the stack.
//!
//! `uuid::Uuid::new_v5` (via `sha1_smol`) costs ≈ 2.0 k instructions per id
//! (hasher state copies, generic buffering, a `String` for the text); this
//! one-shot version hashes `namespace ‖ key` straight from its two slices and
//! writes the hyphenated text into a `[u8; 36]` (≈ 1.3 k per one-block key).
//! The result is checked against `uuid` in the tests.

/// Text length of a hyphenated UUID.
pub(crate) const UUID_LEN: usize = 36;

const H0: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];

/// One SHA-1 compression of a 64-byte block, fully unrolled (literal round
/// numbers, renamed registers instead of moving five words per round).
// The schedule words of rounds 77-79 are stored but never read again.
#[allow(unused_assignments)]
fn compress(state: &mut [u32; 5], block: &[u8; 64]) {
    let mut w = [0u32; 16];
    for (wi, c) in w.iter_mut().zip(block.chunks_exact(4)) {
        *wi = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    }
    let [mut a, mut b, mut c, mut d, mut e] = *state;
    macro_rules! w {
        ($i:expr) => {{
            if $i < 16 {
                w[$i & 15]
            } else {
                let x = (w[($i + 13) & 15] ^ w[($i + 8) & 15] ^ w[($i + 2) & 15] ^ w[$i & 15])
                    .rotate_left(1);
                w[$i & 15] = x;
                x
            }
        }};
    }
    macro_rules! r {
        ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:expr, $k:expr, $i:expr) => {
            $e = $e
                .wrapping_add($a.rotate_left(5))
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($k)
                .wrapping_add(w!($i));
            $b = $b.rotate_left(30);
        };
    }
    macro_rules! r5 {
        ($f:expr, $k:expr, $i:expr) => {
            r!(a, b, c, d, e, $f, $k, $i);
            r!(e, a, b, c, d, $f, $k, $i + 1);
            r!(d, e, a, b, c, $f, $k, $i + 2);
            r!(c, d, e, a, b, $f, $k, $i + 3);
            r!(b, c, d, e, a, $f, $k, $i + 4);
        };
    }
    let ch = |b: u32, c: u32, d: u32| d ^ (b & (c ^ d));
    let parity = |b: u32, c: u32, d: u32| b ^ c ^ d;
    let maj = |b: u32, c: u32, d: u32| (b & c) | (d & (b | c));
    const K: [u32; 4] = [0x5A82_7999, 0x6ED9_EBA1, 0x8F1B_BCDC, 0xCA62_C1D6];
    r5!(ch, K[0], 0);
    r5!(ch, K[0], 5);
    r5!(ch, K[0], 10);
    r5!(ch, K[0], 15);
    r5!(parity, K[1], 20);
    r5!(parity, K[1], 25);
    r5!(parity, K[1], 30);
    r5!(parity, K[1], 35);
    r5!(maj, K[2], 40);
    r5!(maj, K[2], 45);
    r5!(maj, K[2], 50);
    r5!(maj, K[2], 55);
    r5!(parity, K[3], 60);
    r5!(parity, K[3], 65);
    r5!(parity, K[3], 70);
    r5!(parity, K[3], 75);
    for (s, v) in state.iter_mut().zip([a, b, c, d, e]) {
        *s = s.wrapping_add(v);
    }
}

/// SHA-1 of `prefix ‖ data` (no intermediate copy of the whole input).
fn sha1_2(prefix: &[u8], data: &[u8]) -> [u8; 20] {
    let mut state = H0;
    let mut block = [0u8; 64];
    let mut fill = 0usize;
    for part in [prefix, data] {
        let mut rest = part;
        while !rest.is_empty() {
            let n = rest.len().min(64 - fill);
            let (head, tail) = rest.split_at(n);
            if let Some(dst) = block.get_mut(fill..fill + n) {
                dst.copy_from_slice(head);
            }
            fill += n;
            rest = tail;
            if fill == 64 {
                compress(&mut state, &block);
                fill = 0;
            }
        }
    }
    let bits = ((prefix.len() as u64).wrapping_add(data.len() as u64)).wrapping_mul(8);
    // Padding: 0x80, zeros, then the bit length in the last 8 bytes.
    if let Some(b) = block.get_mut(fill) {
        *b = 0x80;
    }
    block.iter_mut().skip(fill + 1).for_each(|b| *b = 0);
    if fill + 1 > 56 {
        compress(&mut state, &block);
        block = [0u8; 64];
    }
    if let Some(len) = block.get_mut(56..64) {
        len.copy_from_slice(&bits.to_be_bytes());
    }
    compress(&mut state, &block);
    let mut out = [0u8; 20];
    for (o, s) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&s.to_be_bytes());
    }
    out
}

/// `uuid5(namespace, key)` as lowercase hyphenated text (RFC 4122 §4.3).
pub(crate) fn uuid5_text(namespace: &[u8; 16], key: &[u8]) -> [u8; UUID_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = sha1_2(namespace, key);
    let mut u = [0u8; 16];
    u.copy_from_slice(h.get(..16).unwrap_or(&[0; 16]));
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    // Where each byte's two hex digits go (hyphens after bytes 4, 6, 8, 10).
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [b'-'; UUID_LEN];
    for (&j, b) in AT.iter().zip(u) {
        out[j] = HEX[usize::from(b >> 4)];
        out[j + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_uuid_crate_for_every_key_length() {
        let ns = crate::eval::ID_NAMESPACE;
        for len in 0..300 {
            let key: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let want = uuid::Uuid::new_v5(&ns, key.as_bytes())
                .hyphenated()
                .to_string();
            let got = uuid5_text(ns.as_bytes(), key.as_bytes());
            assert_eq!(std::str::from_utf8(&got).unwrap(), want, "len {len}");
        }
        let want = uuid::Uuid::new_v5(&ns, "encounter|STMARY|V20260001".as_bytes()).to_string();
        let got = uuid5_text(ns.as_bytes(), b"encounter|STMARY|V20260001");
        assert_eq!(std::str::from_utf8(&got).unwrap(), want);
    }
}
