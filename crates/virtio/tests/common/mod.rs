//! A simulated virtio device for the host tests: registers as a struct,
//! queue memory shared through plain host allocations (the driver's DMA
//! buffers, whose addresses are host addresses). The device acts when the
//! driver notifies it, within the register write.

#![allow(dead_code)]

use skiff_virtio::regs::Mmio;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// DMA buffers (page-aligned allocations) come from a region low in the
/// address space, as guest memory is: a legacy queue's 32-bit page frame
/// number cannot reach the host heap. Never freed; the tests are small.
struct LowDma;

const LOW_BASE: usize = 0x1000_0000;
const LOW_SIZE: usize = 256 << 20;
static LOW_NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's DMA buffers come from the low region.
    pub static LOW: Cell<bool> = const { Cell::new(true) };
}

fn low_region() -> usize {
    static MAPPED: std::sync::Once = std::sync::Once::new();
    MAPPED.call_once(|| {
        // SAFETY: a fresh anonymous mapping at an address nothing else uses
        // (MAP_FIXED_NOREPLACE fails rather than replace a mapping).
        let p = unsafe {
            libc::mmap(
                LOW_BASE as *mut libc::c_void,
                LOW_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as usize, LOW_BASE, "cannot map the low DMA region");
    });
    LOW_BASE
}

// SAFETY: page-aligned allocations are carved from the low region (never
// reused), all others are the system allocator's.
unsafe impl GlobalAlloc for LowDma {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() == 4096 && LOW.with(Cell::get) {
            let base = low_region();
            let len = layout.size().next_multiple_of(4096);
            let at = LOW_NEXT.fetch_add(len, Ordering::Relaxed);
            assert!(at + len <= LOW_SIZE, "the low DMA region is exhausted");
            // Anonymous memory starts zeroed and is never handed out twice.
            return (base + at) as *mut u8;
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if (LOW_BASE..LOW_BASE + LOW_SIZE).contains(&(ptr as usize)) {
            return;
        }
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: LowDma = LowDma;

/// What the device does with the chains it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Transmitted frames are recorded; received ones come from `deliver`.
    Net,
    /// Requests run against `disk`.
    Blk,
    /// Requests are filled with a counting pattern.
    Rng,
    /// Nothing: the test plays the device.
    Manual,
}

#[derive(Debug, Default, Clone)]
pub struct SimQueue {
    pub num_max: u32,
    pub num: u32,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub ready: bool,
    pub pfn: u32,
    pub align: u32,
    pub last_avail: u16,
    pub used_idx: u16,
    /// The MSI-X vector the driver gave the queue (virtio-pci).
    pub msix_vector: u16,
}

pub struct Sim {
    pub version: u32,
    pub device_id: u32,
    pub kind: Kind,
    pub features: u64,
    pub driver_features: u64,
    /// Clear FEATURES_OK when the driver sets it.
    pub reject_features: bool,
    dev_sel: u32,
    drv_sel: u32,
    pub status: u8,
    queue_sel: u32,
    pub page_size: u32,
    pub queues: Vec<SimQueue>,
    pub config: Vec<u8>,
    pub config_generation: u32,
    /// Notifications per queue.
    pub notifies: Vec<u32>,
    /// Interrupts per queue: used entries the driver asked to hear of
    /// (`used_event` with `RING_EVENT_IDX`, else no `NO_INTERRUPT` flag).
    pub interrupts: Vec<u32>,
    pub tx_frames: Vec<Vec<u8>>,
    pub disk: Vec<u8>,
    pub rng_next: u8,
    /// Most bytes an entropy answer carries.
    pub rng_max: u32,
    /// Answer block requests with this status instead.
    pub blk_status: Option<u8>,
    /// Report this used length for block requests instead.
    pub blk_claim_len: Option<u32>,
    /// The block device's serial number (GET_ID).
    pub blk_serial: Vec<u8>,
    /// Discard segments received: first sector, count.
    pub discards: Vec<(u64, u32)>,
    pub isr: u32,
    /// MSI-X vectors the device accepts for its queues (others read back
    /// as NO_VECTOR).
    pub msix_vectors: u16,
}

pub type Shared = Rc<RefCell<Sim>>;

/// A descriptor as the device sees it: address, length, writable.
pub type Desc = (u64, u32, bool);

impl Sim {
    pub fn new(version: u32, device_id: u32, kind: Kind, features: u64, queues: &[u32]) -> Shared {
        Rc::new(RefCell::new(Sim {
            version,
            device_id,
            kind,
            features,
            driver_features: 0,
            reject_features: false,
            dev_sel: 0,
            drv_sel: 0,
            status: 0,
            queue_sel: 0,
            page_size: 0,
            queues: queues.iter().map(|&num_max| SimQueue { num_max, ..SimQueue::default() }).collect(),
            config: vec![0; 64],
            config_generation: 0,
            notifies: vec![0; queues.len()],
            interrupts: vec![0; queues.len()],
            tx_frames: Vec::new(),
            disk: Vec::new(),
            rng_next: 0,
            rng_max: u32::MAX,
            blk_status: None,
            blk_claim_len: None,
            blk_serial: Vec::new(),
            discards: Vec::new(),
            isr: 0,
            msix_vectors: 0,
        }))
    }

    fn q(&mut self) -> Option<&mut SimQueue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The queue's ring addresses, legacy ones worked out from the PFN.
    fn addrs(&self, q: usize) -> (u64, u64, u64, u16) {
        let sq = &self.queues[q];
        let n = sq.num as u64;
        if self.version == 1 {
            let desc = u64::from(sq.pfn) * u64::from(self.page_size);
            let avail = desc + 16 * n;
            let used = (avail + 6 + 2 * n).next_multiple_of(u64::from(sq.align));
            (desc, avail, used, sq.num as u16)
        } else {
            (sq.desc, sq.avail, sq.used, sq.num as u16)
        }
    }

    /// Takes the next available chain: its head and (addr, len, writable).
    pub fn pop_avail(&mut self, q: usize) -> Option<(u16, Vec<Desc>)> {
        let (desc, avail, _, n) = self.addrs(q);
        let idx = read16(avail + 2);
        let last = self.queues[q].last_avail;
        if idx == last {
            return None;
        }
        let head = read16(avail + 4 + 2 * u64::from(last % n));
        self.queues[q].last_avail = last.wrapping_add(1);
        if self.driver_features & skiff_virtio::features::RING_EVENT_IDX != 0 && idx == last.wrapping_add(1) {
            // Like QEMU: out of buffers, ask to hear of the next one.
            self.set_avail_event(q, idx);
        }
        let mut chain = Vec::new();
        let mut i = head;
        for _ in 0..n {
            let d = desc + 16 * u64::from(i);
            let flags = read16(d + 12);
            chain.push((read64(d), read32(d + 8), flags & 2 != 0));
            if flags & 1 == 0 {
                break;
            }
            i = read16(d + 14);
        }
        Some((head, chain))
    }

    /// Returns a chain: writes the used entry and publishes it.
    pub fn push_used(&mut self, q: usize, id: u32, len: u32) {
        let (_, _, used, n) = self.addrs(q);
        let idx = self.queues[q].used_idx;
        write32(used + 4 + 8 * u64::from(idx % n), id);
        write32(used + 8 + 8 * u64::from(idx % n), len);
        self.queues[q].used_idx = idx.wrapping_add(1);
        write16(used + 2, idx.wrapping_add(1));
        self.isr |= 1;
        // VIRTIO 1.2, 2.7.10: with the event index, interrupt when the new
        // index passes `used_event` (vring_need_event); else unless the
        // driver set VIRTQ_AVAIL_F_NO_INTERRUPT.
        let wanted = if self.driver_features & skiff_virtio::features::RING_EVENT_IDX != 0 {
            let (event, new) = (self.used_event(q), idx.wrapping_add(1));
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(idx)
        } else {
            self.avail_flags(q) & 1 == 0
        };
        if wanted {
            self.interrupts[q] += 1;
        }
    }

    /// Writes a used entry at ring slot `slot` without publishing it.
    pub fn write_used_entry(&mut self, q: usize, slot: u16, id: u32, len: u32) {
        let (_, _, used, n) = self.addrs(q);
        write32(used + 4 + 8 * u64::from(slot % n), id);
        write32(used + 8 + 8 * u64::from(slot % n), len);
    }

    /// Writes the used index as it is.
    pub fn set_used_idx(&mut self, q: usize, idx: u16) {
        let (_, _, used, _) = self.addrs(q);
        self.queues[q].used_idx = idx;
        write16(used + 2, idx);
    }

    pub fn set_used_flags(&mut self, q: usize, flags: u16) {
        let (_, _, used, _) = self.addrs(q);
        write16(used, flags);
    }

    pub fn set_avail_event(&mut self, q: usize, event: u16) {
        let (_, _, used, n) = self.addrs(q);
        write16(used + 4 + 8 * u64::from(n), event);
    }

    pub fn avail_flags(&self, q: usize) -> u16 {
        read16(self.addrs(q).1)
    }

    pub fn used_event(&self, q: usize) -> u16 {
        let (_, avail, _, n) = self.addrs(q);
        read16(avail + 4 + 2 * u64::from(n))
    }

    pub fn net_header(&self) -> usize {
        if self.version == 1 { 10 } else { 12 }
    }

    /// Puts a received frame into the next posted receive buffer.
    pub fn deliver(&mut self, frame: &[u8]) -> bool {
        let Some((head, chain)) = self.pop_avail(0) else { return false };
        let mut data = vec![0u8; self.net_header()];
        data.extend_from_slice(frame);
        let written = scatter(&chain, &data);
        assert_eq!(written, data.len(), "a posted receive chain is too small");
        self.push_used(0, u32::from(head), written as u32);
        true
    }

    fn handle(&mut self, q: usize) {
        self.notifies[q] += 1;
        match self.kind {
            Kind::Net if q == 1 => {
                while let Some((head, chain)) = self.pop_avail(1) {
                    let bytes = gather(&chain);
                    self.tx_frames.push(bytes[self.net_header()..].to_vec());
                    self.push_used(1, u32::from(head), 0);
                }
            }
            Kind::Blk => {
                while let Some((head, chain)) = self.pop_avail(0) {
                    let written = self.block_request(&chain);
                    self.push_used(0, u32::from(head), written);
                }
            }
            Kind::Rng => {
                while let Some((head, chain)) = self.pop_avail(0) {
                    let (addr, len, _) = chain[0];
                    let len = len.min(self.rng_max);
                    for i in 0..u64::from(len) {
                        write8(addr + i, self.rng_next);
                        self.rng_next = self.rng_next.wrapping_add(1);
                    }
                    self.push_used(0, u32::from(head), len);
                }
            }
            _ => {}
        }
    }

    fn block_request(&mut self, chain: &[(u64, u32, bool)]) -> u32 {
        let (hdr, _, _) = chain[0];
        let (kind, sector) = (read32(hdr), read64(hdr + 8));
        let (status_addr, _, _) = *chain.last().unwrap();
        let data = &chain[1..chain.len() - 1];
        let at = sector as usize * 512;
        let mut written = 1;
        let status = match kind {
            _ if self.blk_status.is_some() => self.blk_status.unwrap(),
            0 => {
                let len: usize = data.iter().map(|d| d.1 as usize).sum();
                written += scatter(data, &self.disk[at..at + len]) as u32;
                0
            }
            1 => {
                let bytes = gather(data);
                self.disk[at..at + bytes.len()].copy_from_slice(&bytes);
                0
            }
            4 => 0,
            8 => {
                // GET_ID, as QEMU answers it: the serial and its NUL when
                // shorter than the buffer.
                let mut id = self.blk_serial.clone();
                id.push(0);
                id.truncate(20);
                scatter(data, &id);
                written += data.iter().map(|d| d.1).sum::<u32>();
                0
            }
            11 if self.features & (1 << 13) != 0 => {
                let seg = gather(data);
                let (first, count) = (
                    u64::from_le_bytes(seg[..8].try_into().unwrap()),
                    u32::from_le_bytes(seg[8..12].try_into().unwrap()),
                );
                self.discards.push((first, count));
                let (from, to) = (first as usize * 512, (first as usize + count as usize) * 512);
                self.disk[from..to].fill(0);
                0
            }
            _ => 2,
        };
        write8(status_addr, status);
        self.blk_claim_len.unwrap_or(written)
    }
}

fn gather(chain: &[(u64, u32, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len, writable) in chain {
        assert!(!writable, "a transmit chain with a writable buffer");
        out.extend((0..u64::from(len)).map(|i| read8(addr + i)));
    }
    out
}

fn scatter(chain: &[(u64, u32, bool)], data: &[u8]) -> usize {
    let mut done = 0;
    for &(addr, len, writable) in chain {
        assert!(writable, "a receive chain with a read-only buffer");
        let n = (len as usize).min(data.len() - done);
        for i in 0..n {
            write8(addr + i as u64, data[done + i]);
        }
        done += n;
    }
    done
}

// The device's view of guest memory: the driver's DMA buffers are host
// allocations, so their addresses are host addresses.
fn read8(a: u64) -> u8 {
    // SAFETY: `a` lies in a live DMA buffer of the driver under test.
    unsafe { std::ptr::with_exposed_provenance::<u8>(a as usize).read_volatile() }
}
fn read16(a: u64) -> u16 {
    // SAFETY: as in `read8`; ring fields are aligned.
    unsafe { std::ptr::with_exposed_provenance::<u16>(a as usize).read_volatile() }
}
fn read32(a: u64) -> u32 {
    // SAFETY: as in `read16`.
    unsafe { std::ptr::with_exposed_provenance::<u32>(a as usize).read_volatile() }
}
fn read64(a: u64) -> u64 {
    // SAFETY: as in `read16`.
    unsafe { std::ptr::with_exposed_provenance::<u64>(a as usize).read_volatile() }
}
fn write8(a: u64, v: u8) {
    // SAFETY: as in `read8`.
    unsafe { std::ptr::with_exposed_provenance_mut::<u8>(a as usize).write_volatile(v) }
}
fn write16(a: u64, v: u16) {
    // SAFETY: as in `read16`.
    unsafe { std::ptr::with_exposed_provenance_mut::<u16>(a as usize).write_volatile(v) }
}
fn write32(a: u64, v: u32) {
    // SAFETY: as in `read16`.
    unsafe { std::ptr::with_exposed_provenance_mut::<u32>(a as usize).write_volatile(v) }
}

/// The virtio-mmio register file of a simulated device.
pub struct MmioRegs(pub Shared);

impl Mmio for MmioRegs {
    fn read8(&mut self, offset: usize) -> u8 {
        let s = self.0.borrow();
        s.config.get(offset - 0x100).copied().unwrap_or(0)
    }
    fn read16(&mut self, offset: usize) -> u16 {
        u16::from(self.read8(offset)) | (u16::from(self.read8(offset + 1)) << 8)
    }
    fn read32(&mut self, offset: usize) -> u32 {
        if offset >= 0x100 {
            return u32::from(self.read16(offset)) | (u32::from(self.read16(offset + 2)) << 16);
        }
        let mut s = self.0.borrow_mut();
        match offset {
            0x000 => 0x7472_6976,
            0x004 => s.version,
            0x008 => s.device_id,
            0x00c => 0x554d_4551,
            0x010 => (s.features >> (32 * s.dev_sel.min(1))) as u32,
            0x034 => s.q().map_or(0, |q| q.num_max),
            0x040 => s.q().map_or(0, |q| q.pfn),
            0x044 => s.q().map_or(0, |q| u32::from(q.ready)),
            0x060 => s.isr,
            0x070 => u32::from(s.status),
            0x0fc => s.config_generation,
            _ => panic!("read of register {offset:#x}"),
        }
    }
    fn write8(&mut self, offset: usize, _value: u8) {
        panic!("byte write at {offset:#x}");
    }
    fn write16(&mut self, offset: usize, _value: u16) {
        panic!("16-bit write at {offset:#x}");
    }
    fn write32(&mut self, offset: usize, value: u32) {
        let mut s = self.0.borrow_mut();
        let v1 = s.version == 1;
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            0x014 => s.dev_sel = value,
            0x020 => {
                let f = s.driver_features;
                s.driver_features = if s.drv_sel == 0 { low(f) } else { high(f) };
            }
            0x024 => s.drv_sel = value,
            0x028 if v1 => s.page_size = value,
            0x030 => s.queue_sel = value,
            0x038 => s.q().unwrap().num = value,
            0x03c if v1 => s.q().unwrap().align = value,
            0x040 if v1 => s.q().unwrap().pfn = value,
            0x044 if !v1 => s.q().unwrap().ready = value != 0,
            0x050 => s.handle(value as usize),
            0x064 => s.isr &= !value,
            0x070 => {
                let mut status = value as u8;
                if status & 8 != 0 && s.reject_features {
                    status &= !8;
                }
                if status == 0 {
                    s.driver_features = 0;
                    for q in &mut s.queues {
                        *q = SimQueue { num_max: q.num_max, ..SimQueue::default() };
                    }
                }
                s.status = status;
            }
            0x080 if !v1 => s.q().unwrap().desc = low(s.q().unwrap().desc),
            0x084 if !v1 => s.q().unwrap().desc = high(s.q().unwrap().desc),
            0x090 if !v1 => s.q().unwrap().avail = low(s.q().unwrap().avail),
            0x094 if !v1 => s.q().unwrap().avail = high(s.q().unwrap().avail),
            0x0a0 if !v1 => s.q().unwrap().used = low(s.q().unwrap().used),
            0x0a4 if !v1 => s.q().unwrap().used = high(s.q().unwrap().used),
            _ => panic!("write of {value:#x} to register {offset:#x} (version {})", s.version),
        }
    }
}

/// The windows of a simulated modern PCI function, over the same state.
pub enum PciWindow {
    Common(Shared),
    Notify(Shared, u32),
    Isr(Shared),
    Device(Shared),
}

impl Mmio for PciWindow {
    fn read8(&mut self, offset: usize) -> u8 {
        match self {
            PciWindow::Common(s) => match offset {
                0x14 => s.borrow().status,
                0x15 => s.borrow().config_generation as u8,
                _ => panic!("common read8 {offset:#x}"),
            },
            PciWindow::Isr(s) => std::mem::take(&mut s.borrow_mut().isr) as u8,
            PciWindow::Device(s) => s.borrow().config[offset],
            PciWindow::Notify(..) => panic!("notify read"),
        }
    }
    fn read16(&mut self, offset: usize) -> u16 {
        match self {
            PciWindow::Common(s) => {
                let mut s = s.borrow_mut();
                match offset {
                    0x12 => s.queues.len() as u16,
                    0x16 => s.queue_sel as u16,
                    0x18 => s.q().map_or(0, |q| if q.num != 0 { q.num } else { q.num_max }) as u16,
                    0x1a => s.q().map_or(0xffff, |q| q.msix_vector),
                    0x1c => s.q().map_or(0, |q| u16::from(q.ready)),
                    // Queue i notifies at i * multiplier.
                    0x1e => s.queue_sel as u16,
                    _ => panic!("common read16 {offset:#x}"),
                }
            }
            PciWindow::Device(s) => {
                let s = s.borrow();
                u16::from_le_bytes([s.config[offset], s.config[offset + 1]])
            }
            _ => panic!("read16 {offset:#x}"),
        }
    }
    fn read32(&mut self, offset: usize) -> u32 {
        match self {
            PciWindow::Common(s) => {
                let s = s.borrow();
                match offset {
                    0x04 => (s.features >> (32 * s.dev_sel.min(1))) as u32,
                    _ => panic!("common read32 {offset:#x}"),
                }
            }
            PciWindow::Device(s) => {
                let s = s.borrow();
                u32::from_le_bytes(s.config[offset..offset + 4].try_into().unwrap())
            }
            _ => panic!("read32 {offset:#x}"),
        }
    }
    fn write8(&mut self, offset: usize, value: u8) {
        let PciWindow::Common(s) = self else { panic!("write8 {offset:#x}") };
        assert_eq!(offset, 0x14);
        // The status register behaves as on virtio-mmio.
        MmioRegs(s.clone()).write32(0x070, u32::from(value));
    }
    fn write16(&mut self, offset: usize, value: u16) {
        match self {
            PciWindow::Common(s) => {
                let mut s = s.borrow_mut();
                match offset {
                    0x16 => s.queue_sel = u32::from(value),
                    0x18 => s.q().unwrap().num = u32::from(value),
                    0x1a => {
                        let accepted = if value < s.msix_vectors { value } else { 0xffff };
                        s.q().unwrap().msix_vector = accepted;
                    }
                    0x1c => s.q().unwrap().ready = value != 0,
                    _ => panic!("common write16 {offset:#x}"),
                }
            }
            PciWindow::Notify(s, multiplier) => {
                assert_eq!(offset as u32, u32::from(value) * *multiplier, "notified at the wrong address");
                s.borrow_mut().handle(usize::from(value));
            }
            _ => panic!("write16 {offset:#x}"),
        }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        let PciWindow::Common(s) = self else { panic!("write32 {offset:#x}") };
        let regs = match offset {
            0x00 => 0x014,
            0x08 => 0x024,
            0x0c => 0x020,
            o @ 0x20..=0x37 => {
                // desc/driver/device, low and high halves, as on v2 MMIO.
                let base = [0x080, 0x090, 0x0a0][(o - 0x20) / 8];
                base + (o - 0x20) % 8
            }
            _ => panic!("common write32 {offset:#x}"),
        };
        MmioRegs(s.clone()).write32(regs, value);
    }
}

/// A virtio-mmio transport over the simulated device.
pub fn mmio(sim: &Shared) -> skiff_virtio::transport::mmio::MmioTransport<MmioRegs> {
    skiff_virtio::transport::mmio::MmioTransport::new(MmioRegs(sim.clone())).expect("the simulated device is virtio")
}

/// `VERSION_1`.
pub const V1: u64 = 1 << 32;
