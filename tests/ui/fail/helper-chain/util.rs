use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_secs() -> u64 {
    let now = SystemTime::now();
    now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn region() -> String {
    std::fs::read_to_string("/etc/region").unwrap_or_default()
}

pub fn jitter(sku: &String) -> u32 {
    sku.len() as u32 ^ std::process::id()
}
