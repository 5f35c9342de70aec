//! The disk-test guest: one image with one disk (`disk`); the first
//! argument picks what it does with it. Each scenario prints what it saw
//! and exits 0 when the disk behaved, or sends the tender a request it must
//! refuse.
#![no_std]
#![no_main]

use skiff::block::{BlockError, Disk};
use skiff::prelude::*;
use skiff_abi::blk::op;

mod workload;

#[skiff::main(block = "disk")]
async fn main(env: skiff::Env) -> Result<(), String> {
    let what = env.args().first().cloned().unwrap_or_default();
    let disk = Disk::take(&env, "disk").map_err(|e| format!("{e}"))?;
    let ss = disk.sector_size() as usize;
    info!("disk: {} sectors of {} bytes{}", disk.capacity(), ss, if disk.read_only() { ", read-only" } else { "" });
    match what.as_str() {
        "rw" => read_write(&disk).await.map_err(|e| format!("{e}")),
        "ro" => {
            let mut buf = vec![0u8; ss];
            disk.read(0, &mut buf).await.map_err(|e| format!("read: {e}"))?;
            match disk.write(0, &buf).await {
                Err(e) => info!("write refused: {e}"),
                Ok(()) => return Err("a write to a read-only disk succeeded".into()),
            }
            // Past the driver's check: the tender (or the virtio-blk
            // device) must refuse it as well.
            match disk.device().submit_unchecked(op::WRITE, 0, 1, buf.as_ptr() as u64) {
                Err(BlockError::ReadOnly) => info!("the host refused the write too"),
                other => return Err(format!("the host answered a read-only write with {other:?}")),
            }
            Ok(())
        }
        "past-end" => {
            let buf = vec![0u8; ss];
            let r = disk.device().submit_unchecked(op::READ, disk.capacity(), 1, buf.as_ptr() as u64);
            Err(format!("a read past the end came back: {r:?}"))
        }
        "wrap" => {
            let buf = vec![0u8; 4 * ss];
            let r = disk.device().submit_unchecked(op::WRITE, u64::MAX - 1, 4, buf.as_ptr() as u64);
            Err(format!("a wrapping write came back: {r:?}"))
        }
        "undeclared" => {
            skiff_rt::hvt::block_notify(5);
            Err("the tender served a disk that does not exist".into())
        }
        "truncated" => {
            // The test cuts the file short under the guest: reads of the
            // last sector then fail, and the disk keeps serving.
            let last = disk.capacity() - 1;
            let mut buf = vec![0u8; ss];
            disk.read(last, &mut buf).await.map_err(|e| format!("first read: {e}"))?;
            info!("ready");
            for _ in 0..500 {
                match disk.read(last, &mut buf).await {
                    Ok(()) => skiff::time::sleep(Duration::from_millis(10)).await,
                    Err(e) => {
                        info!("read failed: {e}");
                        let data = vec![0x5au8; ss];
                        disk.write(0, &data).await.map_err(|e| format!("write after the error: {e}"))?;
                        disk.read(0, &mut buf).await.map_err(|e| format!("read after the error: {e}"))?;
                        if buf != data {
                            return Err("sector 0 did not read back after the error".into());
                        }
                        info!("still serving");
                        return Ok(());
                    }
                }
            }
            Err("the read never failed".into())
        }
        "store" => {
            let store = skiff::store::Store::create(disk, Default::default()).await.map_err(|e| format!("{e}"))?;
            let mut tx = store.write().await.map_err(|e| format!("{e}"))?;
            for i in 0..100u32 {
                tx.put(format!("key{i:03}").as_bytes(), format!("value {i}").as_bytes())
                    .await
                    .map_err(|e| format!("{e}"))?;
            }
            let generation = tx.commit().await.map_err(|e| format!("{e}"))?;
            store.close().await.map_err(|e| format!("{e}"))?;
            info!("committed generation {generation}");
            Ok(())
        }
        "store-read" => {
            // After "store" and a reboot on the same file: every key is there.
            let store = skiff::store::Store::open(disk, Default::default()).await.map_err(|e| format!("{e}"))?;
            for i in 0..100u32 {
                let value = store.get(format!("key{i:03}").as_bytes()).await.map_err(|e| format!("{e}"))?;
                if value.as_deref() != Some(format!("value {i}").as_bytes()) {
                    return Err(format!("key{i:03} reads back as {value:?}"));
                }
            }
            info!("read back 100 keys of generation {}", store.info().generation);
            Ok(())
        }
        "store-open" => {
            // A store the test made on the host: open it (the walk reads
            // the tree in batches) and read a key back.
            let store = skiff::store::Store::open(disk, Default::default()).await.map_err(|e| format!("{e}"))?;
            store.finish_open().await.map_err(|e| format!("{e}"))?;
            let info = store.info();
            let value = store.get(b"key/00012345").await.map_err(|e| format!("{e}"))?;
            if value.as_deref() != Some(&b"value 12345"[..]) {
                return Err(format!("key/00012345 reads back as {value:?}"));
            }
            info!("opened {} keys, {} tree pages", info.keys, info.used_pages);
            Ok(())
        }
        "txn" => {
            let seed: u64 = env.args().get(1).and_then(|s| s.parse().ok()).ok_or("txn needs a seed")?;
            transactions(disk, seed).await
        }
        "bench" => {
            let commits: u64 = env.args().get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
            bench(&env, disk, commits).await.map_err(|e| format!("bench: {e}"))
        }
        "work" => work(disk).await.map_err(|e| format!("work: {e}")),
        other => Err(format!("unknown scenario {other:?}")),
    }
}

/// Writes a pattern, flushes, reads it back, discards a range.
async fn read_write(disk: &Disk) -> Result<(), BlockError> {
    let ss = disk.sector_size() as usize;
    // Sector i holds byte i + 1, with a marker at its start.
    let mut data = vec![0u8; 8 * ss];
    for (i, sector) in data.chunks_mut(ss).enumerate() {
        sector.fill(i as u8 + 1);
        sector[..10].copy_from_slice(b"skiff-disk");
    }
    disk.write(0, &data).await?;
    // A large request: served in pieces by the tender.
    let big = vec![0xa5u8; 3 << 20];
    disk.write(64, &big).await?;
    disk.flush().await?;
    let mut back = vec![0u8; 8 * ss];
    disk.read(0, &mut back).await?;
    assert_eq!(back, data, "sectors 0..8 read back");
    let mut big_back = vec![0u8; big.len()];
    disk.read(64, &mut big_back).await?;
    assert!(big_back == big, "the large write read back");
    match disk.discard(64, 8).await {
        Ok(()) => {
            let mut gone = vec![0xffu8; 8 * ss];
            disk.read(64, &mut gone).await?;
            assert!(gone.iter().all(|&b| b == 0), "discarded sectors read as zeros");
            info!("discarded");
        }
        Err(BlockError::Unsupported) => info!("discard unsupported here"),
        Err(e) => return Err(e),
    }
    info!("read back {} sectors", 8 + big.len() / ss);
    Ok(())
}

/// The crash test's workload: opens the store on the disk, reads how many
/// transactions it holds, and runs the seeded transactions after them one
/// by one, printing `ack T` once transaction T's commit returned, until the
/// tender is killed.
async fn transactions(disk: Disk, seed: u64) -> Result<(), String> {
    let store = skiff::store::Store::open(disk, Default::default()).await.map_err(|e| format!("open: {e}"))?;
    let done = match store.get(workload::COUNTER).await.map_err(|e| format!("read the counter: {e}"))? {
        Some(v) => core::str::from_utf8(&v).ok().and_then(|s| s.parse::<u64>().ok()).ok_or("a bad counter")?,
        None => 0,
    };
    info!("opened at txn {done}");
    let mut value = vec![0u8; workload::MAX_VALUE];
    for t in done + 1.. {
        let mut tx = store.write().await.map_err(|e| format!("txn {t}: {e}"))?;
        for op in workload::ops(seed, t) {
            match op {
                workload::Op::Put { key, len } => {
                    workload::fill_value(seed, t, key, &mut value[..len]);
                    tx.put(&workload::key_name(key), &value[..len]).await
                }
                workload::Op::Delete { key } => tx.delete(&workload::key_name(key)).await.map(|_| ()),
            }
            .map_err(|e| format!("txn {t}: {e}"))?;
        }
        tx.put(workload::COUNTER, format!("{t}").as_bytes()).await.map_err(|e| format!("txn {t}: {e}"))?;
        tx.commit().await.map_err(|e| format!("txn {t}: commit: {e}"))?;
        info!("ack {t}");
    }
    Ok(())
}

/// The store benchmark's key `i` (as `bench/src/bin/store.rs` makes it).
fn bench_key(i: u64) -> Vec<u8> {
    format!("key/{:08}", i.wrapping_mul(2_654_435_761) % 1_000_000_007).into_bytes()
}

/// The store benchmark's 100-byte value `i`.
fn bench_value(i: u64) -> Vec<u8> {
    let mut v = format!("value {i} ").into_bytes();
    v.resize(100, b'.');
    v
}

/// A cheap deterministic sequence (xorshift), as the host benchmark's.
struct Seq(u64);

impl Seq {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

type BenchStore = skiff::store::Store<Disk>;

/// The store benchmark in a guest (`bench/src/bin/store.rs guest`): on a
/// fresh store, `commits` one-key durable commits one at a time, then 64
/// tasks committing at once, then random reads of 10,000 keys; one
/// `bench: NAME RATE` line each.
async fn bench(env: &skiff::Env, disk: Disk, commits: u64) -> Result<(), skiff::store::StoreError> {
    const KEYS: u64 = 10_000;
    const READS: u64 = 200_000;
    const WRITERS: u64 = 64;
    let store = Rc::new(BenchStore::create(disk, Default::default()).await?);
    let rate = |n: u64, start: Instant| n as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    for i in 0..commits {
        store.put(&bench_key(i), &bench_value(i)).await?;
    }
    store.sync().await?;
    info!("bench: commits {:.1}", rate(commits, start));

    let each = commits.div_ceil(WRITERS).max(4);
    let batches = store.batches();
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            env.spawn(async move {
                for i in 0..each {
                    let k = 1_000_000 + w * each + i;
                    let mut tx = store.write().await?;
                    tx.put(&bench_key(k), &bench_value(k)).await?;
                    tx.commit().await?;
                }
                Ok::<(), skiff::store::StoreError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    info!("bench: group {:.1} {}", rate(WRITERS * each, start), store.batches() - batches);

    let mut tx = store.write().await?;
    for i in 0..KEYS {
        tx.put(&bench_key(i), &bench_value(i)).await?;
    }
    tx.commit().await?;
    let mut seq = Seq(2463534242);
    let start = Instant::now();
    for _ in 0..READS {
        let i = seq.next(KEYS);
        let v = store.get(&bench_key(i)).await?;
        assert_eq!(v.map(|v| v.len()), Some(100));
    }
    info!("bench: reads {:.1}", rate(READS, start));
    info!("bench: heap peak {} KiB of {} KiB", skiff::heap::peak() / 1024, skiff::heap::size() / 1024);
    Ok(())
}

/// Works a large store made on the host (`bench/src/bin/store.rs
/// guest-mem`): opens it, reads 20,000 random keys of the `key/%012d`
/// kind, commits 100 updates, syncs, and reports the heap's peak.
async fn work(disk: Disk) -> Result<(), skiff::store::StoreError> {
    let start = Instant::now();
    let store = BenchStore::open(disk, Default::default()).await?;
    let keys = store.info().keys;
    let opened = start.elapsed();
    info!("work: opened {keys} keys in {} ms ({} us)", opened.as_millis(), opened.as_micros());
    // The walk a confirmed store's open defers: before the first write.
    store.finish_open().await?;
    info!("work: walked the tree, free space known, at {} ms", start.elapsed().as_millis());
    let mut seq = Seq(88172645463325252);
    for _ in 0..20_000 {
        let i = seq.next(keys);
        if store.get(format!("key/{i:012}").as_bytes()).await?.is_none() {
            return Err(skiff::store::StoreError::TransactionFailed);
        }
    }
    for _ in 0..100 {
        let i = seq.next(keys);
        store.put(format!("key/{i:012}").as_bytes(), &[b'u'; 480]).await?;
    }
    store.sync().await?;
    info!(
        "work: done in {} ms; heap peak {} KiB of {} KiB",
        start.elapsed().as_millis(),
        skiff::heap::peak() / 1024,
        skiff::heap::size() / 1024
    );
    Ok(())
}
