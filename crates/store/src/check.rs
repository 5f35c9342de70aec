//! Walking a store: every page the newest commit reaches, its checksum, the
//! tree's invariants and the space accounting. [`Store::open`](crate::Store::open)
//! walks the tree to rebuild its free-space map and to find out whether the
//! newest commit is whole; [`check`] walks it all, value pages included,
//! for `skiff disk check`.

use crate::device::{BlockDevice, BlockError};
use crate::format::{
    self, DATA_PER_PAGE, FIRST_DATA_PAGE, Kind, Node, PAGE_SIZE, PTRS_PER_INDEX, Ptr, Superblock, Value,
};
use crate::{Damage, StoreError};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// One thing wrong with a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The page (0 when the problem is the superblock's accounting).
    pub page: u64,
    /// What is wrong.
    pub what: ProblemKind,
    /// The page was written by the superblock's own commit: a commit the
    /// device lost part of (a crash), not damage to data that was durable.
    pub incomplete: bool,
}

/// What is wrong with a page.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// It does not read back as written (checksum, header, format).
    Damaged(Damage),
    /// Two pointers lead to it.
    Shared,
    /// A pointer leads past the end of the store or to a superblock.
    OutOfRange,
    /// Its keys are not in strictly increasing order.
    KeyOrder,
    /// A key lies outside the range its parent gives the page.
    KeyRange,
    /// A leaf at another depth than the others.
    Depth { expected: u32, found: u32 },
    /// A node other than the root with nothing in it.
    Empty,
    /// A value whose pages do not add up to its length.
    ValueLength { expected: u64, found: u64 },
    /// The superblock's count of keys or used pages is not what the tree has.
    Count { what: &'static str, superblock: u64, found: u64 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.page != 0 {
            write!(f, "page {}: ", self.page)?;
        }
        match &self.what {
            ProblemKind::Damaged(d) => write!(f, "damaged: {d}")?,
            ProblemKind::Shared => write!(f, "reached by two pointers")?,
            ProblemKind::OutOfRange => write!(f, "pointer outside the store's data pages")?,
            ProblemKind::KeyOrder => write!(f, "keys out of order")?,
            ProblemKind::KeyRange => write!(f, "a key outside the range its parent gives it")?,
            ProblemKind::Depth { expected, found } => write!(f, "leaf at depth {found}, others at {expected}")?,
            ProblemKind::Empty => write!(f, "an empty node below the root")?,
            ProblemKind::ValueLength { expected, found } => {
                write!(f, "value pages hold {found} bytes, the entry says {expected}")?
            }
            ProblemKind::Count { what, superblock, found } => {
                write!(f, "the superblock counts {superblock} {what}, the tree has {found}")?
            }
        }
        if self.incomplete {
            write!(f, " (written by the newest commit)")?;
        }
        Ok(())
    }
}

/// What a walk found.
#[derive(Debug)]
pub(crate) struct Walk {
    reachable: Vec<u64>,
    pub(crate) problems: Vec<Problem>,
    pub(crate) keys: u64,
    pub(crate) used: u64,
    pub(crate) depth: u32,
}

impl Walk {
    pub(crate) fn in_use(&self, page: u64) -> bool {
        page < FIRST_DATA_PAGE || self.reachable[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Marks `page` reached; false if it was already.
    fn mark(&mut self, page: u64) -> bool {
        let (w, b) = ((page / 64) as usize, page % 64);
        let fresh = self.reachable[w] & (1 << b) == 0;
        self.reachable[w] |= 1 << b;
        fresh
    }
}

/// Reads page `page` of `dev` (sectors of `sector_size`).
pub(crate) async fn read_page<D: BlockDevice>(dev: &D, page: u64) -> Result<Vec<u8>, BlockError> {
    let mut buf = vec![0; PAGE_SIZE];
    let spp = PAGE_SIZE as u64 / u64::from(dev.sector_size());
    dev.read(page * spp, &mut buf).await?;
    Ok(buf)
}

/// Checks that `bytes` are the page `ptr` points to.
pub(crate) fn verify(bytes: &[u8], ptr: &Ptr) -> Result<(), Damage> {
    if format::checksum(bytes) != ptr.sum {
        return Err(Damage::Checksum);
    }
    let header = format::PageHeader::parse(bytes).map_err(Damage::Format)?;
    if header.page != ptr.page {
        return Err(Damage::Misplaced { found: header.page });
    }
    if header.generation != ptr.generation {
        return Err(Damage::Generation { expected: ptr.generation, found: header.generation });
    }
    Ok(())
}

/// Leaves read with one call to the device ([`BlockDevice::read_many`]):
/// a guest's disk then notifies the host once for all of them.
const WALK_BATCH: usize = 64;
/// Branches read at once: fewer, so that the children they push stay few
/// (the stack holds at most about depth x this x fanout entries).
const BRANCH_BATCH: usize = 8;

enum Item {
    Node { ptr: Ptr, depth: u32, lo: Option<Vec<u8>>, hi: Option<Vec<u8>> },
    Value { first: Ptr, len: u64 },
}

/// Walks the tree of `sb`. `full` reads every value data page too; without
/// it only those the superblock's own commit wrote are read (enough to
/// know the commit is whole), the others only counted.
pub(crate) async fn walk<D: BlockDevice>(dev: &D, sb: &Superblock, full: bool) -> Result<Walk, StoreError> {
    let mut w =
        Walk { reachable: vec![0; sb.pages.div_ceil(64) as usize], problems: Vec::new(), keys: 0, used: 0, depth: 0 };
    let mut leaf_depth = None;
    let spp = PAGE_SIZE as u64 / u64::from(dev.sector_size());
    let mut stack: Vec<Item> = Vec::new();
    if let Some(root) = sb.root {
        stack.push(Item::Node { ptr: root, depth: 1, lo: None, hi: None });
    }
    // Marks a pointer's page, or records why it cannot be followed.
    let reach = |w: &mut Walk, ptr: &Ptr| -> bool {
        let problem = |what| Problem { page: ptr.page, what, incomplete: false };
        if ptr.page < FIRST_DATA_PAGE || ptr.page >= sb.pages {
            w.problems.push(problem(ProblemKind::OutOfRange));
            return false;
        }
        if !w.mark(ptr.page) {
            w.problems.push(problem(ProblemKind::Shared));
            return false;
        }
        w.used += 1;
        true
    };
    // Only an unconfirmed one-flush commit can be torn by a crash.
    let may_be_torn = !sb.confirmed();
    let damaged = |ptr: &Ptr, d: Damage| Problem {
        page: ptr.page,
        what: ProblemKind::Damaged(d),
        incomplete: may_be_torn && ptr.generation == sb.generation,
    };
    while let Some(item) = stack.pop() {
        match item {
            Item::Node { ptr, depth, lo, hi } => {
                // Nodes at the same depth on top of the stack are read
                // together: one request each, sent at once.
                let limit = if leaf_depth == Some(depth) { WALK_BATCH } else { BRANCH_BATCH };
                let mut batch = vec![(ptr, depth, lo, hi)];
                while batch.len() < limit
                    && let Some(Item::Node { depth: d, .. }) = stack.last()
                    && *d == depth
                {
                    let Some(Item::Node { ptr, depth, lo, hi }) = stack.pop() else { unreachable!("just seen") };
                    batch.push((ptr, depth, lo, hi));
                }
                batch.retain(|(ptr, ..)| reach(&mut w, ptr));
                let mut pages = vec![0u8; batch.len() * PAGE_SIZE];
                let mut reads: Vec<(u64, &mut [u8])> = batch
                    .iter()
                    .zip(pages.chunks_mut(PAGE_SIZE))
                    .map(|((ptr, ..), buf)| (ptr.page * spp, buf))
                    .collect();
                dev.read_many(&mut reads).await?;
                drop(reads);
                // Other tasks (readers of a store whose walk was deferred)
                // run between batches.
                crate::store::yield_now().await;
                for ((ptr, depth, lo, hi), bytes) in batch.into_iter().zip(pages.chunks(PAGE_SIZE)) {
                    if let Err(d) = verify(bytes, &ptr) {
                        w.problems.push(damaged(&ptr, d));
                        continue;
                    }
                    let node = match Node::decode(bytes) {
                        Ok((_, node)) => node,
                        Err(e) => {
                            w.problems.push(damaged(&ptr, Damage::Format(e)));
                            continue;
                        }
                    };
                    let problem = |what| Problem { page: ptr.page, what, incomplete: false };
                    let in_range =
                        |k: &[u8]| lo.as_deref().is_none_or(|lo| k >= lo) && hi.as_deref().is_none_or(|hi| k < hi);
                    if node.count() == 0 && depth > 1 {
                        w.problems.push(problem(ProblemKind::Empty));
                    }
                    match node {
                        Node::Leaf(entries) => {
                            match leaf_depth {
                                None => leaf_depth = Some(depth),
                                Some(d) if d != depth => {
                                    w.problems.push(problem(ProblemKind::Depth { expected: d, found: depth }))
                                }
                                _ => {}
                            }
                            if entries.windows(2).any(|e| e[0].0 >= e[1].0) {
                                w.problems.push(problem(ProblemKind::KeyOrder));
                            }
                            if entries.iter().any(|(k, _)| !in_range(k)) {
                                w.problems.push(problem(ProblemKind::KeyRange));
                            }
                            w.keys += entries.len() as u64;
                            for (_, v) in entries {
                                if let Value::Pages { len, first } = v {
                                    stack.push(Item::Value { first, len });
                                }
                            }
                        }
                        Node::Branch { keys, children } => {
                            if keys.windows(2).any(|k| k[0] >= k[1]) {
                                w.problems.push(problem(ProblemKind::KeyOrder));
                            }
                            if keys.iter().any(|k| !in_range(k)) {
                                w.problems.push(problem(ProblemKind::KeyRange));
                            }
                            for (i, child) in children.iter().enumerate().rev() {
                                let clo = if i == 0 { lo.clone() } else { Some(keys[i - 1].clone()) };
                                let chi = if i == keys.len() { hi.clone() } else { Some(keys[i].clone()) };
                                stack.push(Item::Node { ptr: *child, depth: depth + 1, lo: clo, hi: chi });
                            }
                        }
                    }
                }
            }
            Item::Value { first, len } => {
                let mut next = Some(first);
                let mut pages = 0u64;
                let mut found = 0u64;
                let mut whole = true;
                while let Some(ptr) = next.take() {
                    if !reach(&mut w, &ptr) {
                        whole = false;
                        break;
                    }
                    let bytes = read_page(dev, ptr.page).await?;
                    let index =
                        verify(&bytes, &ptr).and_then(|()| format::decode_index(&bytes).map_err(Damage::Format));
                    let (_, after, data) = match index {
                        Ok(i) => i,
                        Err(d) => {
                            w.problems.push(damaged(&ptr, d));
                            whole = false;
                            break;
                        }
                    };
                    if after.is_some() && data.len() != PTRS_PER_INDEX {
                        w.problems.push(Problem {
                            page: ptr.page,
                            what: ProblemKind::Damaged(Damage::Format(format::FormatError::Truncated)),
                            incomplete: false,
                        });
                    }
                    for d in &data {
                        if !reach(&mut w, d) {
                            whole = false;
                            continue;
                        }
                        pages += 1;
                        if full || (may_be_torn && d.generation == sb.generation) {
                            let bytes = read_page(dev, d.page).await?;
                            match verify(&bytes, d).and_then(|()| format::decode_data(&bytes).map_err(Damage::Format)) {
                                Ok((_, chunk)) => found += chunk.len() as u64,
                                Err(e) => {
                                    w.problems.push(damaged(d, e));
                                    whole = false;
                                }
                            }
                        }
                    }
                    next = after;
                }
                let expected_pages = len.div_ceil(DATA_PER_PAGE as u64);
                let bad = if full { found != len } else { pages != expected_pages };
                if whole && bad {
                    let found = if full { found } else { pages * DATA_PER_PAGE as u64 };
                    w.problems.push(Problem {
                        page: first.page,
                        what: ProblemKind::ValueLength { expected: len, found },
                        incomplete: false,
                    });
                }
            }
        }
    }
    w.depth = leaf_depth.unwrap_or(0);
    if w.problems.is_empty() {
        for (what, superblock, found) in [("keys", sb.keys, w.keys), ("used pages", sb.used, w.used)] {
            if superblock != found {
                w.problems.push(Problem {
                    page: 0,
                    what: ProblemKind::Count { what, superblock, found },
                    incomplete: false,
                });
            }
        }
    }
    Ok(w)
}

/// What [`check`] found.
#[derive(Debug)]
pub struct CheckReport {
    /// The superblock in force.
    pub superblock: Superblock,
    /// A newer commit that a crash left incomplete and that was set aside
    /// (its generation): normal after a crash, and the next commit
    /// overwrites it.
    pub discarded: Option<u64>,
    /// Everything wrong, one problem per entry; empty when the store is sound.
    pub problems: Vec<Problem>,
    /// Pages the tree and its values use.
    pub used: u64,
    /// Pages free.
    pub free: u64,
    /// The tree's depth (0: empty).
    pub depth: u32,
    /// Keys.
    pub keys: u64,
}

/// Walks every page the store's newest whole commit reaches, value pages
/// included, and checks checksums, tree invariants and space accounting.
/// A device that is not a store at all is an error; damage inside one is
/// reported in [`CheckReport::problems`].
pub async fn check<D: BlockDevice>(dev: &D) -> Result<CheckReport, StoreError> {
    let chosen = crate::store::select(dev, true, false).await?;
    let walk = chosen.walk.expect("select walks when not deferring");
    let sb = chosen.superblock;
    let in_use = (0..sb.pages).filter(|&p| walk.in_use(p)).count() as u64;
    Ok(CheckReport {
        superblock: sb,
        discarded: chosen.discarded,
        used: walk.used,
        free: sb.pages - in_use,
        depth: walk.depth,
        keys: walk.keys,
        problems: walk.problems,
    })
}

#[doc(hidden)]
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Leaf => "leaf",
        Kind::Branch => "branch",
        Kind::ValueIndex => "value index",
        Kind::ValueData => "value data",
    }
}
