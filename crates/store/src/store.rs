//! The store: opening and creating, snapshots, write transactions and the
//! group commit that makes them durable.
//!
//! State lives in one `RefCell` that is never borrowed across an `.await`.
//! One write transaction at a time builds on the newest committed tree (an
//! async lock queues the others); its changes go to pages it allocated
//! itself, copy-on-write. `commit` seals those pages (encodes them with
//! their checksums, bottom up) into the batch of the next generation,
//! releases the lock and waits until a flush covers the batch: the first
//! waiter with no flush running becomes the leader and writes every page
//! committed so far and the superblock, then flushes once. Commits that
//! arrive while a flush runs go into the next batch, so many writers share
//! one flush.

use crate::alloc_map::Allocator;
use crate::cache::Cache;
use crate::check::{self, Walk, read_page, verify};
use crate::device::{BlockDevice, BlockError};
use crate::format::{
    self, CAPACITY, DATA_PER_PAGE, FIRST_DATA_PAGE, FORMAT_VERSION, MAX_INLINE_VALUE, MAX_KEY, MAX_VALUE, MIN_PAGES,
    Node, PAGE_SIZE, PTRS_PER_INDEX, Ptr, SUPER_CONFIRMED, SuperError, Superblock, Value,
};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::poll_fn;
use core::task::{Poll, Waker};

/// Pages a write that adds data may not take: kept so that deletes can
/// always copy their path and give space back.
const RESERVE: u64 = 16;

/// Why a page read back wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    #[error("checksum mismatch")]
    Checksum,
    #[error("it holds page {found}")]
    Misplaced { found: u64 },
    #[error("written by generation {found}, expected {expected}")]
    Generation { expected: u64, found: u64 },
    #[error("bad contents: {0}")]
    Format(format::FormatError),
}

/// What can go wrong with the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The device failed.
    #[error("device error: {0}")]
    Device(#[from] BlockError),
    /// No room for the transaction; the store is unchanged and readable,
    /// and deletes still work.
    #[error("the store is full ({free} free pages, {pending} waiting for a commit or snapshot to end)")]
    Full { free: u64, pending: u64 },
    #[error("a key of {0} bytes is too long (at most {MAX_KEY})")]
    KeyTooLong(usize),
    #[error("a value of {0} bytes is too long (at most {MAX_VALUE})")]
    ValueTooLong(usize),
    /// A page read back wrong: never returned as data.
    #[error("page {page} is damaged: {damage}")]
    Corrupt { page: u64, damage: Damage },
    /// Neither superblock is valid.
    #[error("not a Skiff store: {0}")]
    NotAStore(SuperError),
    #[error("the device has {bytes} bytes, a store needs at least {min}")]
    TooSmall { bytes: u64, min: u64 },
    #[error("the store was made with {store}-byte sectors, the device has {device}-byte sectors")]
    SectorSize { store: u32, device: u32 },
    #[error("sectors of {0} bytes are not supported (512 or 4096)")]
    UnsupportedSectorSize(u32),
    #[error("the store has {store} pages but the device only {device}")]
    Truncated { store: u64, device: u64 },
    #[error("the device is read-only")]
    ReadOnly,
    /// Open found damage in the tree: reads work where they can, writes
    /// are refused because free space cannot be known.
    #[error("the store is damaged ({0} problems; run `skiff disk check`): writes are refused")]
    Damaged(usize),
    /// An earlier write or flush failed; what reached the device is
    /// unknown until the store is opened again.
    #[error("an earlier write to the device failed ({0}); open the store again")]
    Failed(BlockError),
    /// This transaction failed earlier (full, damaged page) and can only
    /// be dropped.
    #[error("the transaction failed earlier and was rolled back")]
    TransactionFailed,
}

/// How a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// Write the pages and the superblock, flush once (the default). The
    /// commit is *unconfirmed* until something shows its pages were
    /// durable: the next commit's superblock (written only after this
    /// commit's flush returned), or a confirmation ([`Store::sync`],
    /// [`Store::close`], or open). At open only an unconfirmed newest
    /// commit whose every bad page is one it wrote is set aside as torn
    /// (a crash during its flush: it was never acknowledged); damage under
    /// a confirmed commit is reported as damage. See `docs/storage.md`.
    #[default]
    OneFlush,
    /// Write the pages, flush, write a confirmed superblock, flush: every
    /// commit is confirmed when it is acknowledged, at twice the flushes.
    TwoPhase,
}

/// Tuning.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Decoded tree pages kept in memory (each about a page).
    pub cache_pages: usize,
    /// How commits reach the disk.
    pub commit: CommitMode,
}

impl Default for Options {
    fn default() -> Options {
        Options { cache_pages: 1024, commit: CommitMode::OneFlush }
    }
}

/// What [`Store::info`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub format_version: u32,
    pub sector_size: u32,
    pub page_size: u32,
    /// Pages in the store, superblocks included.
    pub pages: u64,
    /// The generation of the newest durable commit.
    pub generation: u64,
    pub keys: u64,
    /// Pages the tree and its values use.
    pub used_pages: u64,
    /// Pages free now.
    pub free_pages: u64,
    /// An incomplete commit that open set aside (its generation).
    pub discarded: Option<u64>,
    /// Whether the newest durable commit is confirmed: a later flush has
    /// shown its pages durable, so damage under it can never be taken for
    /// a torn commit.
    pub confirmed: bool,
    /// Problems open found (writes are refused when there are any).
    pub damage: usize,
    /// Whether the tree has been walked (at open, or later: see
    /// [`Store::finish_open`]); until then `damage` is 0 and `free_pages`
    /// is what the superblock's count of used pages leaves.
    pub verified: bool,
    /// Decoded pages in the cache.
    pub cached_pages: usize,
}

/// A committed tree: what a superblock or an in-memory commit names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tree {
    generation: u64,
    root: Option<Ptr>,
    keys: u64,
    used: u64,
}

/// Sealed pages of the commits of one generation.
#[derive(Debug, Default)]
struct Batch {
    generation: u64,
    tree: Option<Tree>,
    pages: BTreeMap<u64, Rc<Vec<u8>>>,
}

#[derive(Debug)]
struct Inner {
    sector_size: u32,
    pages: u64,
    /// The newest durable commit and the slot of a durable superblock
    /// naming it (the next commit writes the other slot).
    durable: Tree,
    slot: u64,
    /// Whether the superblock in `slot` is confirmed.
    confirmed: bool,
    /// The newest commit, durable or not.
    head: Tree,
    /// The generation commits join now.
    next_gen: u64,
    accumulating: Batch,
    flushing: Option<Batch>,
    /// Free pages. Until the tree has been walked (`space_known`), every
    /// page counts as used, and writers wait for the walk.
    alloc: Allocator,
    space_known: bool,
    cache: Cache,
    snapshots: BTreeMap<u64, usize>,
    writer: bool,
    writer_waiters: Vec<Waker>,
    leader: bool,
    flush_waiters: Vec<Waker>,
    failed: Option<BlockError>,
    read_only: bool,
    damage: usize,
    discarded: Option<u64>,
    batches: u64,
    commit: CommitMode,
}

impl Inner {
    fn oldest_snapshot(&self) -> Option<u64> {
        self.snapshots.keys().next().copied()
    }

    fn reclaim(&mut self) {
        let oldest = self.oldest_snapshot();
        self.alloc.reclaim(self.durable.generation, oldest);
    }

    /// The superblock of `tree`.
    fn superblock(&self, tree: Tree, flags: u32) -> Superblock {
        Superblock {
            version: FORMAT_VERSION,
            sector_size: self.sector_size,
            pages: self.pages,
            generation: tree.generation,
            root: tree.root,
            keys: tree.keys,
            used: tree.used,
            flags,
        }
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        if self.damage > 0 {
            return Err(StoreError::Damaged(self.damage));
        }
        if let Some(e) = &self.failed {
            return Err(StoreError::Failed(e.clone()));
        }
        Ok(())
    }
}

/// A transactional key-value store on a block device.
#[derive(Debug)]
pub struct Store<D: BlockDevice> {
    dev: D,
    spp: u64,
    inner: RefCell<Inner>,
}

/// The superblock open settles on and the walk of its tree.
pub(crate) struct Selected {
    pub(crate) superblock: Superblock,
    pub(crate) slot: u64,
    /// The walk of its tree; `None` when open deferred it (a confirmed
    /// newest commit is used whatever its walk finds).
    pub(crate) walk: Option<Walk>,
    pub(crate) discarded: Option<u64>,
}

fn geometry<D: BlockDevice>(dev: &D) -> Result<u64, StoreError> {
    let ss = dev.sector_size();
    if ss != 512 && ss != 4096 {
        return Err(StoreError::UnsupportedSectorSize(ss));
    }
    let bytes = dev.capacity().saturating_mul(u64::from(ss));
    let pages = bytes / PAGE_SIZE as u64;
    if pages < MIN_PAGES {
        return Err(StoreError::TooSmall { bytes, min: MIN_PAGES * PAGE_SIZE as u64 });
    }
    Ok(pages)
}

/// Reads both superblocks and picks the newest whole commit. With `defer`,
/// a confirmed newest commit is chosen without walking its tree: it is the
/// one in force whatever the walk would find (only an unconfirmed commit
/// can be set aside), so its walk can wait ([`Store::finish_open`]).
pub(crate) async fn select<D: BlockDevice>(dev: &D, full: bool, defer: bool) -> Result<Selected, StoreError> {
    let device_pages = geometry(dev)?;
    let mut found = Vec::new();
    let mut first_error = None;
    for slot in 0..2 {
        match Superblock::decode(&read_page(dev, slot).await?) {
            Ok(sb) => found.push((slot, sb)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    found.sort_by_key(|(_, sb)| core::cmp::Reverse(sb.rank()));
    let Some(&(slot, newest)) = found.first() else {
        return Err(StoreError::NotAStore(first_error.unwrap_or(SuperError::Magic)));
    };
    if newest.sector_size != dev.sector_size() {
        return Err(StoreError::SectorSize { store: newest.sector_size, device: dev.sector_size() });
    }
    if newest.pages > device_pages || newest.pages < MIN_PAGES {
        return Err(StoreError::Truncated { store: newest.pages, device: device_pages });
    }
    if defer && newest.confirmed() {
        return Ok(Selected { superblock: newest, slot, walk: None, discarded: None });
    }
    let walk = check::walk(dev, &newest, full).await?;
    // Only an unconfirmed commit can be torn: a confirmed superblock was
    // written after a flush covered its tree. The older slot's commit is
    // confirmed by the newer superblock's very existence: a superblock is
    // written only once the commit before it is durable.
    if !newest.confirmed()
        && !walk.problems.is_empty()
        && walk.problems.iter().all(|p| p.incomplete)
        && let Some(&(older_slot, older)) = found.get(1)
        && older.generation < newest.generation
        && older.pages == newest.pages
    {
        let older_walk = check::walk(dev, &older, full).await?;
        if older_walk.problems.is_empty() {
            return Ok(Selected {
                superblock: older,
                slot: older_slot,
                walk: Some(older_walk),
                discarded: Some(newest.generation),
            });
        }
    }
    Ok(Selected { superblock: newest, slot, walk: Some(walk), discarded: None })
}

/// Where a read looks for pages: the durable tree only, or also what a
/// write transaction and the commits not yet flushed hold.
#[derive(Clone, Copy)]
enum View<'t> {
    Durable,
    Tx(&'t Dirty),
}

/// The pages a write transaction made.
#[derive(Debug, Default)]
struct Dirty {
    nodes: BTreeMap<u64, Node>,
    /// Long values not yet sealed, by their first index page.
    values: BTreeMap<u64, PendingValue>,
}

#[derive(Debug)]
struct PendingValue {
    index: Vec<u64>,
    data_pages: Vec<u64>,
    data: Vec<u8>,
}

impl<D: BlockDevice> Store<D> {
    /// Formats `dev` as an empty store (whatever it held is lost).
    pub async fn create(dev: D, options: Options) -> Result<Store<D>, StoreError> {
        let pages = geometry(&dev)?;
        if dev.read_only() {
            return Err(StoreError::ReadOnly);
        }
        let spp = PAGE_SIZE as u64 / u64::from(dev.sector_size());
        for (slot, generation) in [(1u64, 1u64), (0, 2)] {
            let sb = Superblock {
                version: FORMAT_VERSION,
                sector_size: dev.sector_size(),
                pages,
                generation,
                root: None,
                keys: 0,
                used: 0,
                flags: SUPER_CONFIRMED,
            };
            dev.write(slot * spp, &sb.encode()).await?;
        }
        dev.flush().await?;
        Store::open(dev, options).await
    }

    /// Opens the store on `dev`: picks the newest whole commit, walks its
    /// tree (verifying every tree page) and rebuilds free space. When the
    /// device is writable and the commit sound, an unconfirmed newest
    /// commit (or one chosen over a torn newer one) is confirmed at once:
    /// one superblock write and a flush.
    ///
    /// A **confirmed** newest commit (a store closed or synced, or opened
    /// before) is the one in force whatever its walk finds, so open uses it
    /// at once and leaves the walk for later: reads are served at once
    /// (each page verified against its pointer, as always), and the walk
    /// runs before the first write transaction begins, or when
    /// [`finish_open`](Self::finish_open) is called (a service spawns it
    /// right after open to have it done in the background). Until then
    /// [`Info::verified`] is false.
    pub async fn open(dev: D, options: Options) -> Result<Store<D>, StoreError> {
        let chosen = select(&dev, false, true).await?;
        let sb = chosen.superblock;
        let tree = Tree { generation: sb.generation, root: sb.root, keys: sb.keys, used: sb.used };
        let (alloc, damage, space_known) = match &chosen.walk {
            Some(walk) if walk.problems.is_empty() => (Allocator::from_used(sb.pages, |p| walk.in_use(p)), 0, true),
            Some(walk) => (Allocator::full(sb.pages), walk.problems.len(), true),
            None => (Allocator::full(sb.pages), 0, false),
        };
        let spp = PAGE_SIZE as u64 / u64::from(dev.sector_size());
        let inner = Inner {
            sector_size: dev.sector_size(),
            pages: sb.pages,
            durable: tree,
            slot: chosen.slot,
            // A torn newer superblock is still on disk: confirm over it.
            confirmed: sb.confirmed() && chosen.discarded.is_none(),
            head: tree,
            next_gen: sb.generation + 1,
            accumulating: Batch::default(),
            flushing: None,
            alloc,
            space_known,
            cache: Cache::new(options.cache_pages),
            snapshots: BTreeMap::new(),
            writer: false,
            writer_waiters: Vec::new(),
            leader: false,
            flush_waiters: Vec::new(),
            failed: None,
            read_only: dev.read_only(),
            damage,
            discarded: chosen.discarded,
            batches: 0,
            commit: options.commit,
        };
        let store = Store { dev, spp, inner: RefCell::new(inner) };
        if store.inner.borrow().writable().is_ok()
            && let Err(e) = store.confirm().await
        {
            // Reads still work; writes say why they cannot.
            store.inner.borrow_mut().failed = Some(e);
        }
        Ok(store)
    }

    /// Makes every commit made before the call durable and confirmed, so
    /// that no later damage can be taken for a torn commit. A service calls
    /// it when it goes idle; commits that follow one another confirm each
    /// other without it. One superblock write and one flush when the
    /// newest commit is unconfirmed, nothing otherwise.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let target = self.inner.borrow().head.generation;
        self.wait_durable(target).await?;
        loop {
            let lead = poll_fn(|cx| {
                let mut inner = self.inner.borrow_mut();
                // A later durable commit's superblock confirms this one.
                if inner.confirmed || inner.durable.generation > target || inner.writable().is_err() {
                    return Poll::Ready(Ok(false));
                }
                if let Some(e) = &inner.failed {
                    return Poll::Ready(Err(StoreError::Failed(e.clone())));
                }
                if !inner.leader {
                    inner.leader = true;
                    return Poll::Ready(Ok(true));
                }
                inner.flush_waiters.push(cx.waker().clone());
                Poll::Pending
            })
            .await?;
            if !lead {
                return match self.inner.borrow().failed.clone() {
                    Some(e) => Err(StoreError::Failed(e)),
                    None => Ok(()),
                };
            }
            let _leader = Leader(self);
            if let Err(e) = self.confirm().await {
                let mut inner = self.inner.borrow_mut();
                inner.failed = Some(e.clone());
                return Err(StoreError::Failed(e));
            }
        }
    }

    /// Finishes a deferred open ([`open`](Self::open)): walks the tree,
    /// verifying every tree page, and rebuilds free space. Returns at once
    /// when that was done. Writers wait for it; readers go on meanwhile
    /// (the walk yields between batches of pages). Damage it finds is
    /// `Err(Damaged)`: reads still work where they can, writes are
    /// refused, as when open finds it.
    pub async fn finish_open(&self) -> Result<(), StoreError> {
        let _lock = self.writer_lock().await;
        self.walk_free_space().await?;
        match self.inner.borrow().damage {
            0 => Ok(()),
            n => Err(StoreError::Damaged(n)),
        }
    }

    /// Takes the writer lock (one write transaction, or walk, at a time).
    async fn writer_lock(&self) -> WriterLock<'_, D> {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.writer {
                inner.writer_waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
                inner.writer = true;
                Poll::Ready(())
            }
        })
        .await;
        WriterLock(self)
    }

    /// The deferred walk: the caller holds the writer lock.
    async fn walk_free_space(&self) -> Result<(), StoreError> {
        let sb = {
            let inner = self.inner.borrow();
            if inner.space_known {
                return Ok(());
            }
            // Deferred only for a confirmed commit, and no commit can have
            // followed it: commits need the walk first.
            inner.superblock(inner.durable, SUPER_CONFIRMED)
        };
        let walk = check::walk(&self.dev, &sb, false).await?;
        let mut inner = self.inner.borrow_mut();
        if walk.problems.is_empty() {
            inner.alloc = Allocator::from_used(sb.pages, |p| walk.in_use(p));
        }
        inner.damage = walk.problems.len();
        inner.space_known = true;
        Ok(())
    }

    /// Confirms the store ([`sync`](Self::sync)) and gives the device back.
    pub async fn close(self) -> Result<D, StoreError> {
        self.sync().await?;
        Ok(self.dev)
    }

    /// Writes the newest durable commit's superblock again, confirmed, into
    /// the other slot, and flushes. The caller leads (or is alone at
    /// open), and the commit is durable: the slot it overwrites holds the
    /// commit before it (no longer needed), a torn one, or the superblock
    /// of a batch whose leader was dropped before its flush returned (never
    /// acknowledged; the next leader writes it again, into the slot this
    /// one leaves).
    async fn confirm(&self) -> Result<(), BlockError> {
        let (sb, slot) = {
            let inner = self.inner.borrow();
            if inner.confirmed {
                return Ok(());
            }
            (inner.superblock(inner.durable, SUPER_CONFIRMED), 1 - inner.slot)
        };
        self.dev.write(slot * self.spp, &sb.encode()).await?;
        self.dev.flush().await?;
        let mut inner = self.inner.borrow_mut();
        if inner.durable.generation == sb.generation {
            inner.slot = slot;
            inner.confirmed = true;
        }
        Ok(())
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Gives the device back.
    pub fn into_device(self) -> D {
        self.dev
    }

    /// Sizes, generation and usage.
    pub fn info(&self) -> Info {
        let inner = self.inner.borrow();
        Info {
            format_version: FORMAT_VERSION,
            sector_size: inner.sector_size,
            page_size: PAGE_SIZE as u32,
            pages: inner.pages,
            generation: inner.durable.generation,
            keys: inner.durable.keys,
            used_pages: inner.durable.used,
            // Before the walk, what the superblock's count leaves (the
            // walk checks it).
            free_pages: if inner.space_known {
                inner.alloc.free_pages()
            } else {
                inner.pages.saturating_sub(FIRST_DATA_PAGE + inner.durable.used)
            },
            verified: inner.space_known,
            discarded: inner.discarded,
            confirmed: inner.confirmed,
            damage: inner.damage,
            cached_pages: inner.cache.len(),
        }
    }

    /// How many batches of commits have been made durable (group commit
    /// puts many commits in one batch; a batch flushes once, or twice with
    /// [`CommitMode::TwoPhase`]).
    pub fn batches(&self) -> u64 {
        self.inner.borrow().batches
    }

    /// A consistent read-only view of the newest durable commit; commits
    /// made while it lives do not change what it sees.
    pub fn snapshot(&self) -> Snapshot<'_, D> {
        let mut inner = self.inner.borrow_mut();
        let tree = inner.durable;
        *inner.snapshots.entry(tree.generation).or_default() += 1;
        Snapshot { store: self, tree }
    }

    /// The value of `key` in the newest durable commit.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.snapshot().get(key).await
    }

    /// Sets `key` to `value` and commits.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        tx.put(key, value).await?;
        tx.commit().await.map(|_| ())
    }

    /// Removes `key` and commits; whether it was there.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let was = tx.delete(key).await?;
        tx.commit().await?;
        Ok(was)
    }

    /// Begins a write transaction, waiting for the one before it to commit
    /// or roll back.
    pub async fn write(&self) -> Result<WriteTx<'_, D>, StoreError> {
        self.inner.borrow().writable()?;
        let lock = self.writer_lock().await;
        // A deferred open's walk comes first (once).
        self.walk_free_space().await?;
        self.inner.borrow().writable()?;
        core::mem::forget(lock);
        let head = self.inner.borrow().head;
        Ok(WriteTx {
            store: self,
            root: head.root,
            keys: head.keys,
            used: head.used,
            dirty: Dirty::default(),
            allocated: BTreeSet::new(),
            freed: Vec::new(),
            failed: false,
            finished: false,
        })
    }

    /// The bytes of page `ptr`, verified.
    async fn page_bytes(&self, ptr: &Ptr, view: View<'_>) -> Result<Rc<Vec<u8>>, StoreError> {
        if let View::Tx(_) = view {
            let inner = self.inner.borrow();
            let pending =
                inner.accumulating.pages.get(&ptr.page).or_else(|| inner.flushing.as_ref()?.pages.get(&ptr.page));
            if let Some(bytes) = pending.filter(|b| format::checksum(b) == ptr.sum) {
                return Ok(bytes.clone());
            }
        }
        if ptr.page < FIRST_DATA_PAGE || ptr.page >= self.inner.borrow().pages {
            return Err(StoreError::Corrupt { page: ptr.page, damage: Damage::Misplaced { found: ptr.page } });
        }
        let bytes = read_page(&self.dev, ptr.page).await?;
        verify(&bytes, ptr).map_err(|damage| StoreError::Corrupt { page: ptr.page, damage })?;
        Ok(Rc::new(bytes))
    }

    /// The tree node `ptr` points to.
    async fn node(&self, ptr: &Ptr, view: View<'_>) -> Result<Rc<Node>, StoreError> {
        if let View::Tx(dirty) = view
            && let Some(n) = dirty.nodes.get(&ptr.page)
        {
            return Ok(Rc::new(n.clone()));
        }
        if let Some(n) = self.inner.borrow_mut().cache.get(ptr.page, ptr.sum) {
            return Ok(n);
        }
        let bytes = self.page_bytes(ptr, view).await?;
        let (_, node) =
            Node::decode(&bytes).map_err(|e| StoreError::Corrupt { page: ptr.page, damage: Damage::Format(e) })?;
        let node = Rc::new(node);
        self.inner.borrow_mut().cache.insert(ptr.page, ptr.sum, node.clone());
        Ok(node)
    }

    /// The bytes of a value.
    async fn value(&self, value: &Value, view: View<'_>) -> Result<Vec<u8>, StoreError> {
        let (len, first) = match value {
            Value::Inline(v) => return Ok(v.clone()),
            Value::Pages { len, first } => (*len, *first),
        };
        if let View::Tx(dirty) = view
            && let Some(p) = dirty.values.get(&first.page)
        {
            return Ok(p.data.clone());
        }
        if len > MAX_VALUE as u64 {
            return Err(StoreError::Corrupt {
                page: first.page,
                damage: Damage::Format(format::FormatError::ValueLength(len)),
            });
        }
        let mut out = Vec::with_capacity(len as usize);
        let mut next = Some(first);
        while let Some(ptr) = next {
            let bytes = self.page_bytes(&ptr, view).await?;
            let corrupt = |e| StoreError::Corrupt { page: ptr.page, damage: Damage::Format(e) };
            let (_, after, data) = format::decode_index(&bytes).map_err(corrupt)?;
            for d in &data {
                let bytes = self.page_bytes(d, view).await?;
                let corrupt = |e| StoreError::Corrupt { page: d.page, damage: Damage::Format(e) };
                out.extend_from_slice(format::decode_data(&bytes).map_err(corrupt)?.1);
            }
            next = after;
        }
        if out.len() as u64 != len {
            return Err(StoreError::Corrupt {
                page: first.page,
                damage: Damage::Format(format::FormatError::DataLength(out.len())),
            });
        }
        Ok(out)
    }

    /// The pages of a stored long value (index pages first).
    async fn value_pages(&self, first: Ptr, view: View<'_>) -> Result<Vec<u64>, StoreError> {
        let mut pages = Vec::new();
        let mut next = Some(first);
        while let Some(ptr) = next {
            let bytes = self.page_bytes(&ptr, view).await?;
            let corrupt = |e| StoreError::Corrupt { page: ptr.page, damage: Damage::Format(e) };
            let (_, after, data) = format::decode_index(&bytes).map_err(corrupt)?;
            pages.push(ptr.page);
            pages.extend(data.iter().map(|d| d.page));
            next = after;
        }
        Ok(pages)
    }

    async fn get_in(&self, root: Option<Ptr>, key: &[u8], view: View<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(mut ptr) = root else { return Ok(None) };
        loop {
            let node = self.node(&ptr, view).await?;
            match &*node {
                Node::Branch { keys, children } => ptr = children[keys.partition_point(|k| k.as_slice() <= key)],
                Node::Leaf(entries) => {
                    return match entries.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                        Ok(i) => Ok(Some(self.value(&entries[i].1, view).await?)),
                        Err(_) => Ok(None),
                    };
                }
            }
        }
    }

    /// The first entry with a key `>= from` (or `> from` when `after`).
    async fn seek(
        &self,
        root: Option<Ptr>,
        from: &[u8],
        after: bool,
        view: View<'_>,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        let Some(root) = root else { return Ok(None) };
        // Branches on the way down, with the child taken.
        let mut path: Vec<(Rc<Node>, usize)> = Vec::new();
        let mut node = self.node(&root, view).await?;
        loop {
            match &*node {
                Node::Branch { keys, children } => {
                    let i = keys.partition_point(|k| k.as_slice() <= from);
                    let child = children[i];
                    path.push((node.clone(), i));
                    node = self.node(&child, view).await?;
                }
                Node::Leaf(entries) => {
                    let i = entries
                        .partition_point(|(k, _)| if after { k.as_slice() <= from } else { k.as_slice() < from });
                    if let Some((k, v)) = entries.get(i) {
                        return Ok(Some((k.clone(), self.value(v, view).await?)));
                    }
                    // Up to the nearest branch with a child to the right,
                    // then down its leftmost path.
                    loop {
                        let Some((branch, i)) = path.pop() else { return Ok(None) };
                        let Node::Branch { children, .. } = &*branch else { unreachable!("only branches on the path") };
                        if i + 1 < children.len() {
                            let next = children[i + 1];
                            path.push((branch.clone(), i + 1));
                            node = self.node(&next, view).await?;
                            break;
                        }
                    }
                    loop {
                        match &*node {
                            Node::Branch { children, .. } => {
                                let first = children[0];
                                path.push((node.clone(), 0));
                                node = self.node(&first, view).await?;
                            }
                            Node::Leaf(entries) => {
                                if let Some((k, v)) = entries.first() {
                                    return Ok(Some((k.clone(), self.value(v, view).await?)));
                                }
                                break;
                            }
                        }
                    }
                    // An empty leaf (only a root can be): nothing after it.
                    if path.is_empty() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Waits until the commit of generation `generation` is durable, leading a
    /// flush when none is running.
    async fn wait_durable(&self, generation: u64) -> Result<(), StoreError> {
        enum Step {
            Done,
            Lead,
        }
        loop {
            let step = poll_fn(|cx| {
                let mut inner = self.inner.borrow_mut();
                if inner.durable.generation >= generation {
                    return Poll::Ready(Ok(Step::Done));
                }
                if let Some(e) = &inner.failed {
                    return Poll::Ready(Err(StoreError::Failed(e.clone())));
                }
                if !inner.leader {
                    inner.leader = true;
                    return Poll::Ready(Ok(Step::Lead));
                }
                inner.flush_waiters.push(cx.waker().clone());
                Poll::Pending
            })
            .await?;
            match step {
                Step::Done => return Ok(()),
                Step::Lead => {
                    let _leader = Leader(self);
                    // Let writers that are ready commit into this batch.
                    yield_now().await;
                    if let Err(e) = self.flush_batch().await {
                        self.inner.borrow_mut().failed = Some(e);
                    }
                }
            }
        }
    }

    /// Writes the batch being flushed (or the one accumulating) and its
    /// superblock, then flushes the device once.
    async fn flush_batch(&self) -> Result<(), BlockError> {
        let (generation, tree, pages, slot, total, mode) = {
            let mut inner = self.inner.borrow_mut();
            if inner.flushing.is_none() {
                if inner.head.generation <= inner.durable.generation {
                    return Ok(());
                }
                let mut batch = core::mem::take(&mut inner.accumulating);
                batch.generation = inner.next_gen;
                batch.tree = Some(inner.head);
                inner.next_gen += 1;
                inner.flushing = Some(batch);
            }
            let batch = inner.flushing.as_ref().expect("a batch to flush");
            let pages: Vec<(u64, Rc<Vec<u8>>)> = batch.pages.iter().map(|(p, b)| (*p, b.clone())).collect();
            (batch.generation, batch.tree.expect("a batch's tree"), pages, 1 - inner.slot, inner.pages, inner.commit)
        };
        // Runs of neighbouring pages go to the device in one write.
        let mut i = 0;
        while i < pages.len() {
            let mut j = i + 1;
            while j < pages.len() && pages[j].0 == pages[j - 1].0 + 1 && j - i < 64 {
                j += 1;
            }
            let mut buf = Vec::with_capacity((j - i) * PAGE_SIZE);
            for (_, bytes) in &pages[i..j] {
                buf.extend_from_slice(bytes);
            }
            self.dev.write(pages[i].0 * self.spp, &buf).await?;
            i = j;
        }
        let sb = Superblock {
            version: FORMAT_VERSION,
            sector_size: self.dev.sector_size(),
            pages: total,
            generation,
            root: tree.root,
            keys: tree.keys,
            used: tree.used,
            flags: if mode == CommitMode::TwoPhase { SUPER_CONFIRMED } else { 0 },
        };
        if mode == CommitMode::TwoPhase {
            self.dev.flush().await?;
        }
        self.dev.write(slot * self.spp, &sb.encode()).await?;
        self.dev.flush().await?;
        let mut inner = self.inner.borrow_mut();
        inner.durable = Tree { generation, ..tree };
        inner.slot = slot;
        inner.confirmed = mode == CommitMode::TwoPhase;
        inner.flushing = None;
        inner.batches += 1;
        inner.reclaim();
        Ok(())
    }
}

/// Resets the leader flag and wakes the waiters, also when the leading
/// future is dropped halfway (the batch then stays for the next leader).
struct Leader<'s, D: BlockDevice>(&'s Store<D>);

impl<D: BlockDevice> Drop for Leader<'_, D> {
    fn drop(&mut self) {
        let mut inner = self.0.inner.borrow_mut();
        inner.leader = false;
        for w in inner.flush_waiters.drain(..) {
            w.wake();
        }
    }
}

pub(crate) async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// A read-only view of one durable commit. Pages it can see are not reused
/// while it lives.
#[derive(Debug)]
pub struct Snapshot<'s, D: BlockDevice> {
    store: &'s Store<D>,
    tree: Tree,
}

impl<D: BlockDevice> Snapshot<'_, D> {
    /// The commit generation the snapshot sees.
    pub fn generation(&self) -> u64 {
        self.tree.generation
    }

    /// Keys in the snapshot.
    pub fn len(&self) -> u64 {
        self.tree.keys
    }

    /// Whether the snapshot holds no key.
    pub fn is_empty(&self) -> bool {
        self.tree.keys == 0
    }

    /// The value of `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get_in(self.tree.root, key, View::Durable).await
    }

    /// The first entry with a key `>= from` (`> from` when `after`).
    pub async fn seek(&self, from: &[u8], after: bool) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.store.seek(self.tree.root, from, after, View::Durable).await
    }

    /// The entries whose keys start with `prefix`, in key order, one at a
    /// time (memory stays bounded however many there are).
    pub fn scan(&self, prefix: &[u8]) -> Scan<'_, '_, D> {
        Scan { snapshot: self, prefix: prefix.to_vec(), last: None, done: false }
    }
}

impl<D: BlockDevice> Drop for Snapshot<'_, D> {
    fn drop(&mut self) {
        let mut inner = self.store.inner.borrow_mut();
        if let Some(n) = inner.snapshots.get_mut(&self.tree.generation) {
            *n -= 1;
            if *n == 0 {
                inner.snapshots.remove(&self.tree.generation);
            }
        }
        inner.reclaim();
    }
}

/// A prefix scan over a snapshot.
#[derive(Debug)]
pub struct Scan<'a, 's, D: BlockDevice> {
    snapshot: &'a Snapshot<'s, D>,
    prefix: Vec<u8>,
    last: Option<Vec<u8>>,
    done: bool,
}

impl<D: BlockDevice> Scan<'_, '_, D> {
    /// The next entry, or `None` at the end.
    pub async fn next(&mut self) -> Option<Result<(Vec<u8>, Vec<u8>), StoreError>> {
        if self.done {
            return None;
        }
        let found = match &self.last {
            None => self.snapshot.seek(&self.prefix, false).await,
            Some(last) => self.snapshot.seek(last, true).await,
        };
        match found {
            Ok(Some((k, v))) if k.starts_with(&self.prefix) => {
                self.last = Some(k.clone());
                Some(Ok((k, v)))
            }
            Ok(_) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// Up to `limit` entries more.
    pub async fn collect(&mut self, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        while out.len() < limit {
            match self.next().await {
                Some(e) => out.push(e?),
                None => break,
            }
        }
        Ok(out)
    }
}

/// A write transaction: sees its own changes on top of the newest commit;
/// nothing of it is visible to others or durable until
/// [`commit`](WriteTx::commit) returns. Dropped without commit, it rolls
/// back.
#[derive(Debug)]
pub struct WriteTx<'s, D: BlockDevice> {
    store: &'s Store<D>,
    root: Option<Ptr>,
    keys: u64,
    used: u64,
    dirty: Dirty,
    /// Pages this transaction allocated (not yet visible to anyone).
    allocated: BTreeSet<u64>,
    /// Pages of the tree it started from that it no longer uses.
    freed: Vec<u64>,
    failed: bool,
    finished: bool,
}

/// A node that replaces one child of a branch: the separator before it
/// (none for the first) and the pointer.
type Piece = (Option<Vec<u8>>, Ptr);

impl<'s, D: BlockDevice> WriteTx<'s, D> {
    /// The value of `key` as this transaction sees it.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get_in(self.root, key, View::Tx(&self.dirty)).await
    }

    /// The first entry with a key `>= from` (`> from` when `after`), as this
    /// transaction sees it.
    pub async fn seek(&self, from: &[u8], after: bool) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.store.seek(self.root, from, after, View::Tx(&self.dirty)).await
    }

    /// Keys as this transaction sees them.
    pub fn len(&self) -> u64 {
        self.keys
    }

    /// Whether this transaction sees no key.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Sets `key` to `value`.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_KEY {
            return Err(StoreError::KeyTooLong(key.len()));
        }
        if value.len() > MAX_VALUE {
            return Err(StoreError::ValueTooLong(value.len()));
        }
        let r = self.change(key, Some(value)).await.map(|_| ());
        self.fail_on_error(r)
    }

    /// Removes `key`; whether it was there.
    pub async fn delete(&mut self, key: &[u8]) -> Result<bool, StoreError> {
        if key.len() > MAX_KEY {
            return Ok(false);
        }
        let r = self.change(key, None).await;
        self.fail_on_error(r)
    }

    fn fail_on_error<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn alloc(&mut self, reserve: u64) -> Result<u64, StoreError> {
        let mut inner = self.store.inner.borrow_mut();
        match inner.alloc.alloc(reserve) {
            Some(p) => {
                self.allocated.insert(p);
                self.used += 1;
                Ok(p)
            }
            None => Err(StoreError::Full { free: inner.alloc.free_pages(), pending: inner.alloc.pending_pages() }),
        }
    }

    /// Gives up `page`: at once if this transaction made it, else when the
    /// commit is durable and no snapshot sees it.
    fn free(&mut self, page: u64) {
        self.used -= 1;
        if self.allocated.remove(&page) {
            self.dirty.nodes.remove(&page);
            self.store.inner.borrow_mut().alloc.release(page);
        } else {
            self.freed.push(page);
        }
    }

    /// Stores `node` in place of `old` (in place if this transaction made
    /// `old`, else in a new page) and points to it.
    fn place(&mut self, node: Node, old: Option<u64>, reserve: u64) -> Result<Ptr, StoreError> {
        let page = match old {
            Some(p) if self.allocated.contains(&p) => p,
            _ => {
                let p = self.alloc(reserve)?;
                if let Some(old) = old {
                    self.free(old);
                }
                p
            }
        };
        self.dirty.nodes.insert(page, node);
        Ok(Ptr { page, generation: 0, sum: 0 })
    }

    async fn free_value(&mut self, value: &Value) -> Result<(), StoreError> {
        let Value::Pages { first, .. } = value else { return Ok(()) };
        let pages = match self.dirty.values.remove(&first.page) {
            Some(p) => p.index.into_iter().chain(p.data_pages).collect(),
            None => self.store.value_pages(*first, View::Tx(&self.dirty)).await?,
        };
        for p in pages {
            self.free(p);
        }
        Ok(())
    }

    fn store_value(&mut self, value: &[u8]) -> Result<Value, StoreError> {
        if value.len() <= MAX_INLINE_VALUE {
            return Ok(Value::Inline(value.to_vec()));
        }
        let data_count = value.len().div_ceil(DATA_PER_PAGE);
        let index_count = data_count.div_ceil(PTRS_PER_INDEX);
        let mut index = Vec::with_capacity(index_count);
        let mut data_pages = Vec::with_capacity(data_count);
        for _ in 0..index_count {
            index.push(self.alloc(RESERVE)?);
        }
        for _ in 0..data_count {
            data_pages.push(self.alloc(RESERVE)?);
        }
        let first = index[0];
        self.dirty.values.insert(first, PendingValue { index, data_pages, data: value.to_vec() });
        Ok(Value::Pages { len: value.len() as u64, first: Ptr { page: first, generation: 0, sum: 0 } })
    }

    /// Puts (`Some`) or deletes (`None`) one key; whether it was there.
    async fn change(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<bool, StoreError> {
        if self.failed {
            return Err(StoreError::TransactionFailed);
        }
        // Deletes may use the reserve, so that a full store can shrink.
        let reserve = if value.is_some() { RESERVE } else { 0 };
        // Down to the leaf, keeping each node and the child taken.
        let mut path: Vec<(Ptr, Node, usize)> = Vec::new();
        if let Some(mut ptr) = self.root {
            loop {
                let node = (*self.store.node(&ptr, View::Tx(&self.dirty)).await?).clone();
                match &node {
                    Node::Branch { keys, children } => {
                        let i = keys.partition_point(|k| k.as_slice() <= key);
                        let child = children[i];
                        path.push((ptr, node, i));
                        ptr = child;
                    }
                    Node::Leaf(_) => {
                        path.push((ptr, node, 0));
                        break;
                    }
                }
            }
        }
        let (leaf_ptr, mut leaf) = match path.pop() {
            Some((ptr, node, _)) => (Some(ptr), node),
            None => (None, Node::Leaf(Vec::new())),
        };
        let Node::Leaf(entries) = &mut leaf else { unreachable!("the path ends in a leaf") };
        let found = entries.binary_search_by(|(k, _)| k.as_slice().cmp(key));
        let existed = found.is_ok();
        match (value, found) {
            (None, Err(_)) => return Ok(false),
            (None, Ok(i)) => {
                let (_, old) = entries.remove(i);
                self.keys -= 1;
                self.free_value(&old).await?;
            }
            (Some(v), found) => {
                let new = self.store_value(v)?;
                let Node::Leaf(entries) = &mut leaf else { unreachable!() };
                match found {
                    Ok(i) => {
                        let old = core::mem::replace(&mut entries[i].1, new);
                        self.free_value(&old).await?;
                    }
                    Err(i) => {
                        entries.insert(i, (key.to_vec(), new));
                        self.keys += 1;
                    }
                }
            }
        }
        // Back up: split what overflows, merge what got small, copy the
        // path.
        let mut current = Some(leaf);
        let mut old_page = leaf_ptr.map(|p| p.page);
        while let Some((parent_ptr, mut parent, mut idx)) = path.pop() {
            let Node::Branch { keys, children } = &mut parent else { unreachable!("branches above leaves") };
            let mut node = current.take().filter(|n| n.count() > 0);
            // A small node merges with a neighbour when both fit one page.
            if let Some(n) = &node
                && n.encoded_len() < CAPACITY / 4
                && children.len() > 1
            {
                let sib_idx = if idx > 0 { idx - 1 } else { idx + 1 };
                let sib_ptr = children[sib_idx];
                let sibling = (*self.store.node(&sib_ptr, View::Tx(&self.dirty)).await?).clone();
                let (l, r) = if sib_idx < idx { (sibling, n.clone()) } else { (n.clone(), sibling) };
                let lo = idx.min(sib_idx);
                if let Some(merged) = merge(l, &keys[lo], r) {
                    self.free(sib_ptr.page);
                    keys.remove(lo);
                    children.remove(lo + 1);
                    idx = lo;
                    node = Some(merged);
                }
            }
            let pieces = match node {
                None => {
                    if let Some(p) = old_page {
                        self.free(p);
                    }
                    Vec::new()
                }
                Some(n) => self.place_split(n, old_page, reserve)?,
            };
            let Node::Branch { keys, children } = &mut parent else { unreachable!() };
            replace_child(keys, children, idx, pieces);
            current = Some(parent);
            old_page = Some(parent_ptr.page);
        }
        // The root.
        let node = current.take().filter(|n| n.count() > 0);
        let pieces = match node {
            None => {
                if let Some(p) = old_page {
                    self.free(p);
                }
                Vec::new()
            }
            Some(n) => self.place_split(n, old_page, reserve)?,
        };
        self.root = match pieces.len() {
            0 => None,
            1 => Some(pieces[0].1),
            _ => {
                let mut keys = Vec::new();
                let mut children = Vec::new();
                for (sep, ptr) in pieces {
                    keys.extend(sep);
                    children.push(ptr);
                }
                Some(self.place(Node::Branch { keys, children }, None, reserve)?)
            }
        };
        // A root branch with one child gives way to it.
        while let Some(root) = self.root {
            match self.dirty.nodes.get(&root.page) {
                Some(Node::Branch { children, .. }) if children.len() == 1 => {
                    let child = children[0];
                    self.free(root.page);
                    self.root = Some(child);
                }
                _ => break,
            }
        }
        Ok(existed)
    }

    /// Places `node`, split in pieces that fit pages.
    fn place_split(&mut self, node: Node, old: Option<u64>, reserve: u64) -> Result<Vec<Piece>, StoreError> {
        let mut out = Vec::new();
        for (i, (sep, piece)) in split(node).into_iter().enumerate() {
            let ptr = self.place(piece, if i == 0 { old } else { None }, reserve)?;
            out.push((sep, ptr));
        }
        Ok(out)
    }

    /// Encodes the pages this transaction made, children first, so that
    /// each parent holds its children's checksums.
    fn seal(&mut self, page: u64, generation: u64, out: &mut Vec<(u64, Vec<u8>, Option<Node>)>) -> Ptr {
        let mut node = self.dirty.nodes.remove(&page).expect("a page of this transaction");
        match &mut node {
            Node::Branch { children, .. } => {
                for c in children.iter_mut() {
                    if self.dirty.nodes.contains_key(&c.page) {
                        *c = self.seal(c.page, generation, out);
                    }
                }
            }
            Node::Leaf(entries) => {
                for (_, v) in entries.iter_mut() {
                    if let Value::Pages { first, .. } = v
                        && let Some(pending) = self.dirty.values.remove(&first.page)
                    {
                        *first = seal_value(pending, generation, out);
                    }
                }
            }
        }
        let bytes = node.encode(page, generation);
        let sum = format::checksum(&bytes);
        out.push((page, bytes, Some(node)));
        Ptr { page, generation, sum }
    }

    /// Makes the transaction durable: returns once a flush covers it (with
    /// the generation of the commit that holds it). Commits of other
    /// writers made meanwhile share the flush.
    pub async fn commit(mut self) -> Result<u64, StoreError> {
        if self.failed {
            return Err(StoreError::TransactionFailed);
        }
        let store = self.store;
        if self.allocated.is_empty() && self.freed.is_empty() {
            // Nothing changed: durable as soon as what it read is.
            let generation = store.inner.borrow().head.generation;
            drop(self);
            store.wait_durable(generation).await?;
            return Ok(generation);
        }
        let generation = store.inner.borrow().next_gen;
        let mut sealed = Vec::new();
        let root = self.root.map(|r| {
            if self.dirty.nodes.contains_key(&r.page) { self.seal(r.page, generation, &mut sealed) } else { r }
        });
        debug_assert!(self.dirty.nodes.is_empty() && self.dirty.values.is_empty(), "unreachable pages in a commit");
        {
            let mut inner = store.inner.borrow_mut();
            for page in self.freed.drain(..) {
                if inner.accumulating.pages.remove(&page).is_some() {
                    inner.alloc.release(page);
                } else {
                    inner.alloc.defer(generation, page);
                }
            }
            for (page, bytes, node) in sealed {
                if let Some(node) = node {
                    inner.cache.insert(page, format::checksum(&bytes), Rc::new(node));
                }
                inner.accumulating.pages.insert(page, Rc::new(bytes));
            }
            inner.head = Tree { generation, root, keys: self.keys, used: self.used };
            self.allocated.clear();
            self.finished = true;
        }
        drop(self);
        store.wait_durable(generation).await?;
        Ok(generation)
    }
}

impl<D: BlockDevice> Drop for WriteTx<'_, D> {
    fn drop(&mut self) {
        let mut inner = self.store.inner.borrow_mut();
        if !self.finished {
            for &p in &self.allocated {
                inner.alloc.release(p);
            }
        }
        inner.writer = false;
        for w in inner.writer_waiters.drain(..) {
            w.wake();
        }
    }
}

/// The writer lock, held by a walk (or, forgotten, by a [`WriteTx`],
/// whose drop releases it).
struct WriterLock<'s, D: BlockDevice>(&'s Store<D>);

impl<D: BlockDevice> Drop for WriterLock<'_, D> {
    fn drop(&mut self) {
        let mut inner = self.0.inner.borrow_mut();
        inner.writer = false;
        for w in inner.writer_waiters.drain(..) {
            w.wake();
        }
    }
}

/// Encodes a long value's pages; the pointer to its first index page.
fn seal_value(v: PendingValue, generation: u64, out: &mut Vec<(u64, Vec<u8>, Option<Node>)>) -> Ptr {
    let mut data = Vec::with_capacity(v.data_pages.len());
    for (page, chunk) in v.data_pages.iter().zip(v.data.chunks(DATA_PER_PAGE)) {
        let bytes = format::encode_data(*page, generation, chunk);
        data.push(Ptr { page: *page, generation, sum: format::checksum(&bytes) });
        out.push((*page, bytes, None));
    }
    let mut next = None;
    for (page, group) in v.index.iter().zip(data.chunks(PTRS_PER_INDEX)).rev() {
        let bytes = format::encode_index(*page, generation, next, group);
        let ptr = Ptr { page: *page, generation, sum: format::checksum(&bytes) };
        out.push((*page, bytes, None));
        next = Some(ptr);
    }
    next.expect("a long value has an index page")
}

/// Replaces child `idx` of a branch with `pieces` (none: removes it).
fn replace_child(keys: &mut Vec<Vec<u8>>, children: &mut Vec<Ptr>, idx: usize, pieces: Vec<Piece>) {
    if pieces.is_empty() {
        children.remove(idx);
        if !keys.is_empty() {
            keys.remove(idx.saturating_sub(1));
        }
        return;
    }
    let mut it = pieces.into_iter();
    let (_, first) = it.next().expect("one piece");
    children[idx] = first;
    for (n, (sep, ptr)) in it.enumerate() {
        children.insert(idx + 1 + n, ptr);
        keys.insert(idx + n, sep.expect("a separator before every piece but the first"));
    }
}

/// `l` and `r` as one node (with `sep` between two branches), if it fits.
fn merge(l: Node, sep: &[u8], r: Node) -> Option<Node> {
    let merged = match (l, r) {
        (Node::Leaf(mut a), Node::Leaf(b)) => {
            a.extend(b);
            Node::Leaf(a)
        }
        (Node::Branch { keys: mut ak, children: mut ac }, Node::Branch { keys: bk, children: bc }) => {
            ak.push(sep.to_vec());
            ak.extend(bk);
            ac.extend(bc);
            Node::Branch { keys: ak, children: ac }
        }
        _ => return None,
    };
    (merged.encoded_len() <= CAPACITY).then_some(merged)
}

/// `node` as nodes that each fit a page, with the separator before each
/// but the first. An overfull node is at most one entry over, so two
/// pieces, cut where the larger is smallest, always fit.
fn split(node: Node) -> Vec<(Option<Vec<u8>>, Node)> {
    if node.encoded_len() <= CAPACITY {
        return alloc::vec![(None, node)];
    }
    match node {
        Node::Leaf(mut entries) => {
            let sizes: Vec<usize> = entries.iter().map(|(k, v)| format::leaf_entry_len(k, v)).collect();
            let total: usize = sizes.iter().sum();
            let mut left = 0;
            let mut best = (usize::MAX, 1);
            for (i, s) in sizes.iter().enumerate().take(sizes.len() - 1) {
                left += s;
                let worst = left.max(total - left);
                if worst < best.0 {
                    best = (worst, i + 1);
                }
            }
            let right = entries.split_off(best.1);
            let sep = right[0].0.clone();
            alloc::vec![(None, Node::Leaf(entries)), (Some(sep), Node::Leaf(right))]
        }
        Node::Branch { mut keys, mut children } => {
            let sizes: Vec<usize> = keys.iter().map(|k| format::branch_entry_len(k)).collect();
            let total: usize = sizes.iter().sum();
            let mut left = 0;
            let mut best = (usize::MAX, 1);
            for (m, s) in sizes.iter().enumerate() {
                // Key m goes up; keys before it stay left, after it right.
                let worst = left.max(total - left - s);
                if worst < best.0 && m > 0 && m + 1 < sizes.len() + 1 {
                    best = (worst, m);
                }
                left += s;
            }
            let m = best.1;
            let right_keys = keys.split_off(m + 1);
            let sep = keys.pop().expect("the separator that goes up");
            let right_children = children.split_off(m + 1);
            alloc::vec![
                (None, Node::Branch { keys, children }),
                (Some(sep), Node::Branch { keys: right_keys, children: right_children })
            ]
        }
    }
}
