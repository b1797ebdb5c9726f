use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

use crate::sim::flash::SimFlashError;
use crate::sim::{Damage, Fault, SimFlash};
use crate::storage::StorageErrorKind;

type Flash = SimFlash<4, 64>;

fn err(kind: StorageErrorKind) -> Result<(), SimFlashError> {
    Err(SimFlashError { kind })
}

/// Arms a cut at the next operation.
fn cut_next(flash: &mut Flash, damage: Damage) {
    flash.set_fault(Fault::Cut { at: 1, damage });
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8) ^ 0x5A).collect()
}

#[test]
fn new_flash_is_erased() {
    for erased in [0xFF, 0x00] {
        let mut flash = Flash::new(256, erased);
        assert_eq!(flash.capacity(), 256);
        assert_eq!(flash.memory(), vec![erased; 256]);
        let mut buf = [0x11; 3];
        flash.read(5, &mut buf).unwrap();
        assert_eq!(buf, [erased; 3]);
    }
}

#[test]
fn write_then_read_round_trips() {
    let mut flash = Flash::new(256, 0xFF);
    let data = pattern(8);
    flash.write(64, &data).unwrap();
    let mut buf = [0; 10];
    flash.read(63, &mut buf).unwrap();
    assert_eq!(buf[0], 0xFF);
    assert_eq!(&buf[1..9], data.as_slice());
    assert_eq!(buf[9], 0xFF);
}

#[test]
fn misuse_is_rejected_without_effect() {
    let mut flash = Flash::new(256, 0xFF);
    let cases: [(&str, Result<(), SimFlashError>, StorageErrorKind); 7] = [
        (
            "unaligned offset",
            flash.clone().write(2, &[0; 4]),
            StorageErrorKind::NotAligned,
        ),
        (
            "unaligned length",
            flash.clone().write(0, &[0; 3]),
            StorageErrorKind::NotAligned,
        ),
        (
            "write past end",
            flash.clone().write(252, &[0; 8]),
            StorageErrorKind::OutOfBounds,
        ),
        (
            "read past end",
            flash.clone().read(250, &mut [0; 7]),
            StorageErrorKind::OutOfBounds,
        ),
        (
            "unaligned erase",
            flash.clone().erase(0, 32),
            StorageErrorKind::NotAligned,
        ),
        (
            "erase past end",
            flash.clone().erase(192, 320),
            StorageErrorKind::OutOfBounds,
        ),
        (
            "reversed erase",
            flash.clone().erase(128, 64),
            StorageErrorKind::OutOfBounds,
        ),
    ];
    for (what, got, kind) in cases {
        assert_eq!(got, err(kind), "{what}");
    }
    flash.write(0, &[1, 2, 3, 4]).unwrap();
    assert_eq!(flash.write(0, &[1, 2, 3, 4]), err(StorageErrorKind::NotErased));
    assert_eq!(flash.write(0, &[0xFF; 4]), err(StorageErrorKind::NotErased));
    assert_eq!(&flash.memory()[..4], [1, 2, 3, 4]);
}

#[test]
fn write_over_any_programmed_byte_is_not_erased() {
    for erased in [0xFF, 0x00] {
        let programmed = !erased;
        let mut flash = Flash::new(128, erased);
        flash.write(12, &[programmed; 4]).unwrap();
        let before = flash.memory().to_vec();
        assert_eq!(flash.write(8, &[programmed; 8]), err(StorageErrorKind::NotErased));
        assert_eq!(flash.memory(), before.as_slice());
        // Writing the erased value into erased memory is allowed.
        flash.write(0, &[erased; 4]).unwrap();

        flash.erase(0, 64).unwrap();
        assert_eq!(flash.memory(), vec![erased; 128]);
        flash.write(8, &[programmed; 8]).unwrap();
    }
}

#[test]
fn error_kinds_map_to_nor_flash_kinds() {
    let cases = [
        (StorageErrorKind::NotAligned, NorFlashErrorKind::NotAligned),
        (StorageErrorKind::OutOfBounds, NorFlashErrorKind::OutOfBounds),
        (StorageErrorKind::NotErased, NorFlashErrorKind::Other),
        (StorageErrorKind::PowerLoss, NorFlashErrorKind::Other),
        (StorageErrorKind::Io, NorFlashErrorKind::Other),
    ];
    for (kind, nor) in cases {
        assert_eq!(SimFlashError { kind }.kind(), nor, "{kind:?}");
    }
}

#[test]
fn completed_cut_damage_lands_all_or_nothing() {
    let data = pattern(16);
    for (damage, lands) in [
        (Damage::KeepUnsynced, true),
        (Damage::LoseUnsynced, false),
        (Damage::LoseNames, false),
    ] {
        let mut flash = Flash::new(128, 0xFF);
        cut_next(&mut flash, damage);
        assert_eq!(flash.write(16, &data), err(StorageErrorKind::PowerLoss));
        assert!(flash.is_powered_off());
        let want = if lands { data.clone() } else { vec![0xFF; 16] };
        assert_eq!(&flash.memory()[16..32], want.as_slice(), "{damage:?}");
        assert!(flash.memory()[..16].iter().all(|b| *b == 0xFF));
        assert!(flash.memory()[32..].iter().all(|b| *b == 0xFF));
    }
}

#[test]
fn torn_byte_write_lands_a_prefix() {
    let data = pattern(16);
    let mut tears = BTreeSet::new();
    for seed in 0..64 {
        let mut flash = Flash::new(64, 0xFF);
        cut_next(&mut flash, Damage::TornByte { seed });
        assert_eq!(flash.write(0, &data), err(StorageErrorKind::PowerLoss));
        let region = &flash.memory()[..16];
        let t = region.iter().zip(&data).take_while(|(a, b)| a == b).count();
        assert!(t < 16, "seed {seed}: whole write landed");
        assert!(region[t..].iter().all(|b| *b == 0xFF), "seed {seed}: {region:?}");
        tears.insert(t);

        let mut again = Flash::new(64, 0xFF);
        cut_next(&mut again, Damage::TornByte { seed });
        let _ = again.write(0, &data);
        assert_eq!(again.memory(), flash.memory(), "seed {seed}");
    }
    assert!(tears.len() >= 8, "tear positions barely vary: {tears:?}");
    assert!(tears.iter().any(|t| t % 4 != 0), "never tore inside a word");
}

#[test]
fn torn_word_write_lands_whole_words() {
    let data = pattern(32);
    let mut tears = BTreeSet::new();
    for seed in 0..64 {
        let mut flash = Flash::new(64, 0xFF);
        cut_next(&mut flash, Damage::TornWord { seed });
        assert_eq!(flash.write(0, &data), err(StorageErrorKind::PowerLoss));
        let region = &flash.memory()[..32];
        let t = region.iter().zip(&data).take_while(|(a, b)| a == b).count();
        assert_eq!(t % 4, 0, "seed {seed}: tore inside a word");
        assert!(t < 32, "seed {seed}: whole write landed");
        assert!(region[t..].iter().all(|b| *b == 0xFF), "seed {seed}");
        tears.insert(t);
    }
    assert!(tears.len() >= 5, "tear positions barely vary: {tears:?}");
}

#[test]
fn random_subset_write_lands_whole_words_deterministically() {
    let data = pattern(32);
    let mut outcomes = BTreeSet::new();
    for seed in 0..64 {
        let run = || {
            let mut flash = Flash::new(64, 0xFF);
            cut_next(&mut flash, Damage::RandomSubset { seed });
            assert_eq!(flash.write(0, &data), err(StorageErrorKind::PowerLoss));
            flash.memory()[..32].to_vec()
        };
        let got = run();
        assert_eq!(run(), got, "seed {seed}");
        for (word, want) in got.chunks(4).zip(data.chunks(4)) {
            assert!(word == want || word == [0xFF; 4], "seed {seed}: {got:?}");
        }
        outcomes.insert(got);
    }
    assert!(outcomes.len() > 30, "only {} outcomes", outcomes.len());
}

#[test]
fn torn_erase_erases_a_prefix() {
    let mut programmed = Flash::new(128, 0xFF);
    programmed.write(0, &[0u8; 128]).unwrap();
    let mut tears = BTreeSet::new();
    for seed in 0..64 {
        let mut flash = programmed.clone();
        cut_next(&mut flash, Damage::TornByte { seed });
        assert_eq!(flash.erase(0, 128), err(StorageErrorKind::PowerLoss));
        let t = flash.memory().iter().take_while(|b| **b == 0xFF).count();
        assert!(t < 128, "seed {seed}: whole erase landed");
        assert!(flash.memory()[t..].iter().all(|b| *b == 0), "seed {seed}");
        tears.insert(t);
    }
    assert!(tears.len() >= 20, "tear positions barely vary: {tears:?}");
    // Erase on a flash that erases to 0x00 lands zeros.
    let mut zero = Flash::new(64, 0x00);
    zero.write(0, &[0xAB; 64]).unwrap();
    cut_next(&mut zero, Damage::KeepUnsynced);
    assert_eq!(zero.erase(0, 64), err(StorageErrorKind::PowerLoss));
    assert_eq!(zero.memory(), [0u8; 64]);
}

#[test]
fn random_subset_erase_erases_whole_words() {
    let mut programmed = Flash::new(64, 0xFF);
    programmed.write(0, &[0x11; 64]).unwrap();
    let mut outcomes = BTreeSet::new();
    for seed in 0..32 {
        let mut flash = programmed.clone();
        cut_next(&mut flash, Damage::RandomSubset { seed });
        assert_eq!(flash.erase(0, 64), err(StorageErrorKind::PowerLoss));
        for word in flash.memory().chunks(4) {
            assert!(word == [0xFF; 4] || word == [0x11; 4], "seed {seed}");
        }
        outcomes.insert(flash.memory().to_vec());
    }
    assert!(outcomes.len() > 20);
}

#[test]
fn invalid_operation_at_the_cut_changes_nothing() {
    let mut flash = Flash::new(64, 0xFF);
    flash.write(0, &[1; 4]).unwrap();
    let before = flash.memory().to_vec();
    for op in 0..3 {
        let mut cut = flash.clone();
        cut_next(&mut cut, Damage::KeepUnsynced);
        let got = match op {
            0 => cut.write(0, &[2; 4]),
            1 => cut.write(2, &[2; 4]),
            _ => cut.erase(0, 4),
        };
        assert_eq!(got, err(StorageErrorKind::PowerLoss), "op {op}");
        assert!(cut.is_powered_off());
        assert_eq!(cut.memory(), before.as_slice(), "op {op}");
    }
}

#[test]
fn cut_during_read_changes_nothing_and_powers_off() {
    let mut flash = Flash::new(64, 0xFF);
    flash.write(0, &[1; 4]).unwrap();
    cut_next(&mut flash, Damage::KeepUnsynced);
    let mut buf = [9; 4];
    assert_eq!(flash.read(0, &mut buf), err(StorageErrorKind::PowerLoss));
    assert_eq!(buf, [9; 4]);
    assert!(flash.is_powered_off());
}

#[test]
fn cut_makes_every_later_operation_fail_until_reboot() {
    let mut flash = Flash::new(128, 0xFF);
    flash.set_fault(Fault::Cut {
        at: 3,
        damage: Damage::KeepUnsynced,
    });
    let mut buf = [0; 4];
    flash.write(0, &[1; 4]).unwrap();
    flash.read(0, &mut buf).unwrap();
    assert!(!flash.is_powered_off());
    assert_eq!(flash.write(4, &[2; 4]), err(StorageErrorKind::PowerLoss));
    assert!(flash.is_powered_off());
    assert_eq!(flash.read(0, &mut buf), err(StorageErrorKind::PowerLoss));
    assert_eq!(flash.write(8, &[3; 4]), err(StorageErrorKind::PowerLoss));
    assert_eq!(flash.erase(0, 64), err(StorageErrorKind::PowerLoss));
    assert_eq!(flash.ops(), 6);
    assert_eq!(&flash.memory()[..12], [1, 1, 1, 1, 2, 2, 2, 2, 0xFF, 0xFF, 0xFF, 0xFF]);

    flash.reboot();
    assert!(!flash.is_powered_off());
    assert_eq!(flash.ops(), 0);
    flash.read(0, &mut buf).unwrap();
    assert_eq!(buf, [1; 4]);
    flash.write(8, &[3; 4]).unwrap();
}

#[test]
fn operations_are_counted_but_capacity_is_not() {
    let mut flash = Flash::new(128, 0xFF);
    assert_eq!(flash.ops(), 0);
    let _ = flash.capacity();
    flash.read(0, &mut [0; 1]).unwrap();
    flash.write(0, &[0; 4]).unwrap();
    flash.erase(0, 64).unwrap();
    let _ = flash.write(1, &[0; 4]);
    let _ = flash.capacity();
    assert_eq!(flash.ops(), 4);
    flash.set_fault(Fault::None);
    assert_eq!(flash.ops(), 0);
    flash.read(0, &mut [0; 1]).unwrap();
    assert_eq!(flash.ops(), 1);
}

#[test]
fn fail_once_fails_one_operation_without_effect() {
    let mut flash = Flash::new(128, 0xFF);
    flash.set_fault(Fault::FailOnce {
        at: 2,
        kind: StorageErrorKind::Io,
    });
    flash.write(0, &[1; 4]).unwrap();
    assert_eq!(flash.erase(0, 64), err(StorageErrorKind::Io));
    assert_eq!(&flash.memory()[..4], [1; 4]);
    flash.write(4, &[2; 4]).unwrap();
    assert!(!flash.is_powered_off());
}

#[test]
fn fail_from_fails_everything_or_only_mutations() {
    for mutations_only in [false, true] {
        let mut flash = Flash::new(128, 0xFF);
        flash.set_fault(Fault::FailFrom {
            at: 2,
            kind: StorageErrorKind::Io,
            mutations_only,
        });
        flash.write(0, &[1; 4]).unwrap();
        assert_eq!(flash.write(4, &[2; 4]), err(StorageErrorKind::Io));
        assert_eq!(flash.erase(0, 64), err(StorageErrorKind::Io));
        let mut buf = [0; 8];
        let read = flash.read(0, &mut buf);
        if mutations_only {
            assert_eq!(read, Ok(()));
            assert_eq!(buf, [1, 1, 1, 1, 0xFF, 0xFF, 0xFF, 0xFF]);
        } else {
            assert_eq!(read, err(StorageErrorKind::Io));
        }
        flash.reboot();
        flash.write(4, &[2; 4]).unwrap();
        assert_eq!(&flash.memory()[..8], [1, 1, 1, 1, 2, 2, 2, 2]);
    }
}

#[test]
fn debug_shows_geometry_not_memory() {
    let flash = Flash::new(4096, 0xFF);
    let text = alloc::format!("{flash:?}");
    assert!(text.contains("capacity: 4096"), "{text}");
    assert!(text.len() < 200, "{text}");
}
