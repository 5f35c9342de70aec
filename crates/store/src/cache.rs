//! The page cache: decoded tree nodes, at most a given number, least
//! recently used first out. An entry is found by page number and trusted
//! only if its checksum is the one the pointer asks for, so a page that was
//! freed and rewritten is never served from a stale entry.

use crate::format::Node;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;

#[derive(Debug)]
pub(crate) struct Cache {
    limit: usize,
    tick: u64,
    entries: BTreeMap<u64, (u64, Rc<Node>, u64)>,
    by_age: BTreeMap<u64, u64>,
}

impl Cache {
    pub(crate) fn new(limit: usize) -> Cache {
        Cache { limit: limit.max(8), tick: 0, entries: BTreeMap::new(), by_age: BTreeMap::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The node of `page` if it has checksum `sum`.
    pub(crate) fn get(&mut self, page: u64, sum: u64) -> Option<Rc<Node>> {
        let entry = self.entries.get_mut(&page)?;
        if entry.0 != sum {
            return None;
        }
        self.by_age.remove(&entry.2);
        self.tick += 1;
        entry.2 = self.tick;
        self.by_age.insert(self.tick, page);
        Some(entry.1.clone())
    }

    pub(crate) fn insert(&mut self, page: u64, sum: u64, node: Rc<Node>) {
        self.tick += 1;
        if let Some(old) = self.entries.insert(page, (sum, node, self.tick)) {
            self.by_age.remove(&old.2);
        }
        self.by_age.insert(self.tick, page);
        while self.entries.len() > self.limit {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.entries.remove(&oldest);
        }
    }
}
