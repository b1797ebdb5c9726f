//! Signed image manifests and their verification against pinned keys.
//!
//! A manifest says what an image is (name, version, security counter,
//! hardware class) and pins its bytes (length and sha256). It is signed by
//! k of n pinned ed25519 keys. This is Uptane's "partial verification", for
//! devices that cannot run a full TUF client; molt-release builds these
//! from verified TUF metadata on devices that can.
//!
//! Wire format (postcard): an [`Envelope`] holding the encoded [`Manifest`]
//! body and the signatures over `MANIFEST_SIGNING_DOMAIN || body`. The body
//! is decoded only after enough signatures verified over its raw bytes, so
//! no unverified byte is ever interpreted.

use alloc::string::String;
use alloc::vec::Vec;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::version::Version;

/// Upper bound on an encoded signed manifest, checked before decoding.
pub const MANIFEST_SIZE_MAX: usize = 4096;
/// Upper bound on the signatures a manifest may carry.
pub const SIGNATURES_MAX: usize = 16;
/// Upper bound on the length of `name` and `hardware_class`.
pub const NAME_LEN_MAX: usize = 64;
/// Prefix of every signed message, so a manifest signature can never be
/// replayed as a signature over anything else.
pub const MANIFEST_SIGNING_DOMAIN: &[u8] = b"molt-manifest-v1\0";

/// What an image is and which bytes it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The kind of image, e.g. `agent` or `module/threshold`.
    pub name: String,
    /// The image's version.
    pub version: Version,
    /// Anti-rollback counter; a device never accepts a lower one than it
    /// has committed.
    pub security_counter: u64,
    /// Exact length of the image in bytes.
    pub length: u64,
    /// sha256 of the image.
    pub sha256: [u8; 32],
    /// The hardware the image is built for; must equal the device's.
    pub hardware_class: String,
}

/// The signed wire form of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The postcard encoding of a [`Manifest`].
    pub body: Vec<u8>,
    /// Signatures over [`MANIFEST_SIGNING_DOMAIN`] followed by `body`.
    pub signatures: Vec<ManifestSignature>,
}

/// One key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSignature {
    /// The signer's ed25519 public key.
    pub public_key: [u8; 32],
    /// The 64-byte ed25519 signature.
    pub signature: Vec<u8>,
}

/// The keys a device trusts to sign images, and how many must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    keys: Vec<VerifyingKey>,
    threshold: usize,
}

/// Why a manifest was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The encoded manifest exceeds [`MANIFEST_SIZE_MAX`].
    #[error("manifest is {size} bytes, over the limit of {limit} (MANIFEST_SIZE_MAX)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a well-formed envelope or body.
    #[error("manifest is malformed: {0}")]
    Malformed(&'static str),
    /// More signatures than [`SIGNATURES_MAX`].
    #[error("manifest carries {count} signatures, over the limit of {limit} (SIGNATURES_MAX)")]
    TooManySignatures {
        /// How many it carries.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Fewer distinct pinned keys signed than the threshold requires.
    /// Duplicate signatures from one key count once; unknown keys and bad
    /// signatures count zero.
    #[error("manifest has valid signatures from {valid} pinned keys, below the threshold of {threshold}")]
    BelowThreshold {
        /// Distinct pinned keys with a valid signature.
        valid: usize,
        /// Required.
        threshold: usize,
    },
    /// A field is outside its allowed range.
    #[error("manifest field {field} is invalid: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// A trust root that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustRootError {
    /// Threshold of zero, or above the number of keys.
    #[error("threshold {threshold} is not between 1 and the {keys} pinned keys")]
    BadThreshold {
        /// Requested threshold.
        threshold: usize,
        /// Distinct keys.
        keys: usize,
    },
    /// More keys than [`SIGNATURES_MAX`].
    #[error("{keys} pinned keys exceed the limit of {limit} (SIGNATURES_MAX)")]
    TooManyKeys {
        /// Keys given.
        keys: usize,
        /// The limit.
        limit: usize,
    },
}

impl TrustRoot {
    /// Pins `keys` (duplicates are merged) and requires `threshold` of them.
    pub fn new(keys: &[VerifyingKey], threshold: usize) -> Result<TrustRoot, TrustRootError> {
        let mut distinct: Vec<VerifyingKey> = Vec::new();
        for key in keys {
            if !distinct.contains(key) {
                distinct.push(*key);
            }
        }
        if distinct.len() > SIGNATURES_MAX {
            return Err(TrustRootError::TooManyKeys {
                keys: distinct.len(),
                limit: SIGNATURES_MAX,
            });
        }
        if threshold == 0 || threshold > distinct.len() {
            return Err(TrustRootError::BadThreshold {
                threshold,
                keys: distinct.len(),
            });
        }
        Ok(TrustRoot {
            keys: distinct,
            threshold,
        })
    }

    /// The pinned keys.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    /// How many distinct pinned keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Checks signatures over the raw body first, then decodes and validates
    /// the body.
    pub fn verify(&self, signed: &[u8]) -> Result<Manifest, ManifestError> {
        if signed.len() > MANIFEST_SIZE_MAX {
            return Err(ManifestError::TooLarge {
                size: signed.len(),
                limit: MANIFEST_SIZE_MAX,
            });
        }
        let envelope: Envelope = match postcard::from_bytes(signed) {
            Ok(envelope) => envelope,
            Err(_) => return Err(ManifestError::Malformed("not a manifest envelope")),
        };
        if envelope.signatures.len() > SIGNATURES_MAX {
            return Err(ManifestError::TooManySignatures {
                count: envelope.signatures.len(),
                limit: SIGNATURES_MAX,
            });
        }
        let message = signing_message(&envelope.body);
        let mut signed_by = [false; SIGNATURES_MAX];
        for entry in &envelope.signatures {
            let Some(key_idx) = self.keys.iter().position(|key| key.as_bytes() == &entry.public_key) else {
                continue;
            };
            let Ok(signature) = Signature::from_slice(&entry.signature) else {
                continue;
            };
            if self.keys[key_idx].verify_strict(&message, &signature).is_ok() {
                signed_by[key_idx] = true;
            }
        }
        let valid = signed_by.iter().filter(|signed| **signed).count();
        if valid < self.threshold {
            return Err(ManifestError::BelowThreshold {
                valid,
                threshold: self.threshold,
            });
        }
        decode_body(&envelope.body)
    }
}

/// Decodes and validates a manifest body. Only call this on a body whose
/// signatures verified; it is public for fuzzing and tooling.
pub fn decode_body(body: &[u8]) -> Result<Manifest, ManifestError> {
    let manifest: Manifest = match postcard::from_bytes(body) {
        Ok(manifest) => manifest,
        Err(_) => return Err(ManifestError::Malformed("not a manifest body")),
    };
    manifest.validate()?;
    Ok(manifest)
}

impl Manifest {
    /// Checks the field ranges every accepted manifest satisfies.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_name("name", &self.name)?;
        check_name("hardware_class", &self.hardware_class)?;
        if self.length == 0 {
            return Err(ManifestError::InvalidField {
                field: "length",
                reason: "an image cannot be empty",
            });
        }
        Ok(())
    }

    /// Encodes and signs this manifest with each of `keys`.
    ///
    /// Used by release tooling and tests; devices only verify.
    pub fn sign(&self, keys: &[&SigningKey]) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let body = postcard::to_allocvec(self).map_err(|_| ManifestError::Malformed("body does not encode"))?;
        let message = signing_message(&body);
        let signatures = keys
            .iter()
            .map(|key| ManifestSignature {
                public_key: key.verifying_key().to_bytes(),
                signature: key.sign(&message).to_bytes().to_vec(),
            })
            .collect();
        let envelope = Envelope { body, signatures };
        let signed =
            postcard::to_allocvec(&envelope).map_err(|_| ManifestError::Malformed("envelope does not encode"))?;
        if signed.len() > MANIFEST_SIZE_MAX {
            return Err(ManifestError::TooLarge {
                size: signed.len(),
                limit: MANIFEST_SIZE_MAX,
            });
        }
        Ok(signed)
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), ManifestError> {
    if value.is_empty() {
        return Err(ManifestError::InvalidField { field, reason: "empty" });
    }
    if value.len() > NAME_LEN_MAX {
        return Err(ManifestError::InvalidField {
            field,
            reason: "longer than NAME_LEN_MAX (64) bytes",
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if !value.chars().all(allowed) {
        return Err(ManifestError::InvalidField {
            field,
            reason: "only ASCII letters, digits and -_./ are allowed",
        });
    }
    Ok(())
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(MANIFEST_SIGNING_DOMAIN.len() + body.len());
    message.extend_from_slice(MANIFEST_SIGNING_DOMAIN);
    message.extend_from_slice(body);
    message
}
