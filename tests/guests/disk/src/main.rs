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
            match disk.device().submit_unchecked(op::WRITE, 0, 1, buf.as_ptr() as u64) {
                Err(BlockError::ReadOnly) => info!("the tender refused the write too"),
                other => return Err(format!("the tender answered a read-only write with {other:?}")),
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
        "txn" => {
            let seed: u64 = env.args().get(1).and_then(|s| s.parse().ok()).ok_or("txn needs a seed")?;
            transactions(disk, seed).await
        }
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
