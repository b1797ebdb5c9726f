//! Manifest verification and body decoding never panic; a body that decodes
//! is valid, and signing it again verifies to the same manifest.

#![no_main]

use std::sync::LazyLock;

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use molt_core::{TrustRoot, decode_body};

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));
static TRUST: LazyLock<TrustRoot> =
    LazyLock::new(|| TrustRoot::new(&[KEY.verifying_key()], 1).expect("one key, threshold 1"));

fuzz_target!(|data: &[u8]| {
    let _ = TRUST.verify(data);
    if let Ok(manifest) = decode_body(data) {
        assert_eq!(manifest.validate(), Ok(()));
        let signed = manifest.sign(&[&KEY]).expect("a valid manifest signs");
        assert_eq!(TRUST.verify(&signed), Ok(manifest));
    }
});
