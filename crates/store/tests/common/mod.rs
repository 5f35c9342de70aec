//! Helpers shared by the store's tests.

use skiff_store::{BlockDevice, MemDevice, Options, Store, block_on};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

pub type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A fresh store's bytes: `pages` pages of 4 KiB on sectors of `sector`.
pub fn fresh(sector: u32, pages: u64) -> Vec<u8> {
    let dev = MemDevice::new(sector, pages * 4096 / u64::from(sector));
    let store = block_on(Store::create(dev, Options::default())).expect("create");
    store.into_device().into_bytes()
}

/// Every entry of the store's newest durable commit.
pub fn contents<D: BlockDevice>(store: &Store<D>) -> Result<Model, skiff_store::StoreError> {
    block_on(async {
        let snap = store.snapshot();
        let mut scan = snap.scan(b"");
        let mut out = Model::new();
        while let Some(e) = scan.next().await {
            let (k, v) = e?;
            out.insert(k, v);
        }
        Ok(out)
    })
}

/// A task for [`join_all`].
pub type Task<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Polls every future in turn until all are done (a single-threaded
/// executor in miniature, enough for devices that complete at once).
#[allow(dead_code)] // Not every test file runs writers concurrently.
pub fn join_all<T>(mut futures: Vec<Task<'_, T>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut left = futures.len();
    while left > 0 {
        for (i, f) in futures.iter_mut().enumerate() {
            if out[i].is_none()
                && let Poll::Ready(v) = f.as_mut().poll(&mut cx)
            {
                out[i] = Some(v);
                left -= 1;
            }
        }
    }
    out.into_iter().map(|v| v.expect("done")).collect()
}

/// A value of `len` bytes that says which key and version it belongs to.
pub fn value(key: &[u8], version: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x =
        version.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.iter().fold(0u64, |a, b| a.wrapping_mul(31) + u64::from(*b));
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
