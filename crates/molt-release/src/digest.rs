//! Digests of files that TUF metadata lists: every hash algorithm a
//! `hashes` object names that molt supports is checked, and at least one
//! must be supported.
//!
//! The TUF specification lets metadata list any algorithms ("a dictionary
//! that specifies one or more hashes ... with a string describing the
//! cryptographic hash function as key"). molt supports the SHA-2 family
//! by the names securesystemslib and python-tuf write: `sha224`, `sha256`,
//! `sha384` and `sha512`. An algorithm molt does not know is skipped; a
//! listing with none it knows cannot be verified and is refused.

use std::collections::BTreeMap;

use sha2::Digest as _;

/// A hash algorithm molt can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// Every supported algorithm, in order of preference for naming a file
    /// (consistent snapshots put one digest in a target's file name).
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Sha256,
        Algorithm::Sha512,
        Algorithm::Sha384,
        Algorithm::Sha224,
    ];

    /// The name TUF metadata uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The algorithm TUF metadata calls `name`, if molt supports it.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|algorithm| algorithm.name() == name)
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha224 => 28,
            Algorithm::Sha256 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }

    /// The digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        let mut hasher = State::new(self);
        hasher.update(bytes);
        hasher.finish()
    }
}

/// Why a `hashes` listing cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// No listed algorithm is one molt supports (or nothing is listed).
    #[error(
        "lists hashes only in algorithms molt does not support ({listed}); molt verifies sha224, sha256, sha384 and sha512"
    )]
    NoneSupported {
        /// The listed algorithm names, comma-separated.
        listed: String,
    },
    /// A digest is not lowercase or uppercase hex of the algorithm's length.
    #[error("lists a {algorithm} digest that is not {bytes} bytes of hex")]
    Malformed {
        /// The algorithm's name.
        algorithm: &'static str,
        /// Its digest length.
        bytes: usize,
    },
}

/// One expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// The digest bytes (`algorithm.digest_len()` of them).
    pub bytes: Vec<u8>,
}

/// The digests a file must have: at least one, at most one per algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests(Vec<Digest>);

/// The first algorithm (and its digests) whose digest of some bytes was
/// not the one listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The listed digest, hex.
    pub expected: String,
    /// The digest of the bytes, hex.
    pub actual: String,
}

impl Digests {
    /// Exactly this sha256.
    pub fn sha256(digest: [u8; 32]) -> Digests {
        Digests(vec![Digest {
            algorithm: Algorithm::Sha256,
            bytes: digest.to_vec(),
        }])
    }

    /// The supported digests of a TUF `hashes` object (algorithm name to
    /// hex digest). Unsupported algorithms are skipped; at least one must be
    /// supported.
    pub fn from_listed(listed: &BTreeMap<String, String>) -> Result<Digests, DigestError> {
        let mut digests = Vec::new();
        for (name, hex_digest) in listed {
            let Some(algorithm) = Algorithm::from_name(name) else {
                continue;
            };
            let malformed = || DigestError::Malformed {
                algorithm: algorithm.name(),
                bytes: algorithm.digest_len(),
            };
            let bytes = hex::decode(hex_digest).map_err(|_| malformed())?;
            if bytes.len() != algorithm.digest_len() {
                return Err(malformed());
            }
            digests.push(Digest { algorithm, bytes });
        }
        if digests.is_empty() {
            return Err(DigestError::NoneSupported {
                listed: if listed.is_empty() {
                    "none".to_owned()
                } else {
                    listed.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            });
        }
        digests.sort_by_key(|digest| Algorithm::ALL.iter().position(|known| *known == digest.algorithm));
        Ok(Digests(digests))
    }

    /// Adds `digest`; if its algorithm is already present the two must be
    /// equal, else `false` is returned and nothing changes.
    pub fn require(&mut self, digest: Digest) -> bool {
        match self.get(digest.algorithm) {
            Some(existing) => existing == digest.bytes.as_slice(),
            None => {
                self.0.push(digest);
                true
            }
        }
    }

    /// The digest for `algorithm`, if listed.
    pub fn get(&self, algorithm: Algorithm) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|digest| digest.algorithm == algorithm)
            .map(|digest| digest.bytes.as_slice())
    }

    /// The sha256, if listed.
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        self.get(Algorithm::Sha256)?.try_into().ok()
    }

    /// The preferred digest (sha256 if listed): the one to name a file by.
    pub fn preferred(&self) -> &Digest {
        // Never empty: every constructor puts one in.
        &self.0[0]
    }

    /// Every digest.
    pub fn iter(&self) -> impl Iterator<Item = &Digest> {
        self.0.iter()
    }

    /// A hasher computing every listed algorithm at once.
    pub fn hasher(&self) -> Hasher {
        Hasher(
            self.0
                .iter()
                .map(|digest| (digest.algorithm, State::new(digest.algorithm)))
                .collect(),
        )
    }

    /// Checks `bytes` against every digest.
    pub fn check(&self, bytes: &[u8]) -> Result<(), Mismatch> {
        let mut hasher = self.hasher();
        hasher.update(bytes);
        self.check_hasher(hasher)
    }

    /// Checks what `hasher` (made by [`Digests::hasher`]) saw.
    pub fn check_hasher(&self, hasher: Hasher) -> Result<(), Mismatch> {
        for (algorithm, state) in hasher.0 {
            let actual = state.finish();
            let expected = self.get(algorithm).unwrap_or_default();
            if actual != expected {
                return Err(Mismatch {
                    algorithm,
                    expected: hex::encode(expected),
                    actual: hex::encode(actual),
                });
            }
        }
        Ok(())
    }
}

/// Several hash states fed the same bytes.
#[derive(Debug, Clone)]
pub struct Hasher(Vec<(Algorithm, State)>);

impl Hasher {
    /// Feeds `bytes` to every state.
    pub fn update(&mut self, bytes: &[u8]) {
        for (_, state) in &mut self.0 {
            state.update(bytes);
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl State {
    fn new(algorithm: Algorithm) -> State {
        match algorithm {
            Algorithm::Sha224 => State::Sha224(sha2::Sha224::new()),
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => State::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            State::Sha224(state) => state.update(bytes),
            State::Sha256(state) => state.update(bytes),
            State::Sha384(state) => state.update(bytes),
            State::Sha512(state) => state.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            State::Sha224(state) => state.finalize().to_vec(),
            State::Sha256(state) => state.finalize().to_vec(),
            State::Sha384(state) => state.finalize().to_vec(),
            State::Sha512(state) => state.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, hex)| ((*name).to_owned(), hex.clone()))
            .collect()
    }

    #[test]
    fn every_supported_listed_digest_is_checked() {
        let data = b"target file contents";
        let sha256 = hex::encode(Algorithm::Sha256.digest(data));
        let sha512 = hex::encode(Algorithm::Sha512.digest(data));
        let both = Digests::from_listed(&listed(&[("sha512", sha512.clone()), ("sha256", sha256.clone())]))
            .expect("two supported");
        assert_eq!(both.preferred().algorithm, Algorithm::Sha256);
        assert_eq!(both.check(data), Ok(()));
        // A wrong sha512 beside a right sha256 is a mismatch.
        let wrong512 = hex::encode(Algorithm::Sha512.digest(b"other"));
        let mixed = Digests::from_listed(&listed(&[("sha256", sha256), ("sha512", wrong512)])).expect("parse");
        assert_eq!(
            mixed.check(data).map_err(|mismatch| mismatch.algorithm),
            Err(Algorithm::Sha512)
        );
        let only512 = Digests::from_listed(&listed(&[("sha512", sha512), ("blake2b", "00".to_owned())]))
            .expect("unknown algorithms are skipped");
        assert_eq!(only512.preferred().algorithm, Algorithm::Sha512);
        assert_eq!(only512.check(data), Ok(()));
    }

    #[test]
    fn a_listing_without_a_supported_algorithm_is_refused() {
        let error = Digests::from_listed(&listed(&[("unknown-hash", "ab".repeat(64))])).expect_err("none supported");
        assert_eq!(
            error,
            DigestError::NoneSupported {
                listed: "unknown-hash".to_owned()
            }
        );
        let error = Digests::from_listed(&listed(&[("sha256", "abc".to_owned())])).expect_err("bad hex");
        assert!(matches!(
            error,
            DigestError::Malformed {
                algorithm: "sha256",
                ..
            }
        ));
        let error = Digests::from_listed(&listed(&[("sha256", "ab".repeat(31))])).expect_err("short");
        assert!(matches!(error, DigestError::Malformed { bytes: 32, .. }));
    }
}
