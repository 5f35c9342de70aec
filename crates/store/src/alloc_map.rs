//! Free space: a bitmap of the store's pages, rebuilt at open from the
//! pages the tree reaches, and the pages freed by commits that may not be
//! reused yet.

use alloc::vec;
use alloc::vec::Vec;

/// Which pages are in use, and which freed pages wait for their commit to
/// be durable and for every snapshot that can see them to end.
#[derive(Debug)]
pub(crate) struct Allocator {
    bits: Vec<u64>,
    pages: u64,
    free: u64,
    /// No free page below this one.
    hint: u64,
    /// (generation that freed it, page).
    pending: Vec<(u64, u64)>,
}

impl Allocator {
    /// Every page in `0..pages` in use.
    pub(crate) fn full(pages: u64) -> Allocator {
        Allocator {
            bits: vec![u64::MAX; pages.div_ceil(64) as usize],
            pages,
            free: 0,
            hint: pages,
            pending: Vec::new(),
        }
    }

    /// All pages free but those `in_use` says.
    pub(crate) fn from_used(pages: u64, in_use: impl Fn(u64) -> bool) -> Allocator {
        let mut a = Allocator::full(pages);
        for p in 0..pages {
            if !in_use(p) {
                a.release(p);
            }
        }
        a
    }

    pub(crate) fn free_pages(&self) -> u64 {
        self.free
    }

    pub(crate) fn pending_pages(&self) -> u64 {
        self.pending.len() as u64
    }

    /// A free page, if more than `reserve` are free.
    pub(crate) fn alloc(&mut self, reserve: u64) -> Option<u64> {
        if self.free <= reserve {
            return None;
        }
        let mut w = (self.hint / 64) as usize;
        while w < self.bits.len() {
            if self.bits[w] != u64::MAX {
                let bit = (!self.bits[w]).trailing_zeros() as u64;
                let page = w as u64 * 64 + bit;
                if page >= self.pages {
                    break;
                }
                self.bits[w] |= 1 << bit;
                self.free -= 1;
                self.hint = page + 1;
                return Some(page);
            }
            w += 1;
        }
        None
    }

    /// Makes `page` free now.
    pub(crate) fn release(&mut self, page: u64) {
        let (w, bit) = ((page / 64) as usize, page % 64);
        debug_assert!(self.bits[w] & (1 << bit) != 0, "page {page} freed twice");
        if self.bits[w] & (1 << bit) != 0 {
            self.bits[w] &= !(1 << bit);
            self.free += 1;
            self.hint = self.hint.min(page);
        }
    }

    /// `page`, freed by the commit of generation `generation`, becomes free once
    /// [`reclaim`](Self::reclaim) allows.
    pub(crate) fn defer(&mut self, generation: u64, page: u64) {
        self.pending.push((generation, page));
    }

    /// Frees the pending pages whose commit is durable (`generation <= durable`)
    /// and that no snapshot older than their commit can see.
    pub(crate) fn reclaim(&mut self, durable: u64, oldest_snapshot: Option<u64>) {
        let pending = core::mem::take(&mut self.pending);
        for (generation, page) in pending {
            if generation <= durable && oldest_snapshot.is_none_or(|s| s >= generation) {
                self.release(page);
            } else {
                self.pending.push((generation, page));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_come_back_only_when_reclaim_allows() {
        let mut a = Allocator::from_used(70, |p| p < 2);
        assert_eq!(a.free_pages(), 68);
        let p = a.alloc(0).unwrap();
        assert_eq!(p, 2);
        a.defer(5, p);
        a.reclaim(4, None);
        assert_eq!(a.free_pages(), 67);
        a.reclaim(5, Some(4));
        assert_eq!(a.free_pages(), 67, "a snapshot of generation 4 can still see it");
        a.reclaim(5, Some(5));
        assert_eq!(a.free_pages(), 68);
        assert_eq!(a.alloc(0), Some(2));
        assert_eq!(a.alloc(67), None, "the reserve is kept");
    }
}
