//! The tenants file: any text is parsed or refused with one line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paybridge::tenants::Tenants;

fuzz_target!(|text: &str| {
    if let Err(error) = Tenants::parse_toml(text) {
        assert!(!error.to_string().contains('\n'));
    }
});
