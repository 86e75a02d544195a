//! Page tokens come from callers: decoding any string must never panic, and
//! only a token signed with the key is accepted.
#![no_main]

use ansible_runner_service::app::PageToken;
use ansible_runner_service::store::ListFilter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let filter = ListFilter::default();
        assert!(PageToken::decode(text, &filter, b"fuzz key").is_err() || !text.is_empty());
    }
});
