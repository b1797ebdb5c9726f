use crate::state::{State, StateError};

const LIMIT_BYTES: usize = 1 << 16;

fn accepted(bytes: &[u8]) {
    let result = State::from_guest(bytes.to_vec(), LIMIT_BYTES);
    assert!(result.is_ok(), "bytes {bytes:02x?} gave {result:?}");
}

fn not_dag_cbor(bytes: &[u8]) {
    let result = State::from_guest(bytes.to_vec(), LIMIT_BYTES);
    assert!(
        matches!(result, Err(StateError::NotDagCbor { .. })),
        "bytes {bytes:02x?} gave {result:?}"
    );
}

/// The CID of the empty DAG-CBOR map, as IPLD tooling (`ipfs dag put` of
/// `{}`) publishes it, pins codec, hash and encoding together.
#[test]
fn empty_map_has_the_well_known_cid() {
    let state = State::from_guest(vec![0xa0], LIMIT_BYTES).unwrap();
    assert_eq!(
        state.cid().to_string(),
        "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua"
    );
}

#[test]
fn canonical_values_are_accepted() {
    // {"b": 1, "aa": 2}: DAG-CBOR orders keys by length, then bytes.
    accepted(&[0xa2, 0x61, 0x62, 0x01, 0x62, 0x61, 0x61, 0x02]);
    // [1.5] as a 64-bit float.
    accepted(&[0x81, 0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
    // A byte string and a negative integer.
    accepted(&[0x82, 0x42, 0xde, 0xad, 0x20]);
}

/// Every encoding but the canonical one is refused, so one state has one
/// CID. The decoder refuses most of these itself; the re-encoding check in
/// `from_guest` catches whatever it lets through.
#[test]
fn non_canonical_encodings_are_rejected() {
    for bytes in [
        // {"aa": 2, "b": 1}: keys out of DAG-CBOR order.
        &[0xa2, 0x62, 0x61, 0x61, 0x02, 0x61, 0x62, 0x01][..],
        // {"a": 1, "a": 2}: a duplicate key.
        &[0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02][..],
        // 1 with a one-byte argument instead of inline.
        &[0x18, 0x01][..],
        // -1 with an eight-byte argument.
        &[0x3b, 0, 0, 0, 0, 0, 0, 0, 0][..],
        // "a" with a non-minimal length; the same for a list, a map and bytes.
        &[0x78, 0x01, 0x61][..],
        &[0x98, 0x01, 0x01][..],
        &[0xb8, 0x01, 0x61, 0x61, 0x01][..],
        &[0x58, 0x01, 0x61][..],
        // 1.0 as a 32-bit and as a 16-bit float.
        &[0xfa, 0x3f, 0x80, 0x00, 0x00][..],
        &[0xf9, 0x3c, 0x00][..],
    ] {
        let result = State::from_guest(bytes.to_vec(), LIMIT_BYTES);
        assert!(
            matches!(result, Err(StateError::NotCanonical | StateError::NotDagCbor { .. })),
            "bytes {bytes:02x?} gave {result:?}"
        );
    }
}

#[test]
fn malformed_or_forbidden_cbor_is_rejected() {
    // Truncated: a two-element list with one element.
    not_dag_cbor(&[0x82, 0x01]);
    // Empty input.
    not_dag_cbor(&[]);
    // Two values back to back.
    not_dag_cbor(&[0xa0, 0xa0]);
    // Indefinite-length list, forbidden in DAG-CBOR.
    not_dag_cbor(&[0x9f, 0x01, 0xff]);
    // Tag other than 42.
    not_dag_cbor(&[0xc1, 0x01]);
}

#[test]
fn non_finite_floats_are_rejected() {
    for bytes in [
        [0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
        [0xfb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0],
        [0xfb, 0xff, 0xf0, 0, 0, 0, 0, 0, 0],
    ] {
        let result = State::from_guest(bytes.to_vec(), LIMIT_BYTES);
        assert!(
            matches!(result, Err(StateError::NonFiniteFloat | StateError::NotDagCbor { .. })),
            "bytes {bytes:02x?} gave {result:?}"
        );
    }
}

/// Regression guard: hostile nesting must be a decode error, never a host
/// stack overflow.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let mut bytes = vec![0x81; 60_000];
    bytes.push(0x80);
    not_dag_cbor(&bytes);
}

#[test]
fn oversized_state_names_the_limit() {
    let mut bytes = vec![0x5a, 0, 0, 0x10, 0];
    bytes.resize(5 + 0x1000, 7);
    let error = State::from_guest(bytes, 100).unwrap_err();
    assert_eq!(
        error,
        StateError::TooLarge {
            size_bytes: 5 + 0x1000,
            limit_bytes: 100
        }
    );
    assert!(error.to_string().contains("state_bytes_max=100"), "{error}");
}
