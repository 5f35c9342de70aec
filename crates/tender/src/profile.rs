//! `--profile FILE`: samples where the guest spends its time.
//!
//! A sampler thread wakes `--profile-hz` times a second (997 by default,
//! so it does not beat with the guest's own millisecond timers) and looks
//! at what the vCPU thread is doing ([`Sampler::set_phase`]):
//!
//! - running guest code: under KVM it asks for a sample and kicks the
//!   vCPU thread (`KVM_RUN` returns); the vCPU thread reads the registers
//!   and walks the frame-pointer chain ([`Sampler::record`]) before it
//!   resumes. In process mode it sends the guest's thread `SIGPROF`, whose
//!   handler takes `rip` and `rbp` from the interrupted context and walks
//!   the same chain;
//! - asleep in `Poll` with nothing to do: a `[halted]` sample;
//! - serving a hypercall: a `[tender] hypercall NAME` sample.
//!
//! A sample whose `rip` is in the supervisor's code is `[supervisor]`.
//! The walk reads every frame through [`GuestMemory`] after checking that
//! the 16 bytes of the frame lie in memory the service itself may read,
//! that the frame is 8-byte aligned and that each next frame is above the
//! last; at most [`DEPTH`] frames. A chain that breaks any rule just ends
//! there, whatever the guest put in `rbp`.
//!
//! Samples move from the vCPU thread (or its signal handler) to the
//! sampler thread through a single-producer ring of atomics, so the
//! handler neither allocates nor locks; a full ring drops the sample and
//! counts it (`[lost]`). At the end the stacks are named from the image's
//! symbol table and written as folded stacks (`outer;inner count`, one
//! line each), or as a flame graph (inferno) when the file ends in
//! `.svg`.

use crate::elf::Image;
use crate::guest_memory::{GuestAddr, GuestMemory};
use crate::paging::Region;
use crate::sys::ThreadKicker;
use skiff_abi::Hypercall;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Samples a second when `--profile-hz` is not given.
pub const DEFAULT_HZ: u32 = 997;
/// The highest `--profile-hz` accepted.
pub const MAX_HZ: u32 = 10_000;
/// Most frames of one sample (the instruction pointer included).
pub const DEPTH: usize = 64;
/// Samples the ring holds between two drains (a drain comes every tick).
const RING: usize = 256;

/// What `--profile` asks for.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// Where the profile goes: folded stacks, or a flame graph if it ends
    /// in `.svg`.
    pub path: PathBuf,
    /// Samples a second.
    pub hz: u32,
}

impl ProfileOptions {
    /// Whether the output is a flame graph.
    pub fn svg(&self) -> bool {
        self.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    }
}

/// The profile could not be taken or written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The output file cannot be created.
    #[error("cannot write the profile to {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing it failed at the end.
    #[error("writing the profile to {path} failed: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sampler thread could not start.
    #[error("cannot start the profiler's thread: {0}")]
    Thread(std::io::Error),
}

/// The vCPU thread's phase: running the guest.
pub const PHASE_GUEST: u32 = 0;
/// Asleep in `Poll`, waiting for frames or a deadline.
pub const PHASE_HALTED: u32 = 1;
/// In the tender, between an exit and knowing what it is.
pub const PHASE_TENDER: u32 = 2;
/// Not running the guest (before the first entry, after the end).
pub const PHASE_OFF: u32 = 3;
/// Serving hypercall `n`: `PHASE_HYPERCALL + n`.
pub const PHASE_HYPERCALL: u32 = 16;

/// A sample's kind, in the ring.
const KIND_STACK: u64 = 0;
const KIND_SUPERVISOR: u64 = 1;

/// What the vCPU thread and the sampler thread share.
pub struct Sampler {
    phase: AtomicU32,
    /// The sampler asked the vCPU thread (under KVM) for a sample.
    wanted: AtomicBool,
    head: AtomicUsize,
    tail: AtomicUsize,
    /// Each slot: `kind << 32 | frames`, then the frames.
    slots: Box<[[AtomicU64; DEPTH + 1]]>,
    lost: AtomicU64,
    /// Memory the service may read, `[start, end)` sorted: where frames
    /// may be.
    readable: Vec<(u64, u64)>,
    /// The supervisor's code.
    supervisor: Vec<(u64, u64)>,
    stop: AtomicBool,
}

impl Sampler {
    /// A sampler for a guest whose memory map is `regions`.
    pub fn new(regions: &[Region]) -> Sampler {
        let mut readable: Vec<(u64, u64)> =
            regions.iter().filter(|r| r.perm.user && !r.device).map(|r| (r.start, r.end)).collect();
        readable.sort_unstable();
        let supervisor = regions.iter().filter(|r| !r.perm.user && r.perm.exec).map(|r| (r.start, r.end)).collect();
        Sampler {
            phase: AtomicU32::new(PHASE_OFF),
            wanted: AtomicBool::new(false),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            slots: (0..RING).map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            lost: AtomicU64::new(0),
            readable,
            supervisor,
            stop: AtomicBool::new(false),
        }
    }

    /// Says what the vCPU thread does now.
    pub fn set_phase(&self, phase: u32) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// Under KVM: whether the sampler asked for the sample this
    /// interruption brings (and takes the request).
    pub fn take_request(&self) -> bool {
        self.wanted.swap(false, Ordering::Relaxed)
    }

    /// Whether `[addr, addr + len)` lies in one region the service may read.
    fn readable(&self, addr: u64, len: u64) -> bool {
        let i = self.readable.partition_point(|&(start, _)| start <= addr);
        i > 0 && addr.checked_add(len).is_some_and(|end| end <= self.readable[i - 1].1)
    }

    /// Walks the frame-pointer chain from `rip` and `rbp` into `out`:
    /// returns how many frames it holds (`rip` first, then return
    /// addresses). Every read is checked; a broken chain ends the walk.
    pub fn walk(&self, mem: &GuestMemory, rip: u64, rbp: u64, out: &mut [u64; DEPTH]) -> usize {
        out[0] = rip;
        let mut n = 1;
        let mut frame = rbp;
        while n < DEPTH {
            if !frame.is_multiple_of(8) || !self.readable(frame, 16) {
                break;
            }
            let (Ok(next), Ok(ret)) =
                (mem.read_obj::<u64>(GuestAddr(frame)), mem.read_obj::<u64>(GuestAddr(frame + 8)))
            else {
                break;
            };
            if ret == 0 {
                break;
            }
            out[n] = ret;
            n += 1;
            if next <= frame {
                break;
            }
            frame = next;
        }
        n
    }

    /// Takes a sample of a guest stopped at `rip` with frame pointer `rbp`.
    /// Called by one producer at a time: the vCPU thread, or (process
    /// mode) its `SIGPROF` handler, which neither allocates nor locks.
    pub fn record(&self, mem: &GuestMemory, rip: u64, rbp: u64) {
        let head = self.head.load(Ordering::Relaxed);
        if head.wrapping_sub(self.tail.load(Ordering::Acquire)) >= RING {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let slot = &self.slots[head % RING];
        let (kind, n) = if self.supervisor.iter().any(|&(s, e)| (s..e).contains(&rip)) {
            (KIND_SUPERVISOR, 0)
        } else {
            let mut frames = [0u64; DEPTH];
            let n = self.walk(mem, rip, rbp, &mut frames);
            for (to, &f) in slot[1..].iter().zip(&frames[..n]) {
                to.store(f, Ordering::Relaxed);
            }
            (KIND_STACK, n)
        };
        slot[0].store(kind << 32 | n as u64, Ordering::Relaxed);
        self.head.store(head.wrapping_add(1), Ordering::Release);
    }

    /// Moves the samples in the ring into `profile` (the one consumer).
    fn drain(&self, profile: &mut Profile) {
        let mut tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        while tail != head {
            let slot = &self.slots[tail % RING];
            let word = slot[0].load(Ordering::Relaxed);
            let n = (word as usize & 0xffff_ffff).min(DEPTH);
            if word >> 32 == KIND_SUPERVISOR {
                profile.supervisor += 1;
            } else {
                let frames: Vec<u64> = slot[1..=n].iter().map(|f| f.load(Ordering::Relaxed)).collect();
                *profile.stacks.entry(frames).or_insert(0) += 1;
            }
            tail = tail.wrapping_add(1);
            self.tail.store(tail, Ordering::Release);
        }
        profile.lost = self.lost.load(Ordering::Relaxed);
    }
}

/// How the sampler interrupts guest code.
#[derive(Clone, Copy)]
pub enum Target {
    /// Kick the vCPU thread out of `KVM_RUN`; it takes the sample.
    Kvm(ThreadKicker),
    /// Send the guest's thread `SIGPROF`; the handler takes the sample.
    Process(ThreadKicker),
}

/// Samples gathered, by stack. (Ordered maps: a `HashMap`'s random keys
/// would ask the kernel for randomness, which the lockdown forbids.)
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// Guest stacks (innermost first) and their counts.
    pub stacks: BTreeMap<Vec<u64>, u64>,
    /// Samples in the supervisor.
    pub supervisor: u64,
    /// Samples while the guest slept in `Poll`.
    pub halted: u64,
    /// Samples in the tender, by hypercall.
    pub tender: BTreeMap<&'static str, u64>,
    /// Samples in the tender between a VM exit and knowing its hypercall.
    pub exits: u64,
    /// Samples dropped because the ring was full.
    pub lost: u64,
}

impl Profile {
    /// Every sample taken.
    pub fn samples(&self) -> u64 {
        self.stacks.values().sum::<u64>()
            + self.supervisor
            + self.halted
            + self.tender.values().sum::<u64>()
            + self.exits
            + self.lost
    }

    /// The folded stacks, outermost frame first, one `frames count` line
    /// per distinct stack, sorted. Frames are demangled function names
    /// (`;` in a name becomes `,`), or the address where no symbol covers
    /// it.
    pub fn folded(&self, image: &Image) -> Vec<String> {
        let symbols = image.code_symbols();
        let mut names: BTreeMap<u64, String> = BTreeMap::new();
        let mut name = |addr: u64| -> String {
            names
                .entry(addr)
                .or_insert_with(|| match symbols.function_at(addr) {
                    Some(s) => s.name().replace(';', ","),
                    None => format!("{addr:#x}"),
                })
                .clone()
        };
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        for (frames, &count) in &self.stacks {
            // Return addresses point after their call: name the call.
            let chain: Vec<String> = frames
                .iter()
                .enumerate()
                .rev()
                .map(|(i, &a)| name(if i == 0 { a } else { a.saturating_sub(1) }))
                .collect();
            *lines.entry(chain.join(";")).or_insert(0) += count;
        }
        let mut special = |what: String, count: u64| {
            if count > 0 {
                *lines.entry(what).or_insert(0) += count;
            }
        };
        special("[supervisor]".into(), self.supervisor);
        special("[halted]".into(), self.halted);
        special("[lost]".into(), self.lost);
        special("[tender] exit".into(), self.exits);
        for (call, &count) in &self.tender {
            special(format!("[tender] hypercall {call}"), count);
        }
        lines.into_iter().map(|(stack, count)| format!("{stack} {count}")).collect()
    }

    /// Writes the profile to `file` (named `path`): folded stacks, or a
    /// flame graph titled `title` when `svg`.
    pub fn write(
        &self,
        image: &Image,
        file: &mut std::fs::File,
        path: &Path,
        svg: bool,
        title: &str,
    ) -> Result<(), ProfileError> {
        let err = |source| ProfileError::Write { path: path.to_owned(), source };
        let lines = self.folded(image);
        let mut out = Vec::new();
        if svg {
            let mut opts = inferno::flamegraph::Options::default();
            opts.title = title.to_string();
            opts.count_name = "samples".into();
            if lines.is_empty() {
                // inferno refuses an empty profile; say so in the picture.
                opts.title = format!("{title}: no samples");
                inferno::flamegraph::from_lines(&mut opts, ["[no samples] 1"], &mut out)
            } else {
                inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out)
            }
            .map_err(err)?;
        } else {
            for line in &lines {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        file.write_all(&out).map_err(err)?;
        file.flush().map_err(err)
    }
}

/// The line a binary prints about the profile of `report`, if one was
/// asked for: where it went and how many samples, or why it could not be
/// written.
pub fn summary(report: &crate::RunReport) -> Option<String> {
    Some(match report.profile.as_ref()? {
        Ok((samples, path)) => format!("profile of {samples} samples written to {}", path.display()),
        Err(e) => e.to_string(),
    })
}

/// The running sampler thread.
pub struct Profiler {
    sampler: Arc<Sampler>,
    thread: Option<std::thread::JoinHandle<Profile>>,
}

impl Profiler {
    /// Starts sampling `hz` times a second.
    pub fn start(sampler: Arc<Sampler>, hz: u32, target: Target) -> Result<Profiler, ProfileError> {
        let s = sampler.clone();
        let period = Duration::from_nanos(1_000_000_000 / u64::from(hz.max(1)));
        let thread = std::thread::Builder::new()
            .name("skiff-profiler".into())
            .stack_size(256 * 1024)
            .spawn(move || sample(&s, period, target))
            .map_err(ProfileError::Thread)?;
        Ok(Profiler { sampler, thread: Some(thread) })
    }

    /// Stops sampling (the vCPU thread is never interrupted again once
    /// this returns) and gives what was gathered.
    pub fn finish(mut self) -> Profile {
        self.stop()
    }

    fn stop(&mut self) -> Profile {
        self.sampler.set_phase(PHASE_OFF);
        self.sampler.stop.store(true, Ordering::SeqCst);
        let mut profile = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        self.sampler.drain(&mut profile);
        profile
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

fn sample(s: &Sampler, period: Duration, target: Target) -> Profile {
    let mut profile = Profile::default();
    let mut next = Instant::now() + period;
    while !s.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > period {
            // Far behind (the machine was busy): skip, do not burst.
            next = now;
        }
        next += period;
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        match s.phase.load(Ordering::Relaxed) {
            PHASE_GUEST => match target {
                Target::Kvm(vcpu) => {
                    s.wanted.store(true, Ordering::Relaxed);
                    vcpu.kick();
                }
                Target::Process(guest) => guest.signal(libc::SIGPROF),
            },
            PHASE_HALTED => profile.halted += 1,
            PHASE_TENDER => profile.exits += 1,
            PHASE_OFF => {}
            p => {
                let name = p
                    .checked_sub(PHASE_HYPERCALL)
                    .and_then(|n| u16::try_from(n).ok())
                    .and_then(Hypercall::from_number)
                    .map_or("unknown", Hypercall::name);
                *profile.tender.entry(name).or_insert(0) += 1;
            }
        }
        s.drain(&mut profile);
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::Perm;

    fn region(start: u64, end: u64, user: bool, exec: bool) -> Region {
        Region { start, end, perm: Perm { user, write: !exec, exec }, what: "test", device: false }
    }

    #[test]
    fn the_walk_follows_checked_frames_and_stops_at_a_bad_one() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let regions = [region(0x10_0000, 0x20_0000, true, false), region(0x1000, 0x2000, false, false)];
        let s = Sampler::new(&regions);
        // Three frames going up, then one pointing into supervisor memory.
        let chain = [
            (0x10_0100u64, 0x10_0200u64, 0x40_1111u64),
            (0x10_0200, 0x10_0300, 0x40_2222),
            (0x10_0300, 0x1000, 0x40_3333),
        ];
        for (at, next, ret) in chain {
            mem.write_obj(GuestAddr(at), &next).unwrap();
            mem.write_obj(GuestAddr(at + 8), &ret).unwrap();
        }
        let mut out = [0; DEPTH];
        let n = s.walk(&mem, 0x40_0000, 0x10_0100, &mut out);
        assert_eq!(&out[..n], &[0x40_0000, 0x40_1111, 0x40_2222, 0x40_3333]);
        // Misaligned, outside memory, past the end, a loop: each ends it.
        for rbp in [0x10_0101, 0x1000, u64::MAX - 7, 0x1f_fff8, 0] {
            assert_eq!(s.walk(&mem, 0x40_0000, rbp, &mut out), 1, "{rbp:#x}");
        }
        mem.write_obj(GuestAddr(0x10_0300), &0x10_0100u64).unwrap();
        assert_eq!(s.walk(&mem, 0x40_0000, 0x10_0100, &mut out), 4);
        // A chain that keeps going up is cut at DEPTH frames.
        for i in 0..100u64 {
            let at = 0x18_0000 + i * 16;
            mem.write_obj(GuestAddr(at), &(at + 16)).unwrap();
            mem.write_obj(GuestAddr(at + 8), &(0x50_0000 + i)).unwrap();
        }
        assert_eq!(s.walk(&mem, 0x40_0000, 0x18_0000, &mut out), DEPTH);
    }

    #[test]
    fn a_full_ring_counts_lost_samples() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let s = Sampler::new(&[region(0x10_0000, 0x20_0000, true, false), region(0x30_0000, 0x30_1000, false, true)]);
        for _ in 0..RING + 5 {
            s.record(&mem, 0x40_0000, 0);
        }
        s.record(&mem, 0x30_0010, 0);
        let mut p = Profile::default();
        s.drain(&mut p);
        assert_eq!(p.stacks.get(&vec![0x40_0000]), Some(&(RING as u64)));
        assert_eq!(p.lost, 6);
        s.record(&mem, 0x30_0010, 0);
        s.drain(&mut p);
        assert_eq!(p.supervisor, 1);
        assert_eq!(p.samples(), RING as u64 + 7);
    }
}
