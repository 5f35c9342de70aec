//! The crash model and damage: a fault-injecting device cuts the power at a
//! random instant and keeps a random subset of the unflushed sector writes
//! (so writes are lost and torn), or flips bits at rest. After each, the
//! store opens, `check` is clean, every acknowledged transaction is there
//! and no unacknowledged one is half there; a commit set aside as torn is
//! never one that was acknowledged; damage is reported as an error, never
//! returned as data, and under a confirmed commit never undoes it.

mod common;

use common::{Model, contents, fresh, value};
use skiff_store::fault::{CrashMode, FaultDevice, Rng};
use skiff_store::{CommitMode, MemDevice, Options, Store, StoreError, block_on, check};

const ITERATIONS: u64 = 240;

/// One random transaction: puts and deletes over a small key space, now
/// and then a long value.
async fn random_tx(
    store: &Store<&FaultDevice>,
    rng: &mut Rng,
    model: &Model,
    version: u64,
) -> Result<(Model, Result<u64, StoreError>), StoreError> {
    let mut next = model.clone();
    let mut tx = store.write().await?;
    for _ in 0..1 + rng.below(8) {
        let key = format!("k{:02}", rng.below(48)).into_bytes();
        if rng.below(4) == 0 {
            tx.delete(&key).await?;
            next.remove(&key);
        } else {
            let len = match rng.below(10) {
                0 => 600 + rng.below(12_000) as usize,
                _ => rng.below(200) as usize,
            };
            let v = value(&key, version, len);
            tx.put(&key, &v).await?;
            next.insert(key, v);
        }
    }
    Ok((next, tx.commit().await))
}

#[test]
fn crash_at_a_random_instant_keeps_every_acknowledged_transaction_and_no_half_one() {
    let mut discarded = 0;
    let mut in_flight_present = 0;
    for seed in 0..ITERATIONS {
        let mut rng = Rng::new(seed);
        let sector = if rng.below(2) == 0 { 512 } else { 4096 };
        let dev = FaultDevice::new(sector, fresh(sector, 512));
        // One seed in four two-phase, the others the default one flush.
        let commit = if seed % 4 == 0 { CommitMode::TwoPhase } else { CommitMode::OneFlush };
        let options = Options { cache_pages: 16 + rng.below(64) as usize, commit };
        let store = block_on(Store::open(&dev, options)).unwrap();
        let mut model = Model::new();
        let mut in_flight: Option<Model> = None;
        let mut acked_generation = 0;
        let warm_up = rng.below(12);
        for version in 0..200 {
            if version == warm_up {
                dev.cut_power_after(rng.below(60));
            }
            // Now and then the service goes idle and confirms.
            if rng.below(4) == 0 && block_on(store.sync()).is_err() {
                break;
            }
            match block_on(random_tx(&store, &mut rng, &model, version)) {
                Ok((next, Ok(generation))) => {
                    model = next;
                    acked_generation = generation;
                }
                Ok((next, Err(_))) => {
                    // Commit was called and failed: it may or may not be there.
                    in_flight = Some(next);
                    break;
                }
                Err(StoreError::Full { .. }) => continue,
                Err(_) => break,
            }
        }
        assert!(dev.is_off(), "seed {seed}: the power never went");
        drop(store);
        let image = dev.crash(CrashMode::Random(seed ^ 0x5eed));
        let after = MemDevice::from_bytes(sector, image);
        let report = block_on(check(&after)).unwrap_or_else(|e| panic!("seed {seed}: check: {e}"));
        assert!(report.problems.is_empty(), "seed {seed}: {:?}", report.problems);
        if let Some(g) = report.discarded {
            assert!(g > acked_generation, "seed {seed}: generation {g} was acknowledged and set aside");
            discarded += 1;
        }
        let store =
            block_on(Store::open(after, Options::default())).unwrap_or_else(|e| panic!("seed {seed}: open: {e}"));
        let found = contents(&store).unwrap_or_else(|e| panic!("seed {seed}: read: {e}"));
        if found != model {
            let Some(next) = &in_flight else {
                panic!("seed {seed}: an acknowledged transaction is missing or an unacknowledged one is there");
            };
            assert!(&found == next, "seed {seed}: the unacknowledged transaction is half there");
            in_flight_present += 1;
        }
        // Open confirmed what it chose: damage to it can no longer pass
        // for a torn commit.
        assert!(store.info().confirmed, "seed {seed}: open left the commit unconfirmed");
        // The recovered store takes writes, and stays sound.
        block_on(store.put(b"after", b"crash")).unwrap();
        let report = block_on(check(store.device())).unwrap();
        assert!(report.problems.is_empty(), "seed {seed}, after a write: {:?}", report.problems);
        assert_eq!(report.discarded, None, "seed {seed}: the torn superblock outlived a commit");
    }
    // The model was exercised both ways.
    assert!(discarded > 0, "no crash ever left an incomplete one-flush commit");
    assert!(in_flight_present > 0, "no in-flight commit ever survived");
}

#[test]
fn writes_lost_before_a_flush_are_recovered_to_the_last_commit() {
    for mode in [CrashMode::DropAll, CrashMode::KeepAll] {
        let dev = FaultDevice::new(512, fresh(512, 128));
        let store = block_on(Store::open(&dev, Options::default())).unwrap();
        block_on(store.put(b"a", b"1")).unwrap();
        // The power goes before the second commit's flush: its writes are
        // made, never flushed.
        let (writes, flushes) = dev.counts();
        dev.cut_power_after(1);
        let err = block_on(store.put(b"b", &value(b"b", 0, 9000))).unwrap_err();
        assert!(matches!(err, StoreError::Failed(_) | StoreError::Device(_)), "{err}");
        assert!(dev.counts().0 > writes && dev.counts().1 == flushes);
        drop(store);
        let after = MemDevice::from_bytes(512, dev.crash(mode));
        let store = block_on(Store::open(after, Options::default())).unwrap();
        let found = contents(&store).unwrap();
        assert_eq!(found.get(&b"a"[..]), Some(&b"1".to_vec()), "{mode:?}");
        assert!(found.len() == 1, "{mode:?}: only the first commit is there (the second made no write)");
    }
}

/// Two commits of `a`, then the newest commit's root page with its first
/// sector as it was before: a torn write.
fn torn_second_commit(commit: CommitMode) -> (Vec<u8>, u64) {
    let dev = FaultDevice::new(512, fresh(512, 128));
    let store = block_on(Store::open(&dev, Options { commit, ..Options::default() })).unwrap();
    block_on(store.put(b"a", b"1")).unwrap();
    let good = dev.visible();
    block_on(store.put(b"a", b"2")).unwrap();
    let generation = store.info().generation;
    drop(store);
    let mut torn = dev.visible();
    // The root of the newest commit: the page whose bytes changed besides
    // the superblocks.
    let changed: Vec<usize> =
        (2..128).filter(|p| good[p * 4096..(p + 1) * 4096] != torn[p * 4096..(p + 1) * 4096]).collect();
    assert!(!changed.is_empty());
    let p = changed[0];
    torn[p * 4096..p * 4096 + 512].copy_from_slice(&good[p * 4096..p * 4096 + 512]);
    (torn, generation)
}

#[test]
fn a_torn_one_flush_commit_is_set_aside_and_the_one_before_it_is_used() {
    let (torn, generation) = torn_second_commit(CommitMode::OneFlush);
    let after = MemDevice::from_bytes(512, torn);
    let report = block_on(check(&after)).unwrap();
    assert_eq!(report.discarded, Some(generation));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let store = block_on(Store::open(after, Options::default())).unwrap();
    assert_eq!(block_on(store.get(b"a")).unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.info().discarded, Some(generation));
}

#[test]
fn under_a_two_phase_superblock_a_bad_page_is_damage_and_never_undoes_the_commit() {
    let (torn, _) = torn_second_commit(CommitMode::TwoPhase);
    let after = MemDevice::from_bytes(512, torn);
    let report = block_on(check(&after)).unwrap();
    assert_eq!(report.discarded, None);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].to_string().contains("checksum mismatch"), "{}", report.problems[0]);
    let store = block_on(Store::open(after, Options::default())).unwrap();
    assert!(matches!(block_on(store.get(b"a")), Err(StoreError::Corrupt { .. })));
    assert_eq!(block_on(store.put(b"a", b"3")), Err(StoreError::Damaged(1)));
}

#[test]
fn flipped_bits_are_detected_never_returned_as_data() {
    flipped_bits(CommitMode::TwoPhase, false);
}

#[test]
fn flipped_bits_under_confirmed_one_flush_commits_are_damage_and_never_undo_a_commit() {
    flipped_bits(CommitMode::OneFlush, true);
}

#[test]
fn flipped_bits_under_an_unconfirmed_commit_are_detected_or_set_it_aside() {
    flipped_bits(CommitMode::OneFlush, false);
}

/// Six commits (`close`d when `confirm`), then one bit flipped at a time
/// anywhere in the used pages.
fn flipped_bits(commit: CommitMode, confirm: bool) {
    // A store with small and long values over several commits.
    let dev = FaultDevice::new(4096, fresh(4096, 256));
    let options = Options { commit, ..Options::default() };
    let (last, previous, last_gen) = {
        let store = block_on(Store::open(&dev, options)).unwrap();
        let mut previous = Model::new();
        let mut model = Model::new();
        for round in 0..6u64 {
            previous = model.clone();
            block_on(async {
                let mut tx = store.write().await.unwrap();
                for i in 0..40u64 {
                    let k = format!("key{i:02}").into_bytes();
                    let v = value(&k, round, if i % 9 == 0 { 9000 } else { 50 + i as usize });
                    tx.put(&k, &v).await.unwrap();
                    model.insert(k, v);
                }
                tx.commit().await.unwrap();
            });
        }
        let generation = store.info().generation;
        if confirm {
            block_on(store.close()).unwrap();
        }
        (model, previous, generation)
    };
    // Unless closed, the newest commit is not confirmed: nothing after it
    // shows its pages durable.
    let image = dev.visible();
    let used_end = (0..256).rev().find(|p| image[p * 4096..(p + 1) * 4096].iter().any(|b| *b != 0)).unwrap() + 1;
    let mut rng = Rng::new(7);
    let (mut detected, mut by_check) = (0, 0);
    for _ in 0..150 {
        let byte = rng.below((used_end * 4096) as u64) as usize;
        let dev = FaultDevice::new(4096, image.clone());
        dev.flip_bit(byte, rng.below(8) as u8);
        let report = block_on(check(&dev)).unwrap();
        // Found as damage, or (one flush) as a newest commit set aside.
        by_check += usize::from(!report.problems.is_empty() || report.discarded.is_some());
        let store = match block_on(Store::open(&dev, Options::default())) {
            Ok(s) => s,
            Err(e) => panic!("one flipped bit made the store unopenable: {e}"),
        };
        let expected = if store.info().generation == last_gen { &last } else { &previous };
        let confirmed = commit == CommitMode::TwoPhase || confirm;
        if confirmed {
            assert_eq!(store.info().generation, last_gen, "a flipped bit undid a confirmed commit");
            assert_eq!(report.discarded, None, "a flipped bit passed for a torn commit");
        }
        for (k, _) in last.iter() {
            match block_on(store.get(k)) {
                Ok(v) => assert_eq!(v.as_ref(), expected.get(k), "wrong data served after a bit flip at {byte}"),
                Err(StoreError::Corrupt { .. }) => detected += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        // A closed store opens without its walk; the walk (before any
        // write) finds what open would have.
        let walked = block_on(store.finish_open());
        assert!(store.info().verified);
        if store.info().damage > 0 {
            assert!(matches!(walked, Err(StoreError::Damaged(_))), "{walked:?}");
            assert!(matches!(block_on(store.put(b"x", b"y")), Err(StoreError::Damaged(_))));
        }
    }
    assert!(by_check > 0, "check never saw a flipped bit");
    if commit == CommitMode::TwoPhase || confirm {
        assert!(detected > 0, "no read ever reported a flipped bit");
    }
}

#[test]
fn crash_during_group_commits_keeps_a_prefix_with_every_acknowledged_transaction() {
    use common::{Task, join_all};
    use std::cell::RefCell;
    for seed in 0..100u64 {
        let rng = RefCell::new(Rng::new(seed ^ 0xc0ffee));
        let commit = if seed % 2 == 0 { CommitMode::TwoPhase } else { CommitMode::OneFlush };
        let dev = FaultDevice::new(512, fresh(512, 512));
        let store = block_on(Store::open(&dev, Options { cache_pages: 32, commit })).unwrap();
        // The models after each commit, in the order the commits were made.
        let states = RefCell::new(vec![Model::new()]);
        let acked = RefCell::new(0usize);
        dev.cut_power_after(10 + rng.borrow_mut().below(80));
        let writers: Vec<Task<'_, ()>> = (0..8u64)
            .map(|w| {
                let (store, rng, states, acked) = (&store, &rng, &states, &acked);
                Box::pin(async move {
                    for version in 0..30u64 {
                        let Ok(mut tx) = store.write().await else { return };
                        let mut next = states.borrow().last().unwrap().clone();
                        let ops = 1 + rng.borrow_mut().below(5);
                        for _ in 0..ops {
                            let (k, del, len) = {
                                let mut r = rng.borrow_mut();
                                (format!("k{:02}", r.below(40)).into_bytes(), r.below(4) == 0, r.below(700) as usize)
                            };
                            let done = if del {
                                next.remove(&k);
                                tx.delete(&k).await.map(|_| ())
                            } else {
                                let v = value(&k, w * 1000 + version, len);
                                next.insert(k.clone(), v.clone());
                                tx.put(&k, &v).await
                            };
                            if done.is_err() {
                                return;
                            }
                        }
                        // Sealed in this order: the lock is held until then.
                        let index = {
                            let mut s = states.borrow_mut();
                            s.push(next);
                            s.len() - 1
                        };
                        match tx.commit().await {
                            Ok(_) => {
                                let mut a = acked.borrow_mut();
                                *a = (*a).max(index);
                            }
                            Err(_) => return,
                        }
                    }
                }) as Task<'_, ()>
            })
            .collect();
        join_all(writers);
        assert!(dev.is_off(), "seed {seed}: the power never went");
        drop(store);
        let after = MemDevice::from_bytes(512, dev.crash(CrashMode::Random(seed)));
        let report = block_on(check(&after)).unwrap();
        assert!(report.problems.is_empty(), "seed {seed}: {:?}", report.problems);
        let store = block_on(Store::open(after, Options::default())).unwrap();
        let found = contents(&store).unwrap();
        let states = states.into_inner();
        let acked = acked.into_inner();
        let k = states.iter().position(|s| *s == found);
        assert!(
            states[acked..].contains(&found),
            "seed {seed}: the store holds state {k:?}, not a commit at or after the last acknowledged ({acked})"
        );
    }
}

/// Two commits of `a` (one flush each), the second left unconfirmed or
/// confirmed by `confirm`; then a bit flipped in the root page the second
/// one wrote.
fn flipped_in_newest(confirm: impl FnOnce(&Store<&FaultDevice>)) -> (FaultDevice, u64) {
    let dev = FaultDevice::new(512, fresh(512, 128));
    let store = block_on(Store::open(&dev, Options::default())).unwrap();
    block_on(store.put(b"a", b"1")).unwrap();
    let good = dev.visible();
    block_on(store.put(b"a", b"2")).unwrap();
    let generation = store.info().generation;
    let written = dev.visible();
    confirm(&store);
    drop(store);
    let p = (2..128).find(|p| good[p * 4096..(p + 1) * 4096] != written[p * 4096..(p + 1) * 4096]).unwrap();
    dev.flip_bit(p * 4096 + 100, 3);
    (dev.into_read_only(), generation)
}

fn assert_damage_not_rollback(dev: &FaultDevice, generation: u64) {
    let report = block_on(check(dev)).unwrap();
    assert_eq!(report.discarded, None, "a flipped bit in a confirmed commit passed for a torn commit");
    assert_eq!(report.superblock.generation, generation);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].to_string().contains("checksum mismatch"), "{}", report.problems[0]);
    let store = block_on(Store::open(dev, Options::default())).unwrap();
    assert_eq!(store.info().generation, generation, "the acknowledged commit was rolled back");
    assert!(matches!(block_on(store.get(b"a")), Err(StoreError::Corrupt { .. })));
    assert_eq!(block_on(store.put(b"a", b"3")), Err(StoreError::ReadOnly));
}

#[test]
fn a_flipped_bit_in_a_synced_one_flush_commit_is_damage_not_a_torn_commit() {
    let (dev, generation) = flipped_in_newest(|store| {
        assert!(!store.info().confirmed);
        let flushes = store.device().counts().1;
        block_on(store.sync()).unwrap();
        assert!(store.info().confirmed);
        assert_eq!(store.device().counts().1, flushes + 1, "a confirmation is one flush");
        block_on(store.sync()).unwrap();
        assert_eq!(store.device().counts().1, flushes + 1, "a confirmed store has nothing to sync");
    });
    assert_damage_not_rollback(&dev, generation);
}

#[test]
fn open_confirms_the_newest_commit_so_a_later_flipped_bit_is_damage() {
    let (dev, generation) = flipped_in_newest(|store| {
        // A crash now: the commit is durable, never confirmed. Opening it
        // again (writable) confirms it.
        let dev = FaultDevice::new(512, store.device().visible());
        let reopened = block_on(Store::open(&dev, Options::default())).unwrap();
        assert!(reopened.info().confirmed);
        let confirmed = dev.visible();
        // The test's device takes the confirmed superblocks.
        for slot in 0..2 {
            let at = slot * 4096;
            let (d, c) = (&store.device().visible()[at..at + 4096], &confirmed[at..at + 4096]);
            for (i, (a, b)) in d.iter().zip(c).enumerate() {
                for bit in 0..8 {
                    if (a ^ b) & (1 << bit) != 0 {
                        store.device().flip_bit(at + i, bit);
                    }
                }
            }
        }
    });
    assert_damage_not_rollback(&dev, generation);
}

#[test]
fn the_next_commit_confirms_the_one_before_so_a_torn_commit_never_takes_two_with_it() {
    // Commits 1 and 2 of `a`; commit 3 torn by a crash before its flush
    // (its superblock reached the disk, its pages did not); a bit flipped
    // at rest in commit 2's root. Commit 3's superblock shows commit 2 was
    // durable, so commit 2's bad page is damage: reported, never served,
    // and nothing older is brought back.
    let dev = FaultDevice::new(512, fresh(512, 128));
    let store = block_on(Store::open(&dev, Options::default())).unwrap();
    block_on(store.put(b"a", b"1")).unwrap();
    let one = dev.visible();
    block_on(store.put(b"a", b"2")).unwrap();
    let two = dev.visible();
    let root2 = (2..128).find(|p| one[p * 4096..(p + 1) * 4096] != two[p * 4096..(p + 1) * 4096]).unwrap();
    let (writes, _) = dev.counts();
    // The power goes before the flush of commit 3.
    dev.cut_power_after(2);
    assert!(block_on(store.put(b"b", b"3")).is_err());
    assert_eq!(dev.counts().0, writes + 2, "commit 3 wrote its page and its superblock");
    drop(store);
    let mut image = dev.crash(CrashMode::DropAll);
    // Keep commit 3's superblock, not its page.
    let torn = dev.visible();
    let slot3 = (0..2).find(|s| image[s * 4096..(s + 1) * 4096] != torn[s * 4096..(s + 1) * 4096]).unwrap();
    image[slot3 * 4096..(slot3 + 1) * 4096].copy_from_slice(&torn[slot3 * 4096..(slot3 + 1) * 4096]);
    // Without the flip, commit 3 is set aside and commit 2 used.
    let report = block_on(check(&MemDevice::from_bytes(512, image.clone()))).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.discarded, Some(report.superblock.generation + 1));
    image[root2 * 4096 + 200] ^= 4;
    let after = MemDevice::from_bytes(512, image);
    let report = block_on(check(&after)).unwrap();
    assert!(!report.problems.is_empty(), "the flipped bit in commit 2 went unreported");
    let store = block_on(Store::open(after, Options::default())).unwrap();
    assert!(store.info().damage > 0);
    match block_on(store.get(b"a")) {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("commit 2's damaged page gave {other:?}"),
    }
}

/// A store closed cleanly (its newest commit confirmed) opens without
/// walking its tree; a bit flipped at rest in a leaf is then found by the
/// walk that runs before the first write, which is refused with nothing
/// written, as when open finds it.
#[test]
fn damage_under_a_deferred_open_refuses_the_first_write_before_anything_is_written() {
    let dev = FaultDevice::new(512, fresh(512, 256));
    let store = block_on(Store::open(&dev, Options::default())).unwrap();
    block_on(async {
        let mut tx = store.write().await.unwrap();
        for i in 0..400u32 {
            tx.put(format!("key{i:04}").as_bytes(), &value(b"d", u64::from(i), 60)).await.unwrap();
        }
        tx.commit().await.unwrap();
    });
    block_on(store.close()).unwrap();
    let image = dev.visible();
    // A leaf away from the one holding key0000.
    let clean = block_on(Store::open(MemDevice::from_bytes(512, image.clone()), Options::default())).unwrap();
    assert!(!clean.info().verified, "a confirmed commit's walk is deferred");
    let free_before_walk = clean.info().free_pages;
    block_on(clean.finish_open()).unwrap();
    assert_eq!(clean.info().free_pages, free_before_walk, "the superblock's count is what the walk finds");
    let sb_gen = clean.info().generation;
    let victim = (2..256)
        .filter(|p| {
            let page = &image[p * 4096..(p + 1) * 4096];
            page[0] == 1 && u64::from_le_bytes(page[16..24].try_into().unwrap()) == sb_gen
        })
        .nth(5)
        .expect("a few leaves");
    let dev = FaultDevice::new(512, image);
    dev.flip_bit(victim * 4096 + 300, 2);
    let store = block_on(Store::open(&dev, Options::default())).unwrap();
    assert!(!store.info().verified);
    assert_eq!(store.info().damage, 0, "nothing walked yet");
    // Reads work where they can.
    assert_eq!(block_on(store.get(b"key0000")).unwrap(), Some(value(b"d", 0, 60)));
    let writes = dev.counts().0;
    assert_eq!(block_on(store.put(b"x", b"y")), Err(StoreError::Damaged(1)));
    assert_eq!(dev.counts().0, writes, "a write reached the device before the walk refused it");
    assert!(store.info().verified);
    assert_eq!(store.info().damage, 1);
    assert_eq!(block_on(store.finish_open()), Err(StoreError::Damaged(1)));
    let report = block_on(check(&dev)).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}
