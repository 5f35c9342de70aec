//! The tender's system-call allow-list, installed once the VM is set up.
//!
//! From the first guest instruction on, the tender needs very little of the
//! kernel: run the vCPU, write console output, sleep, and tear down. Any
//! other system call is trapped (`SIGSYS`): the tender writes
//! `skiff-tender: blocked system call NAME (N) in thread T` and exits with
//! [`skiff_abi::exit::BLOCKED_SYSCALL`], so a tender subverted through a
//! bug in its hypercall handling cannot open files, sockets or processes,
//! and a call the list forgot is never a silent death. The filter covers
//! every thread (`TSYNC`), including the watchdog and the network I/O
//! thread, which are started before it.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_MSRS`: `_IOWR(KVMIO, 0x88, struct kvm_msrs)`, 8-byte header.
const KVM_GET_MSRS: u64 = 0xc008_ae88;
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`, 144 bytes.
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// The filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules are inconsistent (a bug).
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    /// The `SIGSYS` handler could not be installed.
    #[error("cannot install the handler that reports blocked system calls: {0}")]
    Reporter(std::io::Error),
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(conditions)?)
}

fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(index, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)?)
}

fn no_exec(index: u8) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)?)
}

/// What the user-mode network needs from the kernel, if it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserNetCalls {
    /// A user network runs: accept, send, receive, shut down host sockets.
    pub relays: bool,
    /// It relays the guest's own traffic out: create and connect sockets.
    pub outbound: bool,
    /// `--ready-file`: the I/O thread renames the file into place when the
    /// guest listens (or removes its temporary file if it never does).
    pub ready_file: bool,
}

/// The descriptors `ioctl` may be used on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmFds {
    /// The vCPU: `KVM_RUN`, `KVM_GET_MSRS`, `KVM_GET_REGS`.
    pub vcpu: i32,
}

/// Process mode: the descriptors the tender (and so a guest that subverts
/// it) may still use. The guest's code runs in the tender's process, so
/// the filter is the guest's barrier too, and pinned to exact arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFds {
    /// `write`/`writev`: standard output and error, the console's
    /// descriptor, the eventfds, the TAP devices. Empty: any descriptor (a
    /// user network accepts sockets after lockdown).
    pub write: Vec<i32>,
    /// `read`: the eventfds and the TAP devices. Empty: any descriptor, as
    /// for `write`.
    pub read: Vec<i32>,
    /// `pread64`: the `/proc/self/status` descriptor, if open.
    pub status: Option<i32>,
    /// This process's id: signals only go to its own threads.
    pub pid: i32,
}

/// What the tender runs the guest with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sandboxed {
    /// A KVM vCPU.
    Kvm(KvmFds),
    /// The tender's own process.
    Process(ProcessFds),
}

fn one_of(index: u8, fds: &[i32]) -> Result<Vec<SeccompRule>, SeccompError> {
    fds.iter().map(|&fd| rule(vec![arg_eq(index, fd as u64)?])).collect()
}

/// Builds the allow-list. One line per system call, saying why.
pub fn filter(user: UserNetCalls, kvm: KvmFds) -> Result<BpfProgram, SeccompError> {
    filter_for(user, &Sandboxed::Kvm(kvm))
}

/// Builds the allow-list for a guest run as `how`.
pub fn filter_for(user: UserNetCalls, how: &Sandboxed) -> Result<BpfProgram, SeccompError> {
    filter_with_disks(user, how, &[])
}

/// Builds the allow-list for a guest run as `how` with the disks whose
/// descriptors are `disks`: `pread64`, `pwrite64`, `fdatasync` and
/// `fallocate` on those descriptors only.
pub fn filter_with_disks(user: UserNetCalls, how: &Sandboxed, disks: &[i32]) -> Result<BpfProgram, SeccompError> {
    Ok(index_system_calls(chain(user, how, disks)?))
}

/// The allow-list as seccompiler builds it: one test after the other.
fn chain(user: UserNetCalls, how: &Sandboxed, disks: &[i32]) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut allow = |nr: libc::c_long, with: Vec<SeccompRule>| {
        rules.insert(nr, with);
    };
    // Run the vCPU; read the guest TSC for --stats at the end; (user
    // network) make accepted sockets non-blocking.
    let mut ioctls = match how {
        Sandboxed::Kvm(kvm) => {
            let vcpu = kvm.vcpu as u64;
            vec![
                rule(vec![arg_eq(0, vcpu)?, arg_eq(1, KVM_RUN)?])?,
                rule(vec![arg_eq(0, vcpu)?, arg_eq(1, KVM_GET_MSRS)?])?,
                // --profile: the registers of the interrupted guest.
                rule(vec![arg_eq(0, vcpu)?, arg_eq(1, KVM_GET_REGS)?])?,
            ]
        }
        Sandboxed::Process(_) => vec![],
    };
    if user.relays {
        ioctls.push(rule(vec![arg_eq(1, libc::FIONBIO)?])?);
    }
    if !ioctls.is_empty() {
        allow(libc::SYS_ioctl, ioctls);
    }
    let (writes, reads, mut status) = match how {
        Sandboxed::Kvm(_) => (vec![], vec![], vec![]),
        Sandboxed::Process(p) => (one_of(0, &p.write)?, one_of(0, &p.read)?, one_of(0, &Vec::from_iter(p.status))?),
    };
    // Process mode pins pread64 to the status descriptor: the disks join it.
    if matches!(how, Sandboxed::Process(_)) {
        status.extend(one_of(0, disks)?);
    }
    // Console output, the tender's own messages, frames to TAP devices,
    // eventfd notifications.
    allow(libc::SYS_write, writes.clone());
    allow(libc::SYS_writev, writes);
    // Frames from TAP devices; eventfd notifications.
    allow(libc::SYS_read, reads);
    // Waiting for frames, notifications or the guest's deadline.
    allow(libc::SYS_ppoll, vec![]);
    // Peak RSS from the /proc/self/status descriptor opened before lockdown.
    if !matches!(how, Sandboxed::Process(p) if p.status.is_none() && disks.is_empty()) {
        allow(libc::SYS_pread64, status);
    }
    if !disks.is_empty() {
        // Disks: write sectors, make them durable, punch holes (discard);
        // on the disks' descriptors only.
        allow(libc::SYS_pwrite64, one_of(0, disks)?);
        allow(libc::SYS_fdatasync, one_of(0, disks)?);
        allow(libc::SYS_fallocate, one_of(0, disks)?);
    }
    // `poll` with no device ready: sleep until the guest's deadline.
    allow(libc::SYS_nanosleep, vec![]);
    allow(libc::SYS_clock_nanosleep, vec![]);
    // Clocks, when the vDSO cannot answer.
    allow(libc::SYS_clock_gettime, vec![]);
    allow(libc::SYS_gettimeofday, vec![]);
    // Locks and condition variables (stdout, the watchdog).
    allow(libc::SYS_futex, vec![]);
    // The watchdog waits for SIGTERM/SIGINT (blocked in every thread).
    allow(libc::SYS_rt_sigtimedwait, vec![]);
    // The report of a blocked call names its thread; a thread's start-up
    // names it.
    allow(
        libc::SYS_prctl,
        vec![rule(vec![arg_eq(0, libc::PR_GET_NAME as u64)?])?, rule(vec![arg_eq(0, libc::PR_SET_NAME as u64)?])?],
    );
    // The rest of what a thread's start-up calls that the list has for
    // other reasons anyway (`rseq`, `rt_sigprocmask`, `gettid`,
    // `sigaltstack`, `mmap` and `mprotect` of its signal stack): the
    // monitor thread is not waited for (`monitor::Monitor::start`), so it
    // may start after the lockdown.
    allow(libc::SYS_set_robust_list, vec![]);
    allow(libc::SYS_sched_getaffinity, vec![]);
    allow(libc::SYS_sched_yield, vec![]);
    // The watchdog interrupts KVM_RUN with a signal, which then returns
    // (in process mode: only this process's threads).
    let tgkill = match how {
        Sandboxed::Kvm(_) => vec![],
        Sandboxed::Process(p) => vec![rule(vec![arg_eq(0, p.pid as u64)?])?],
    };
    allow(libc::SYS_tgkill, tgkill);
    allow(libc::SYS_getpid, vec![]);
    allow(libc::SYS_gettid, vec![]);
    allow(libc::SYS_rt_sigreturn, vec![]);
    allow(libc::SYS_rt_sigprocmask, vec![]);
    // Heap growth for console buffers; never executable memory.
    allow(libc::SYS_brk, vec![]);
    allow(libc::SYS_mmap, vec![rule(vec![no_exec(2)?])?]);
    allow(libc::SYS_mprotect, vec![rule(vec![no_exec(2)?])?]);
    allow(libc::SYS_mremap, vec![]);
    allow(libc::SYS_munmap, vec![]);
    allow(libc::SYS_madvise, vec![]);
    // How much guest memory was touched, for --stats.
    allow(libc::SYS_mincore, vec![]);
    // Tear-down: close the VM's descriptors; the watchdog thread ends.
    allow(libc::SYS_close, vec![]);
    // Debug builds of std check a descriptor is open before closing it;
    // (user network) sockets are made non-blocking.
    let mut fcntls = vec![rule(vec![arg_eq(1, libc::F_GETFD as u64)?])?];
    if user.relays {
        fcntls.push(rule(vec![arg_eq(1, libc::F_GETFL as u64)?])?);
        fcntls.push(rule(vec![arg_eq(1, libc::F_SETFL as u64)?])?);
    }
    allow(libc::SYS_fcntl, fcntls);
    if user.relays {
        // Published ports: accept connections; move bytes and datagrams;
        // half-close, reset (SO_LINGER), no delay; connect results.
        allow(libc::SYS_accept4, vec![]);
        allow(libc::SYS_recvfrom, vec![]);
        allow(libc::SYS_sendto, vec![]);
        allow(libc::SYS_recvmsg, vec![]);
        allow(libc::SYS_sendmsg, vec![]);
        allow(libc::SYS_shutdown, vec![]);
        allow(libc::SYS_setsockopt, vec![]);
        allow(libc::SYS_getsockopt, vec![]);
        allow(libc::SYS_getpeername, vec![]);
        allow(libc::SYS_getsockname, vec![]);
    }
    if user.outbound {
        // Relaying the guest's connections and datagrams out: IPv4 and IPv6
        // sockets only, bound and connected to their destinations.
        allow(
            libc::SYS_socket,
            vec![rule(vec![arg_eq(0, libc::AF_INET as u64)?])?, rule(vec![arg_eq(0, libc::AF_INET6 as u64)?])?],
        );
        allow(libc::SYS_connect, vec![]);
        allow(libc::SYS_bind, vec![]);
    }
    if user.ready_file {
        // The ready file: its temporary file, created before lockdown, is
        // renamed into place, or removed if the guest never listens.
        allow(libc::SYS_rename, vec![]);
        allow(libc::SYS_renameat, vec![]);
        allow(libc::SYS_renameat2, vec![]);
        allow(libc::SYS_unlink, vec![]);
        allow(libc::SYS_unlinkat, vec![]);
    }
    allow(libc::SYS_sigaltstack, vec![]);
    allow(libc::SYS_rseq, vec![]);
    allow(libc::SYS_exit, vec![]);
    allow(libc::SYS_exit_group, vec![]);
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, seccompiler::TargetArch::x86_64)?;
    let mut program: BpfProgram = filter.try_into()?;
    trap_other_architectures(&mut program);
    Ok(program)
}

/// BPF instruction classes and operations used below.
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_LD_W_ABS: u16 = 0x20;

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

/// Puts a binary search over the system-call numbers in front of
/// seccompiler's program, which tests them one after the other.
///
/// The kernel, when it installs a filter, runs it for every system-call
/// number to find those it always allows (its action cache); through a
/// chain of some 60 tests that is most of the time the installation takes
/// (about 0.1 ms here, on the way to the guest's first instruction), and
/// every call the cache cannot answer walks the chain too. The search
/// jumps straight to the number's own block of the chain (which then tests
/// it and its arguments as before) or, for a number the chain does not
/// have, to the default action: the same answer for every call, in a
/// dozen steps. A program whose layout is not the one expected (a
/// different seccompiler) is returned unchanged.
fn index_system_calls(program: BpfProgram) -> BpfProgram {
    // seccompiler's layout: load the architecture, test it, its return,
    // load the number; then one block per number: `jeq NR, 0, 1`,
    // `ja <its rules>`, `ja <next block>` (through one more `ja` after
    // each further rule), the rules; the default action last.
    const HEAD: usize = 4;
    let last = program.len().saturating_sub(1);
    let layout_known =
        program.len() > HEAD && program[3].code == BPF_LD_W_ABS && program[3].k == 0 && program[last].code == 0x06;
    if !layout_known {
        return program;
    }
    let mut blocks: Vec<(u32, usize)> = Vec::new();
    let mut at = HEAD;
    while at < last {
        let block = program.get(at..at + 3);
        let Some([test, to_rules, to_next]) = block else { return program };
        let is_block = test.code == BPF_JMP_JEQ_K
            && (test.jt, test.jf) == (0, 1)
            && to_rules.code == BPF_JMP_JA
            && to_next.code == BPF_JMP_JA;
        if !is_block || blocks.last().is_some_and(|&(nr, _)| nr >= test.k) {
            return program;
        }
        blocks.push((test.k, at));
        // A number with several rules: the jump to the next block goes
        // through a jump after each rule.
        at = at + 3 + to_next.k as usize;
        while let Some(hop) = program.get(at).filter(|i| i.code == BPF_JMP_JA) {
            at += 1 + hop.k as usize;
        }
    }
    if at != last || blocks.is_empty() {
        return program;
    }
    let mut tree = Vec::new();
    search(&blocks, last, &mut tree);
    // A jump into the chain was written with the chain's own index as `k`
    // and `jt` = 1 as its mark; the chain now starts after the search.
    let size = tree.len();
    for (i, ins) in tree.iter_mut().enumerate() {
        if ins.code == BPF_JMP_JA && ins.jt == 1 {
            ins.k = (ins.k as usize + size - (HEAD + i) - 1) as u32;
            ins.jt = 0;
        }
    }
    let mut out = Vec::with_capacity(program.len() + size);
    out.extend_from_slice(&program[..HEAD]);
    out.extend(tree);
    out.extend_from_slice(&program[HEAD..]);
    out
}

/// Emits the search over `blocks` (number, chain index of its block), in
/// ascending order; `default` is the chain index of the default action.
fn search(blocks: &[(u32, usize)], default: usize, out: &mut Vec<seccompiler::sock_filter>) {
    let into_chain = |index: usize| jump(BPF_JMP_JA, index as u32, 1, 0);
    if let [(nr, block)] = blocks {
        out.push(jump(BPF_JMP_JEQ_K, *nr, 0, 1));
        out.push(into_chain(*block));
        out.push(into_chain(default));
        return;
    }
    let (low, high) = blocks.split_at(blocks.len() / 2);
    // nr >= the first of the upper half: on to it; else the lower half.
    out.push(jump(BPF_JMP_JGE_K, high[0].0, 0, 1));
    let to_high = out.len();
    out.push(jump(BPF_JMP_JA, 0, 0, 0));
    search(low, default, out);
    out[to_high].k = (out.len() - to_high - 1) as u32;
    search(high, default, out);
}

/// seccompiler kills the process outright for a call of another
/// architecture (a 32-bit `int 0x80` on x86_64); trap it instead, so it
/// is reported like every other blocked call.
fn trap_other_architectures(program: &mut BpfProgram) {
    const BPF_RET_K: u16 = 0x06;
    if let Some(ins) = program.iter_mut().take(3).find(|i| i.code == BPF_RET_K && i.k == libc::SECCOMP_RET_KILL_PROCESS)
    {
        ins.k = libc::SECCOMP_RET_TRAP;
    }
}

/// Installs the allow-list on every thread of the process, with the
/// handler that reports a blocked call.
pub fn lock_down(user: UserNetCalls, kvm: KvmFds) -> Result<(), SeccompError> {
    lock_down_as(user, &Sandboxed::Kvm(kvm))
}

/// [`lock_down`] for a guest run as `how`.
pub fn lock_down_as(user: UserNetCalls, how: &Sandboxed) -> Result<(), SeccompError> {
    lock_down_with_disks(user, how, &[])
}

/// [`lock_down_as`] with disks attached (see [`filter_with_disks`]).
pub fn lock_down_with_disks(user: UserNetCalls, how: &Sandboxed, disks: &[i32]) -> Result<(), SeccompError> {
    install(&filter_with_disks(user, how, disks)?)
}

/// Installs a program [`filter_for`] built (process mode builds it before
/// the last steps of its set-up, to install it at the last moment).
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    crate::sys::install_blocked_call_reporter().map_err(SeccompError::Reporter)?;
    seccompiler::apply_filter_all_threads(program)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program as the kernel would for one call:
    /// `(action, instructions executed)`.
    fn run(program: &BpfProgram, data: &[u32; 16]) -> (u32, usize) {
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let ins = &program[pc];
            steps += 1;
            pc += 1;
            match ins.code {
                0x20 => a = data[ins.k as usize / 4],
                0x54 => a &= ins.k,
                0x05 => pc += ins.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match ins.code {
                        0x15 => a == ins.k,
                        0x25 => a > ins.k,
                        0x35 => a >= ins.k,
                        _ => a & ins.k != 0,
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                0x06 => return (ins.k, steps),
                other => panic!("instruction {other:#x} at {} not handled by the test", pc - 1),
            }
        }
    }

    /// `seccomp_data` as words: nr, arch, ip (2), args (2 words each).
    fn call(nr: u32, arch: u32, args: [u64; 6]) -> [u32; 16] {
        let mut d = [0u32; 16];
        d[0] = nr;
        d[1] = arch;
        for (i, a) in args.iter().enumerate() {
            d[4 + 2 * i] = *a as u32;
            d[5 + 2 * i] = (*a >> 32) as u32;
        }
        d
    }

    #[test]
    fn the_indexed_filter_answers_every_call_as_the_chain_does_in_a_few_steps() {
        let process =
            Sandboxed::Process(ProcessFds { write: vec![1, 2, 5, 7], read: vec![5, 7], status: Some(9), pid: 1234 });
        let all = UserNetCalls { relays: true, outbound: true, ready_file: true };
        let hows = [
            (UserNetCalls::default(), Sandboxed::Kvm(KvmFds { vcpu: 3 })),
            (all, Sandboxed::Kvm(KvmFds { vcpu: 3 })),
            (UserNetCalls::default(), Sandboxed::Process(ProcessFds::default())),
            (UserNetCalls::default(), process.clone()),
            (all, process),
        ];
        let args = [
            [0; 6],
            [1, 0, 0, 0, 0, 0],
            [7, KVM_RUN, 0, 0, 0, 0],
            [3, KVM_RUN, 0, 0, 0, 0],
            [3, KVM_GET_MSRS, 0, 0, 0, 0],
            [9, 0, libc::PROT_READ as u64, 0, 0, 0],
            [0, 4096, (libc::PROT_READ | libc::PROT_EXEC) as u64, 0, 0, 0],
            [libc::PR_SET_NAME as u64, 0, 0, 0, 0, 0],
            [libc::PR_SET_SECCOMP as u64, 0, 0, 0, 0, 0],
            [libc::AF_INET as u64, 0, 0, 0, 0, 0],
            [libc::AF_UNIX as u64, 0, 0, 0, 0, 0],
            [1234, 1, 0, 0, 0, 0],
            [5 | 1 << 32, u64::MAX, 0, 0, 0, 0],
        ];
        for (user, how) in &hows {
            let chained = chain(*user, how, &[]).unwrap();
            let indexed = filter_for(*user, how).unwrap();
            assert!(indexed.len() > chained.len(), "the layout was not recognised");
            let mut worst = 0;
            // A number on no list walks the whole chain.
            let (_, unlisted) = run(&chained, &call(599, 0xc000_003e, [0; 6]));
            assert!(unlisted > 60, "{unlisted}");
            for arch in [0xc000_003e, 0x4000_0003] {
                for nr in 0..600 {
                    for a in &args {
                        let data = call(nr, arch, *a);
                        let (want, chain_steps) = run(&chained, &data);
                        let (got, steps) = run(&indexed, &data);
                        assert_eq!(got, want, "call {nr} arch {arch:#x} args {a:?} ({how:?})");
                        if chain_steps == unlisted {
                            worst = worst.max(steps);
                        }
                    }
                }
            }
            // A number not on the list: found missing in a dozen steps,
            // not after every test of the chain.
            assert!((1..=20).contains(&worst), "{worst} steps ({how:?})");
        }
    }

    #[test]
    fn calls_of_another_architecture_are_trapped_not_killed() {
        let program = filter(UserNetCalls::default(), KvmFds { vcpu: 3 }).unwrap();
        assert!(program.iter().take(3).any(|i| i.k == libc::SECCOMP_RET_TRAP));
        assert!(!program.iter().any(|i| i.k == libc::SECCOMP_RET_KILL_PROCESS));
    }
}
