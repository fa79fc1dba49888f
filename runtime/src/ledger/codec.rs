//! The compact binary encoding of one ledger entry (the `ledger` table's value).
//!
//! ```text
//! u8 version (1)
//! u8 kind   u8 flags (bit0 estimated, bit1 provider present, bit2 model present)
//! varint time_ms, attempt, seq, quantity, unit_price_micros, cost_micros
//! str tenant, run, node, capsule, [provider], [model]   (str = varint len + UTF-8)
//! ```
//!
//! The id is the table key and is not repeated. A typical entry is ~120
//! bytes (the capsule digest dominates); decoding is a single pass with one
//! allocation per string.

use super::{Entry, Kind};

const VERSION: u8 = 1;
const ESTIMATED: u8 = 1;
const HAS_PROVIDER: u8 = 2;
const HAS_MODEL: u8 = 4;

/// Append the encoding of `e` (all but its id) to `out`.
pub fn encode(e: &Entry, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(e.kind.code());
    let mut flags = 0;
    if e.estimated {
        flags |= ESTIMATED;
    }
    if e.provider.is_some() {
        flags |= HAS_PROVIDER;
    }
    if e.model.is_some() {
        flags |= HAS_MODEL;
    }
    out.push(flags);
    for v in [
        e.time_ms,
        u64::from(e.attempt),
        u64::from(e.seq),
        e.quantity,
        e.unit_price_micros,
        e.cost_micros,
    ] {
        put_varint(out, v);
    }
    for s in [&e.tenant, &e.run, &e.node, &e.capsule] {
        put_str(out, s);
    }
    if let Some(p) = &e.provider {
        put_str(out, p);
    }
    if let Some(m) = &e.model {
        put_str(out, m);
    }
}

/// Decode an entry stored under `id`; `Err` says what is wrong with the bytes.
pub fn decode(id: u64, bytes: &[u8]) -> Result<Entry, &'static str> {
    let mut r = Reader(bytes);
    if r.byte()? != VERSION {
        return Err("unknown encoding version");
    }
    let kind = Kind::from_code(r.byte()?).ok_or("unknown kind code")?;
    let flags = r.byte()?;
    let time_ms = r.varint()?;
    let attempt = u32::try_from(r.varint()?).map_err(|_| "attempt overflows u32")?;
    let seq = u32::try_from(r.varint()?).map_err(|_| "seq overflows u32")?;
    let quantity = r.varint()?;
    let unit_price_micros = r.varint()?;
    let cost_micros = r.varint()?;
    let tenant = r.string()?;
    let run = r.string()?;
    let node = r.string()?;
    let capsule = r.string()?;
    let provider = if flags & HAS_PROVIDER != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let model = if flags & HAS_MODEL != 0 {
        Some(r.string()?)
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err("trailing bytes");
    }
    Ok(Entry {
        id,
        time_ms,
        tenant,
        run,
        node,
        attempt,
        seq,
        capsule,
        kind,
        quantity,
        unit_price_micros,
        cost_micros,
        provider,
        model,
        estimated: flags & ESTIMATED != 0,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let (&b, rest) = self.0.split_first().ok_or("truncated")?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("varint overflows u64");
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long")
    }

    fn string(&mut self) -> Result<String, &'static str> {
        let len = usize::try_from(self.varint()?).map_err(|_| "string length overflows")?;
        if len > self.0.len() {
            return Err("truncated string");
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| "string is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            id: 7,
            time_ms: 1_710_504_000_123,
            tenant: "acme".into(),
            run: "run-1".into(),
            node: "n1".into(),
            attempt: 2,
            seq: u32::MAX,
            capsule: format!("sha256:{}", "ab".repeat(32)),
            kind: Kind::LlmTokensOutput,
            quantity: u64::MAX,
            unit_price_micros: 15_000,
            cost_micros: 0,
            provider: Some("openai".into()),
            model: None,
            estimated: true,
        }
    }

    #[test]
    fn ledger_codec_round_trips() {
        let e = sample();
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        assert!(buf.len() < 130, "{} bytes", buf.len());
        assert_eq!(decode(7, &buf), Ok(e));
    }

    #[test]
    fn ledger_codec_rejects_corruption() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(7, &buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = buf.clone();
        extra.push(0);
        assert_eq!(decode(7, &extra), Err("trailing bytes"));
        let mut bad_kind = buf.clone();
        bad_kind[1] = 99;
        assert_eq!(decode(7, &bad_kind), Err("unknown kind code"));
        assert_eq!(
            decode(
                7,
                &[
                    1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
                ]
            ),
            Err("varint overflows u64")
        );
    }
}
