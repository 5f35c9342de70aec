//! The store's behaviour on healthy devices: reads, writes, transactions,
//! snapshots, long values, space coming back, a full device, group commit,
//! and the clear errors for devices that cannot hold a store.

mod common;

use common::{Task, contents, fresh, join_all, value};
use skiff_store::fault::FaultDevice;
use skiff_store::{BlockDevice, MemDevice, Options, Store, StoreError, block_on, check};

fn open(bytes: Vec<u8>, sector: u32) -> Store<MemDevice> {
    block_on(Store::open(MemDevice::from_bytes(sector, bytes), Options::default())).expect("open")
}

fn assert_clean<D: BlockDevice>(dev: &D) {
    let report = block_on(check(dev)).expect("check");
    assert!(report.problems.is_empty(), "check found: {:?}", report.problems);
}

#[test]
fn put_get_delete_and_scan_in_key_order() {
    let store = open(fresh(512, 128), 512);
    block_on(async {
        for k in ["b/2", "a/1", "b/1", "c", "b/3"] {
            store.put(k.as_bytes(), format!("v-{k}").as_bytes()).await.unwrap();
        }
        assert_eq!(store.get(b"b/1").await.unwrap(), Some(b"v-b/1".to_vec()));
        assert_eq!(store.get(b"nope").await.unwrap(), None);
        assert!(store.delete(b"b/2").await.unwrap());
        assert!(!store.delete(b"b/2").await.unwrap());
        let snap = store.snapshot();
        let listed = snap.scan(b"b/").collect(100).await.unwrap();
        let keys: Vec<_> = listed.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect();
        assert_eq!(keys, ["b/1", "b/3"]);
        assert_eq!(snap.len(), 4);
    });
    assert_clean(store.device());
}

#[test]
fn a_transaction_is_all_or_nothing() {
    let store = open(fresh(4096, 128), 4096);
    block_on(async {
        store.put(b"x", b"0").await.unwrap();
        let mut tx = store.write().await.unwrap();
        tx.put(b"x", b"1").await.unwrap();
        tx.put(b"y", b"1").await.unwrap();
        assert_eq!(tx.get(b"y").await.unwrap(), Some(b"1".to_vec()), "a transaction sees its own writes");
        assert_eq!(store.get(b"y").await.unwrap(), None, "others do not, before commit");
        drop(tx);
        assert_eq!(store.get(b"x").await.unwrap(), Some(b"0".to_vec()));
        let mut tx = store.write().await.unwrap();
        tx.put(b"x", b"2").await.unwrap();
        tx.put(b"y", b"2").await.unwrap();
        tx.delete(b"nothing").await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.get(b"x").await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.get(b"y").await.unwrap(), Some(b"2".to_vec()));
    });
    let bytes = store.into_device().into_bytes();
    let store = open(bytes, 4096);
    assert_eq!(contents(&store).unwrap().len(), 2);
    assert_clean(store.device());
}

#[test]
fn values_of_a_mebibyte_and_more_round_trip_and_their_space_comes_back() {
    let store = open(fresh(512, 2048), 512);
    let free_at_start = store.info().free_pages;
    let big = value(b"big", 1, (1 << 20) + 12345);
    block_on(async {
        store.put(b"big", &big).await.unwrap();
        store.put(b"small", b"s").await.unwrap();
        assert_eq!(store.get(b"big").await.unwrap().as_deref(), Some(&big[..]));
        let bigger = value(b"big", 2, 3 << 20);
        store.put(b"big", &bigger).await.unwrap();
        assert_eq!(store.get(b"big").await.unwrap().as_deref(), Some(&bigger[..]));
        assert!(store.delete(b"big").await.unwrap());
        assert!(store.delete(b"small").await.unwrap());
        // One more commit lets the last one's freed pages go.
        store.put(b"k", b"v").await.unwrap();
        store.delete(b"k").await.unwrap();
    });
    let info = store.info();
    assert_eq!(info.keys, 0);
    assert!(info.free_pages + 2 >= free_at_start, "free {} of {free_at_start} at the start", info.free_pages);
    assert_clean(store.device());
}

#[test]
fn many_keys_split_and_merge_the_tree_and_deletes_give_space_back() {
    let store = open(fresh(4096, 1024), 4096);
    let free_at_start = store.info().free_pages;
    block_on(async {
        for batch in 0..20u32 {
            let mut tx = store.write().await.unwrap();
            for i in 0..200u32 {
                let k = format!("key/{:05}", (i * 7919 + batch * 31) % 4000);
                tx.put(k.as_bytes(), &value(k.as_bytes(), 0, 40 + (i as usize % 300))).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
    });
    assert!(store.info().keys > 1000);
    assert_clean(store.device());
    block_on(async {
        let all = contents(&store).unwrap();
        let mut tx = store.write().await.unwrap();
        for k in all.keys() {
            assert!(tx.delete(k).await.unwrap());
        }
        tx.commit().await.unwrap();
        store.put(b"a", b"b").await.unwrap();
        store.delete(b"a").await.unwrap();
    });
    assert_eq!(store.info().keys, 0);
    assert_eq!(store.info().used_pages, 0);
    assert!(store.info().free_pages + 2 >= free_at_start);
    assert_clean(store.device());
}

#[test]
fn a_snapshot_keeps_its_view_while_writers_commit_and_its_pages_are_not_reused() {
    let store = open(fresh(512, 512), 512);
    block_on(async {
        for i in 0..100u32 {
            store.put(format!("k{i:03}").as_bytes(), &value(b"k", 0, 100)).await.unwrap();
        }
        let snap = store.snapshot();
        let generation = snap.generation();
        for round in 1..30u64 {
            let mut tx = store.write().await.unwrap();
            for i in 0..100u32 {
                tx.put(format!("k{i:03}").as_bytes(), &value(b"k", round, 100)).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        assert_eq!(snap.generation(), generation);
        for i in 0..100u32 {
            let got = snap.get(format!("k{i:03}").as_bytes()).await.unwrap();
            assert_eq!(got, Some(value(b"k", 0, 100)), "the snapshot sees the first version");
        }
        assert_eq!(store.get(b"k000").await.unwrap(), Some(value(b"k", 29, 100)));
    });
    assert_clean(store.device());
}

#[test]
fn a_full_device_is_a_clear_error_and_the_store_stays_readable_and_can_shrink() {
    let store = open(fresh(512, 64), 512);
    let mut written = Vec::new();
    let err = block_on(async {
        for i in 0..10_000u32 {
            let k = format!("fill/{i:05}");
            match store.put(k.as_bytes(), &value(k.as_bytes(), 0, 3000)).await {
                Ok(()) => written.push(k),
                Err(e) => return e,
            }
        }
        panic!("a 256 KiB store took 30 MB");
    });
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    block_on(async {
        for k in &written {
            assert_eq!(store.get(k.as_bytes()).await.unwrap(), Some(value(k.as_bytes(), 0, 3000)));
        }
        // Deletes may use the reserve, and what they free is reused.
        for k in &written[..written.len() / 2] {
            assert!(store.delete(k.as_bytes()).await.unwrap());
        }
        store.put(b"after", &value(b"after", 0, 3000)).await.unwrap();
    });
    assert_clean(store.device());
}

#[test]
fn sixty_four_concurrent_writers_share_a_few_flushes() {
    let dev = FaultDevice::new(512, fresh(512, 256));
    let store = block_on(Store::open(&dev, Options::default())).unwrap();
    let writers: Vec<Task<'_, Result<u64, StoreError>>> = (0..64u32)
        .map(|i| {
            let store = &store;
            Box::pin(async move {
                let mut tx = store.write().await?;
                tx.put(format!("writer/{i:02}").as_bytes(), &i.to_le_bytes()).await?;
                tx.commit().await
            }) as Task<'_, _>
        })
        .collect();
    let results = join_all(writers);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let (_, flushes) = dev.counts();
    let batches = store.batches();
    assert!(batches <= 3, "64 commits took {batches} batches");
    assert_eq!(flushes, batches, "the default commit flushes once per batch");
    drop(store);
    let store = block_on(Store::open(&dev, Options::default())).unwrap();
    assert_eq!(contents(&store).unwrap().len(), 64);
}

#[test]
fn a_read_only_device_opens_for_reading_and_refuses_writes() {
    let mut bytes = fresh(512, 64);
    {
        let store = open(bytes, 512);
        block_on(store.put(b"k", b"v")).unwrap();
        bytes = store.into_device().into_bytes();
    }
    let store = block_on(Store::open(MemDevice::from_bytes(512, bytes).into_read_only(), Options::default())).unwrap();
    assert_eq!(block_on(store.get(b"k")).unwrap(), Some(b"v".to_vec()));
    let err = block_on(store.put(b"k", b"w")).unwrap_err();
    assert_eq!(err, StoreError::ReadOnly);
    assert_eq!(err.to_string(), "the device is read-only");
    assert_eq!(block_on(store.get(b"k")).unwrap(), Some(b"v".to_vec()));
}

#[test]
fn devices_that_cannot_hold_a_store_get_clear_errors() {
    let small = block_on(Store::create(MemDevice::new(512, 100), Options::default())).unwrap_err();
    assert!(matches!(small, StoreError::TooSmall { bytes: 51200, min: 262144 }), "{small}");
    assert!(small.to_string().contains("at least 262144"), "{small}");

    let garbage: Vec<u8> = (0..64 * 4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let err = block_on(Store::open(MemDevice::from_bytes(512, garbage), Options::default())).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore(_)), "{err}");
    assert!(err.to_string().starts_with("not a Skiff store"), "{err}");
    let zeros = block_on(Store::open(MemDevice::new(512, 1024), Options::default())).unwrap_err();
    assert!(matches!(zeros, StoreError::NotAStore(_)), "{zeros}");

    let err = block_on(Store::open(MemDevice::from_bytes(4096, fresh(512, 64)), Options::default())).unwrap_err();
    assert_eq!(err, StoreError::SectorSize { store: 512, device: 4096 });

    let err = block_on(Store::create(MemDevice::new(1024, 1024), Options::default())).unwrap_err();
    assert_eq!(err, StoreError::UnsupportedSectorSize(1024));

    let mut cut = fresh(512, 128);
    cut.truncate(64 * 4096);
    let err = block_on(Store::open(MemDevice::from_bytes(512, cut), Options::default())).unwrap_err();
    assert_eq!(err, StoreError::Truncated { store: 128, device: 64 });
}

#[test]
fn keys_over_the_limit_are_refused_and_the_transaction_goes_on() {
    let store = open(fresh(512, 64), 512);
    block_on(async {
        let mut tx = store.write().await.unwrap();
        tx.put(b"ok", b"1").await.unwrap();
        assert_eq!(tx.put(&[b'k'; 1025], b"v").await.unwrap_err(), StoreError::KeyTooLong(1025));
        tx.commit().await.unwrap();
        assert_eq!(store.get(b"ok").await.unwrap(), Some(b"1".to_vec()));
    });
}

#[test]
fn a_small_cache_bounds_memory_and_still_reads_everything() {
    let dev = MemDevice::from_bytes(4096, fresh(4096, 1024));
    let store = block_on(Store::open(dev, Options { cache_pages: 8, ..Options::default() })).unwrap();
    block_on(async {
        let mut tx = store.write().await.unwrap();
        for i in 0..3000u32 {
            tx.put(format!("{i:06}").as_bytes(), &value(b"c", u64::from(i), 64)).await.unwrap();
        }
        tx.commit().await.unwrap();
        for i in (0..3000u32).step_by(7) {
            assert_eq!(store.get(format!("{i:06}").as_bytes()).await.unwrap(), Some(value(b"c", u64::from(i), 64)));
        }
    });
    assert!(store.info().cached_pages <= 8, "{} pages cached", store.info().cached_pages);
}

#[test]
fn a_forged_page_with_a_huge_value_length_is_an_error_not_an_allocation() {
    use skiff_store::format::{Node, Ptr, Superblock, Value, checksum};
    let store = open(fresh(512, 64), 512);
    block_on(store.put(b"big", &value(b"big", 0, 5000))).unwrap();
    let mut bytes = store.into_device().into_bytes();
    // The newest superblock and its root leaf, rewritten with a value that
    // claims 4 GiB, every checksum made to match (as anyone who can write
    // the disk can).
    let (slot, mut sb) = (0..2)
        .filter_map(|s| Superblock::decode(&bytes[s * 4096..(s + 1) * 4096]).ok().map(|sb| (s, sb)))
        .max_by_key(|(_, sb)| sb.generation)
        .unwrap();
    let root = sb.root.unwrap();
    let at = root.page as usize * 4096;
    let (_, node) = Node::decode(&bytes[at..at + 4096]).unwrap();
    let Node::Leaf(mut entries) = node else { panic!("one leaf") };
    let Value::Pages { first, .. } = entries[0].1 else { panic!("a long value") };
    entries[0].1 = Value::Pages { len: u64::from(u32::MAX), first };
    let page = Node::Leaf(entries).encode(root.page, root.generation);
    bytes[at..at + 4096].copy_from_slice(&page);
    sb.root = Some(Ptr { sum: checksum(&page), ..root });
    bytes[slot * 4096..(slot + 1) * 4096].copy_from_slice(&sb.encode());

    let store = open(bytes, 512);
    // Refused before reading (or allocating) anything.
    let err = block_on(store.get(b"big")).unwrap_err();
    assert!(err.to_string().contains("a value of 4294967295 bytes"), "{err}");
    let report = block_on(check(store.device())).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].to_string().contains("value pages hold 5000 bytes, the entry says 4294967295"));
}

/// A device that counts the calls that reach it: a guest's disk notifies
/// the host once per call, so calls are what open pays for.
struct Counting {
    dev: MemDevice,
    calls: std::cell::Cell<u64>,
    largest: std::cell::Cell<usize>,
}

impl BlockDevice for Counting {
    fn sector_size(&self) -> u32 {
        self.dev.sector_size()
    }
    fn capacity(&self) -> u64 {
        self.dev.capacity()
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), skiff_store::BlockError> {
        self.calls.set(self.calls.get() + 1);
        self.largest.set(self.largest.get().max(1));
        self.dev.read(sector, buf).await
    }
    async fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), skiff_store::BlockError> {
        self.calls.set(self.calls.get() + 1);
        self.largest.set(self.largest.get().max(reads.len()));
        for (sector, buf) in reads.iter_mut() {
            self.dev.read(*sector, buf).await?;
        }
        Ok(())
    }
    async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), skiff_store::BlockError> {
        self.dev.write(sector, buf).await
    }
    async fn flush(&self) -> Result<(), skiff_store::BlockError> {
        self.dev.flush().await
    }
    async fn discard(&self, sector: u64, count: u64) -> Result<(), skiff_store::BlockError> {
        self.dev.discard(sector, count).await
    }
}

/// A store of 4096 pages (16 MiB, sectors of 512 bytes)
/// holding `key/00000000` to `key/00019999`, 100-byte values tagged `tag`,
/// in one commit: a tree of several hundred pages.
fn twenty_thousand_keys(tag: &[u8]) -> Store<MemDevice> {
    let store = open(fresh(512, 4096), 512);
    block_on(async {
        let mut tx = store.write().await.unwrap();
        for i in 0..20_000u32 {
            tx.put(format!("key/{i:08}").as_bytes(), &value(tag, u64::from(i), 100)).await.unwrap();
        }
        tx.commit().await.unwrap();
    });
    store
}

#[test]
fn open_reads_the_tree_in_batches_not_a_page_at_a_time() {
    let store = twenty_thousand_keys(b"o");
    let used = store.info().used_pages;
    assert!(used > 500, "a tree of {used} pages");
    let dev = Counting { dev: store.into_device(), calls: 0.into(), largest: 0.into() };
    let store = block_on(Store::open(&dev, Options::default())).unwrap();
    assert_eq!(store.info().keys, 20_000);
    let (calls, largest) = (dev.calls.get(), dev.largest.get());
    // Two superblocks, the tree in batches of up to 64 leaves.
    assert!(calls * 16 < used, "open made {calls} device calls for {used} tree pages");
    assert!(largest >= 32, "the largest batch was {largest} pages");
    assert_eq!(block_on(store.get(b"key/00012345")).unwrap(), Some(value(b"o", 12345, 100)));
    drop(store);
    assert_clean(&dev);
}

#[test]
fn a_closed_store_opens_without_its_walk_and_readers_run_while_it_walks() {
    let store = twenty_thousand_keys(b"w");
    let free = store.info().free_pages;
    let dev = block_on(store.close()).unwrap();
    let dev = Counting { dev, calls: 0.into(), largest: 0.into() };
    let store = block_on(Store::open(&dev, Options::default())).unwrap();
    assert_eq!(dev.calls.get(), 2, "open read the two superblocks, nothing else");
    assert!(!store.info().verified);
    assert_eq!(store.info().free_pages, free);
    // A reader and the walk at once: the reader finishes first, the walk
    // yields between batches.
    let order = std::cell::RefCell::new(Vec::new());
    let tasks: Vec<Task<'_, ()>> = vec![
        Box::pin(async {
            store.finish_open().await.unwrap();
            order.borrow_mut().push("walk");
        }),
        Box::pin(async {
            for i in (0..20_000u32).step_by(997) {
                let v = store.get(format!("key/{i:08}").as_bytes()).await.unwrap();
                assert_eq!(v, Some(value(b"w", u64::from(i), 100)));
            }
            order.borrow_mut().push("reads");
        }),
    ];
    join_all(tasks);
    assert_eq!(*order.borrow(), ["reads", "walk"]);
    assert!(store.info().verified);
    assert_eq!(store.info().free_pages, free, "the walk found what the superblock said");
    assert!(dev.calls.get() > 20, "the walk read the tree");
    // The next write needs no walk.
    let calls = dev.calls.get();
    block_on(store.put(b"key/new", b"v")).unwrap();
    assert!(dev.calls.get() - calls < 5, "{} reads for one put", dev.calls.get() - calls);
    assert_clean(&dev);
}
