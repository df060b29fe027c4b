//! `X-Inngest-Signature`: HMAC-SHA256 as the official SDKs compute it.
//! The key is the signing key without its `signkey-<env>-` prefix, as
//! UTF-8 bytes; the message is the body followed by the decimal
//! timestamp; the window is ±5 minutes.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::wire::SIGNATURE_WINDOW_SECS;

fn normalize_key(key: &str) -> &str {
    // `signkey-<env>-<hex>` → `<hex>`
    if let Some(rest) = key.strip_prefix("signkey-") {
        if let Some(i) = rest.find('-') {
            if rest[..i]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return &rest[i + 1..];
            }
        }
    }
    key
}

fn mac(key: &str, body: &[u8], t: i64) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(normalize_key(key).as_bytes())
        .expect("HMAC takes any key length");
    m.update(body);
    m.update(t.to_string().as_bytes());
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `X-Inngest-Signature` value for `body` at unix time `t`.
pub fn sign(key: &str, body: &[u8], t: i64) -> String {
    format!("t={t}&s={}", mac(key, body, t))
}

/// Check an `X-Inngest-Signature` header against each key in turn.
pub fn verify(header: Option<&str>, body: &[u8], keys: &[&str], now_s: i64) -> Result<(), String> {
    let header = header.ok_or("no X-Inngest-Signature header")?;
    let mut t = None;
    let mut s = None;
    for part in header.split('&') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("s", v)) => s = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(s)) = (t, s) else {
        return Err("malformed X-Inngest-Signature header".into());
    };
    if (now_s - t).abs() > SIGNATURE_WINDOW_SECS {
        return Err(format!(
            "the signature's timestamp is {}s away from now (limit {SIGNATURE_WINDOW_SECS}s)",
            now_s - t
        ));
    }
    for key in keys {
        if same_secret(&mac(key, body, t), s) {
            return Ok(());
        }
    }
    Err("the signature does not match".into())
}

/// Whether two secrets are equal, in a time that does not depend on where
/// they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `signkey-<env>-` + hex(SHA-256(hex-decoded key)): the bearer token an SDK
/// sends to the executor.
pub fn hashed_signing_key(key: &str) -> String {
    let prefix = &key[..key.len() - normalize_key(key).len()];
    let raw = normalize_key(key);
    let decoded: Vec<u8> = (0..raw.len() / 2)
        .filter_map(|i| u8::from_str_radix(raw.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let bytes: &[u8] = if decoded.len() * 2 == raw.len() {
        &decoded
    } else {
        raw.as_bytes()
    };
    format!("{prefix}{}", hex(&Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_official_sdks() {
        let key = "signkey-test-12345678";
        let body = br#"{"a":1}"#;
        let header = sign(key, body, 1_700_000_000);
        // The same key without its prefix signs the same way.
        assert_eq!(header, sign("12345678", body, 1_700_000_000));
        assert!(verify(Some(&header), body, &[key], 1_700_000_100).is_ok());
        assert!(
            verify(
                Some(&header),
                body,
                &["signkey-test-other", key],
                1_700_000_000
            )
            .is_ok(),
            "fallback key"
        );
        assert!(
            verify(Some(&header), b"{}", &[key], 1_700_000_000).is_err(),
            "other body"
        );
        assert!(
            verify(Some(&header), body, &[key], 1_700_000_000 + 301).is_err(),
            "outside the window"
        );
        assert!(verify(None, body, &[key], 1_700_000_000).is_err());
        // HMAC-SHA256(key = "12345678" as UTF-8, msg = body + "1700000000"), computed independently.
        let expected = {
            let mut m = Hmac::<Sha256>::new_from_slice(b"12345678").unwrap();
            m.update(b"{\"a\":1}1700000000");
            hex(&m.finalize().into_bytes())
        };
        assert_eq!(header, format!("t=1700000000&s={expected}"));
    }
}
