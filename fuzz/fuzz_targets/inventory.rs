//! Inventories come from callers: any host list or JSON document must be
//! checked without panicking, and what passes must be safe on a command line.
#![no_main]

use ansible_runner_service::domain::validate::{hosts, inline_inventory, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(list) = hosts(text, 1000) {
        for host in list {
            assert!(!host.is_empty() && !host.starts_with('-') && !host.starts_with('@'));
            assert!(!host.chars().any(|c| c.is_whitespace() || c == ','));
        }
    }
    if let Ok(serde_json::Value::Object(doc)) = serde_json::from_str(text) {
        let _ = inline_inventory(&doc, &Limits::default());
    }
});
