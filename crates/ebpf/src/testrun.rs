//! Running a loaded TC classifier on one crafted frame with `BPF_PROG_TEST_RUN` (aya's
//! [`TestRun`]): the kernel builds an skb from the frame, runs the program once (or `repeat`
//! times) and hands back the verdict, the frame as the program left it, and the time taken.
//!
//! The program sees the skb as if it arrived on the loopback device of the calling thread's
//! network namespace, unless an [`SkbContext`] names another interface (`ifindex`, in that same
//! namespace: run inside [`crate::netns::Netns::run`]). Maps are the real ones: a test run
//! updates flow tables and counters like a real packet.
//!
//! With `repeat`, the kernel re-runs the program on the frame *as rewritten by the previous
//! run*, and reports the average time per run: design benchmark frames so that every repetition
//! takes the path being measured.

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};

use crate::loader::EbpfError;

/// `sizeof(struct __sk_buff)` (linux/bpf.h, kernel 6.x).
const SKB_SIZE: usize = 192;
// Offsets in `struct __sk_buff` of the fields the kernel lets a test run set (checked against
// linux-libc-dev's header with clang's offsetof).
const OFF_MARK: usize = 8;
const OFF_PRIORITY: usize = 32;
const OFF_INGRESS_IFINDEX: usize = 36;
const OFF_IFINDEX: usize = 40;
const OFF_CB: usize = 48;

/// The largest frame a program can leave behind: the kernel copies out at most this much.
const OUTPUT_CAPACITY: usize = 64 * 1024;

/// The parts of `struct __sk_buff` a test run may set (the kernel rejects the others) and reads
/// back afterwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbContext {
    /// `skb->mark`.
    pub mark: u32,
    /// `skb->priority`.
    pub priority: u32,
    /// `skb->ingress_ifindex`.
    pub ingress_ifindex: u32,
    /// `skb->ifindex`: the device the skb is on; 0 (or 1) means loopback. Must exist in the
    /// calling thread's network namespace.
    pub ifindex: u32,
    /// `skb->cb[0..5]`.
    pub cb: [u32; 5],
}

impl SkbContext {
    fn to_bytes(self) -> [u8; SKB_SIZE] {
        let mut bytes = [0u8; SKB_SIZE];
        let mut put = |offset: usize, value: u32| bytes[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        put(OFF_MARK, self.mark);
        put(OFF_PRIORITY, self.priority);
        put(OFF_INGRESS_IFINDEX, self.ingress_ifindex);
        put(OFF_IFINDEX, self.ifindex);
        for (i, cb) in self.cb.iter().enumerate() {
            put(OFF_CB + 4 * i, *cb);
        }
        bytes
    }

    fn from_bytes(bytes: &[u8; SKB_SIZE]) -> Self {
        let get = |offset: usize| {
            let mut word = [0u8; 4];
            word.copy_from_slice(&bytes[offset..offset + 4]);
            u32::from_ne_bytes(word)
        };
        let mut cb = [0u32; 5];
        for (i, value) in cb.iter_mut().enumerate() {
            *value = get(OFF_CB + 4 * i);
        }
        SkbContext {
            mark: get(OFF_MARK),
            priority: get(OFF_PRIORITY),
            ingress_ifindex: get(OFF_INGRESS_IFINDEX),
            ifindex: get(OFF_IFINDEX),
            cb,
        }
    }
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunResult {
    /// The program's return value (`TC_ACT_*`; for a redirect, `TC_ACT_REDIRECT`).
    pub retval: u32,
    /// The frame as the program left it (of the last run, with `repeat`).
    pub output: Vec<u8>,
    /// Nanoseconds per run: the kernel's average over all repetitions.
    pub duration_ns: u32,
    /// The skb fields after the run, when a context was passed in.
    pub ctx: Option<SkbContext>,
}

/// Runs `prog` once on `frame` (an Ethernet frame, at least 14 bytes).
///
/// # Errors
///
/// [`EbpfError::Program`]: the program is not loaded, the frame is too short or too long for
/// the kernel (more than a page), or the syscall fails.
pub fn test_run(prog: &SchedClassifier, frame: &[u8]) -> Result<TestRunResult, EbpfError> {
    test_run_with(prog, frame, None, 1)
}

/// Runs `prog` `repeat` times on `frame` (each run on the previous run's output) for a
/// benchmark; `duration_ns` of the result is the average per run.
///
/// # Errors
///
/// As [`test_run`].
pub fn test_run_repeat(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<TestRunResult, EbpfError> {
    test_run_with(prog, frame, None, repeat)
}

/// Runs `prog` on `frame` with the skb fields of `ctx` (when given) `repeat` times (0 counts
/// as 1).
///
/// # Errors
///
/// As [`test_run`]; also when `ctx.ifindex` names no interface of the calling thread's network
/// namespace.
pub fn test_run_with(
    prog: &SchedClassifier,
    frame: &[u8],
    ctx: Option<&SkbContext>,
    repeat: u32,
) -> Result<TestRunResult, EbpfError> {
    let mut output = vec![0u8; OUTPUT_CAPACITY.max(frame.len())];
    let ctx_in = ctx.map(|c| c.to_bytes());
    let mut ctx_out = [0u8; SKB_SIZE];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut output),
        ctx_in: ctx_in.as_ref().map(|c| c.as_slice()),
        ctx_out: ctx_in.is_some().then_some(&mut ctx_out[..]),
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    };
    let result = prog.test_run(opts).map_err(|source| program_error(prog, source))?;
    output.truncate((result.data_size_out as usize).min(OUTPUT_CAPACITY));
    Ok(TestRunResult {
        retval: result.return_value,
        output,
        // The kernel reports a u32; aya widened it into a Duration.
        duration_ns: u32::try_from(result.duration.as_nanos()).unwrap_or(u32::MAX),
        ctx: ctx_in.map(|_| SkbContext::from_bytes(&ctx_out)),
    })
}

fn program_error(prog: &SchedClassifier, source: ProgramError) -> EbpfError {
    let name = prog
        .info()
        .ok()
        .and_then(|info| info.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "<classifier>".to_owned());
    EbpfError::Program { op: "BPF_PROG_TEST_RUN", name, source: Box::new(source) }
}
