//! The digest of what a request asks for, kept with its idempotency key to tell a replay from a
//! different request under the same key.

use sha2::{Digest, Sha256};

/// SHA-256 over length-prefixed parts, so that no two different lists of parts collide.
#[derive(Default)]
pub(super) struct Fingerprint(Sha256);

impl Fingerprint {
    /// Adds one part.
    pub(super) fn part(&mut self, text: &str) {
        self.0.update((text.len() as u64).to_be_bytes());
        self.0.update(text.as_bytes());
    }

    /// The digest, hex-encoded.
    pub(super) fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        let digest = |parts: &[&str]| {
            let mut fingerprint = Fingerprint::default();
            for part in parts {
                fingerprint.part(part);
            }
            fingerprint.finish()
        };
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_eq!(digest(&["ab", "c"]), digest(&["ab", "c"]));
    }
}
