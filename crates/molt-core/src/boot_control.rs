//! The boot control record: which slot runs, which is on trial, and the
//! anti-rollback floor.
//!
//! Two copies are kept, each framed with a magic, a length, a sequence
//! number inside the body and a checksum. A write always replaces the copy
//! that is not the newest valid one, so a torn or lost write leaves the
//! previous record intact and readable.
//!
//! Frame: `MAGIC (4) | body length (u16 LE) | postcard body | sha256[..8]`
//! where the checksum covers everything before it.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::version::Version;

/// The two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// 0 for A, 1 for B.
    pub const fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    /// `"a"` or `"b"`.
    pub const fn label(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// What the engine knows about an image in a slot, copied from its verified
/// manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The image's version.
    pub version: Version,
    /// The image's security counter.
    pub security_counter: u64,
    /// Exact length in bytes.
    pub length: u64,
    /// sha256 of the image.
    pub sha256: [u8; 32],
}

/// The state of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlotState {
    /// Never written.
    Empty,
    /// Being written, or written with the wrong digest: never bootable.
    Invalid,
    /// Holds a complete image whose digest was checked after writing.
    Ready(ImageInfo),
    /// Held an image that failed its trial and was rolled back; kept so the
    /// device can report which version it refused.
    Rejected(ImageInfo),
}

impl SlotState {
    /// The image info if the slot is ready.
    pub const fn ready(&self) -> Option<&ImageInfo> {
        match self {
            SlotState::Ready(info) => Some(info),
            _ => None,
        }
    }
}

/// The durable decision state of one image kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BootRecord {
    /// Increases by one with every write; the newest valid copy wins.
    pub seq: u64,
    /// The committed slot, if any image was ever committed.
    pub active: Option<Slot>,
    /// The slot on trial, if any.
    pub trial: Option<Slot>,
    /// Boots the trial slot may still be given before automatic rollback.
    pub attempts_left: u8,
    /// The committed version; nothing below it is accepted.
    pub committed_version: Version,
    /// The highest committed security counter; it never decreases.
    pub security_counter: u64,
    /// Slot A and slot B.
    pub slots: [SlotState; 2],
}

impl Default for BootRecord {
    fn default() -> BootRecord {
        BootRecord {
            seq: 0,
            active: None,
            trial: None,
            attempts_left: 0,
            committed_version: Version::default(),
            security_counter: 0,
            slots: [SlotState::Empty; 2],
        }
    }
}

/// Magic at the start of every record frame.
pub const RECORD_MAGIC: [u8; 4] = *b"MBR1";
/// Upper bound on an encoded record frame, checked before decoding.
pub const RECORD_SIZE_MAX: usize = 256;
const HEADER_LEN: usize = 6;
const CHECKSUM_LEN: usize = 8;

/// Why a stored record copy was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Shorter than a frame header and checksum.
    #[error("record is truncated")]
    Truncated,
    /// Does not start with the record magic.
    #[error("record has a bad magic")]
    BadMagic,
    /// The length field exceeds [`RECORD_SIZE_MAX`] or the bytes present.
    #[error("record length {length} is out of range (RECORD_SIZE_MAX is 256)")]
    BadLength {
        /// The stated body length.
        length: usize,
    },
    /// The checksum does not match: a torn or corrupted write.
    #[error("record checksum mismatch")]
    Checksum,
    /// The checksum matched but the body does not decode.
    #[error("record body does not decode")]
    Malformed,
    /// The body decoded but breaks an invariant of the record.
    #[error("record is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl BootRecord {
    /// Checks the invariants every stored record satisfies.
    pub fn validate(&self) -> Result<(), RecordError> {
        if let Some(active) = self.active {
            let Some(info) = self.slots[active.index()].ready() else {
                return Err(RecordError::Inconsistent("active slot is not ready"));
            };
            if info.version != self.committed_version {
                return Err(RecordError::Inconsistent(
                    "active image version differs from the committed version",
                ));
            }
            if info.security_counter > self.security_counter {
                return Err(RecordError::Inconsistent(
                    "active image security counter exceeds the record's",
                ));
            }
        }
        match self.trial {
            Some(trial) => {
                if Some(trial) == self.active {
                    return Err(RecordError::Inconsistent("trial slot is the active slot"));
                }
                if self.slots[trial.index()].ready().is_none() {
                    return Err(RecordError::Inconsistent("trial slot is not ready"));
                }
            }
            None => {
                if self.attempts_left != 0 {
                    return Err(RecordError::Inconsistent("attempts left without a trial"));
                }
            }
        }
        Ok(())
    }

    /// Encodes this record as a checksummed frame.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.validate()?;
        let body = postcard::to_allocvec(self).map_err(|_| RecordError::Malformed)?;
        let frame_len = HEADER_LEN + body.len() + CHECKSUM_LEN;
        if frame_len > RECORD_SIZE_MAX {
            return Err(RecordError::BadLength { length: body.len() });
        }
        let body_len = u16::try_from(body.len()).map_err(|_| RecordError::BadLength { length: body.len() })?;
        let mut frame = Vec::with_capacity(frame_len);
        frame.extend_from_slice(&RECORD_MAGIC);
        frame.extend_from_slice(&body_len.to_le_bytes());
        frame.extend_from_slice(&body);
        let checksum = Sha256::digest(&frame);
        frame.extend_from_slice(&checksum[..CHECKSUM_LEN]);
        Ok(frame)
    }

    /// Decodes a frame, which may be followed by padding.
    pub fn decode(bytes: &[u8]) -> Result<BootRecord, RecordError> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(RecordError::Truncated);
        }
        if bytes[..4] != RECORD_MAGIC {
            return Err(RecordError::BadMagic);
        }
        let body_len = usize::from(u16::from_le_bytes([bytes[4], bytes[5]]));
        let frame_len = HEADER_LEN + body_len + CHECKSUM_LEN;
        if frame_len > RECORD_SIZE_MAX || frame_len > bytes.len() {
            return Err(RecordError::BadLength { length: body_len });
        }
        let (covered, rest) = bytes.split_at(HEADER_LEN + body_len);
        let checksum = Sha256::digest(covered);
        if checksum[..CHECKSUM_LEN] != rest[..CHECKSUM_LEN] {
            return Err(RecordError::Checksum);
        }
        let (record, unread) =
            postcard::take_from_bytes::<BootRecord>(&covered[HEADER_LEN..]).map_err(|_| RecordError::Malformed)?;
        if !unread.is_empty() {
            return Err(RecordError::Malformed);
        }
        record.validate()?;
        Ok(record)
    }
}
