//! The io_uring driver: one small module between the shard and the kernel. It builds a ring on
//! the calling thread (single issuer, deferred task work), registers a sparse fixed-file table
//! (connections are direct descriptors, never in the process fd table) and a provided-buffer
//! ring (an idle connection owns no read buffer), and offers one method per operation the shard
//! uses. Every submission carries a `Token`; completions are copied out in batches so handlers
//! can submit while they run.
//!
//! A ring runs on the kernel or, for tests and fuzzing, on a simulated kernel (`sim`) that
//! reads the same submission entries and lets a driver post the completions: the shard above
//! cannot tell them apart. The choice is one predictable branch per submission.

pub mod bufring;
#[doc(hidden)]
pub mod sim;
pub mod token;

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

pub use bufring::BufRing;
use sim::SimKernel;
pub use token::{next_generation, Op, Token};

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The kernel will post more completions for this multishot operation.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer this completion filled, if any.
    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// Sizes of one ring.
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    /// Submission queue entries; the completion queue gets four times as many.
    pub entries: u32,
    /// Fixed-file slots, i.e. connections this ring can hold.
    pub files: u32,
    /// Provided receive buffers (a power of two) and their size in bytes.
    pub recv_buffer_count: u16,
    pub recv_buffer_size: u32,
}

pub struct Ring {
    // Field order matters: the io_uring is dropped (and its requests torn down) before the
    // buffer memory the kernel may still write into.
    backend: Backend,
    bufs: BufRing,
    files: u32,
    /// Entries the kernel could not take yet, oldest first (see `push`). Empty, and without
    /// an allocation, unless the submission queue stayed full.
    backlog: VecDeque<squeue::Entry>,
    backlog_logged: bool,
    /// Where `peer_addr` has the kernel write an address (a `sockaddr_in6` has room for
    /// either family). Boxed: it must not move while the kernel may write to it.
    peer_buf: Box<libc::sockaddr_in6>,
}

/// What executes the submissions: the kernel, or the simulated one (`sim`).
// The kernel's variant is the one that runs: kept inline, not behind a pointer per submission.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Kernel(IoUring),
    Sim(Box<SimKernel>),
}

/// The most slots one ring's fixed-file table may have (the kernel's IORING_MAX_FIXED_FILES),
/// whatever the open-file limit.
pub const FIXED_FILES_MAX: u64 = 1 << 20;

/// The open-file soft limit, which caps each ring's fixed-file table.
pub fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

fn empty_sockaddr() -> libc::sockaddr_in6 {
    // SAFETY: a sockaddr_in6 is plain integers; all zeroes is a valid (AF_UNSPEC) value.
    unsafe { std::mem::zeroed() }
}

/// What the kernel wrote into a `sockaddr_in6`-sized buffer: an IPv4 or IPv6 address, or
/// nothing (the family left at 0).
fn socket_addr(raw: &libc::sockaddr_in6) -> Option<SocketAddr> {
    match i32::from(raw.sin6_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (smaller, same alignment) at the start.
            let v4 = unsafe { &*(raw as *const libc::sockaddr_in6).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            let ip = Ipv6Addr::from(raw.sin6_addr.s6_addr);
            let port = u16::from_be(raw.sin6_port);
            // An IPv4 client of a dual-stack listener: shown as the IPv4 address it is.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, raw.sin6_scope_id)),
            })
        }
        _ => None,
    }
}

/// Queues `entry` unless the submission queue is full.
fn try_push(uring: &mut IoUring, entry: &squeue::Entry) -> bool {
    // SAFETY: every buffer an entry points to is owned by the shard and kept alive until the
    // entry's completion (see the callers of `Ring::push`).
    unsafe { uring.submission().push(entry) }.is_ok()
}

fn explain_setup_error(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) => io::Error::new(
            e.kind(),
            format!("io_uring is disabled: run sysctl -w kernel.io_uring_disabled=0 ({e})"),
        ),
        Some(libc::ENOMEM) => io::Error::new(
            e.kind(),
            format!("io_uring setup failed for lack of locked memory: raise RLIMIT_MEMLOCK ({e})"),
        ),
        _ => io::Error::new(e.kind(), format!("io_uring setup failed: {e}")),
    }
}

impl Ring {
    /// Builds the ring on the calling thread, which becomes its only submitter: the ring the
    /// thread blocks on (its completion work is deferred until it waits: DEFER_TASKRUN).
    pub fn new(sizes: RingSizes) -> io::Result<Ring> {
        Ring::build(sizes, true)
    }

    /// A ring the thread polls while it blocks on another (`new`'s), which must wake it:
    /// through an eventfd registered here, signalled when a completion is posted. Built
    /// without DEFER_TASKRUN, whose deferred work posts nothing (and signals nothing) until
    /// this ring is entered: on kernel 6.18, under a connection storm, the eventfd stayed
    /// quiet and clients on such a ring waited for the other ring's next event (connects p50
    /// 5-13 ms instead of 0.2 ms, open-loop messages p50 2 ms instead of 0.1 ms;
    /// results/2026-12-04-vm-second-ring).
    pub fn secondary(sizes: RingSizes) -> io::Result<Ring> {
        Ring::build(sizes, false)
    }

    fn build(sizes: RingSizes, defer_taskrun: bool) -> io::Result<Ring> {
        let cq_entries = sizes.entries.saturating_mul(4);
        let mut builder = IoUring::builder();
        builder.setup_single_issuer();
        if defer_taskrun {
            builder.setup_defer_taskrun();
        }
        let uring = builder
            .setup_coop_taskrun()
            // Lets `poll` see that deferred work is pending without entering the kernel.
            .setup_taskrun_flag()
            .setup_cqsize(cq_entries)
            .build(sizes.entries)
            .or_else(|e| {
                // Kernels before 6.1 refuse DEFER_TASKRUN with EINVAL; run without it there.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    IoUring::builder()
                        .setup_cqsize(cq_entries)
                        .build(sizes.entries)
                } else {
                    Err(e)
                }
            })
            .map_err(explain_setup_error)?;
        uring
            .submitter()
            .register_files_sparse(sizes.files)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("registering {} fixed-file slots failed: {e}", sizes.files),
                )
            })?;
        let bufs = BufRing::new(
            &uring.submitter(),
            0,
            sizes.recv_buffer_count,
            sizes.recv_buffer_size,
        )
        .map_err(|e| {
            io::Error::new(e.kind(), format!("registering the buffer ring failed: {e}"))
        })?;
        Ok(Ring {
            backend: Backend::Kernel(uring),
            bufs,
            files: sizes.files,
            backlog: VecDeque::new(),
            backlog_logged: false,
            peer_buf: Box::new(empty_sockaddr()),
        })
    }

    /// A ring on the simulated kernel (`sim`): no io_uring, no syscall. `fd` is the number
    /// other rings' MSG_RING entries name it by (the simulation routes them; it is no real
    /// descriptor).
    #[doc(hidden)]
    pub fn simulated(sizes: RingSizes, fd: RawFd) -> io::Result<Ring> {
        let bufs = BufRing::unregistered(0, sizes.recv_buffer_count, sizes.recv_buffer_size)?;
        Ok(Ring {
            backend: Backend::Sim(Box::new(SimKernel::new(fd, sizes.files))),
            bufs,
            files: sizes.files,
            backlog: VecDeque::new(),
            backlog_logged: false,
            peer_buf: Box::new(empty_sockaddr()),
        })
    }

    /// The simulated kernel behind this ring, and the provided buffers it fills; `None` on
    /// the real kernel.
    #[doc(hidden)]
    pub fn sim(&mut self) -> Option<(&mut SimKernel, &mut BufRing)> {
        match &mut self.backend {
            Backend::Sim(sim) => Some((sim, &mut self.bufs)),
            Backend::Kernel(_) => None,
        }
    }

    /// Fixed-file slots in this ring's table.
    pub fn files(&self) -> u32 {
        self.files
    }

    /// Queues one submission; when the queue is full, submits what is there first. An entry
    /// the kernel does not take even then (it is short of memory, or refuses this thread)
    /// waits in `backlog` for the next `submit_and_wait` or `poll`, and so does every entry
    /// after it: an operation is never dropped (the shard would wait for its completion
    /// forever) and never overtaken by a later one (a close must not pass its shutdown).
    fn push(&mut self, entry: squeue::Entry) {
        let uring = match &mut self.backend {
            Backend::Kernel(uring) => uring,
            Backend::Sim(sim) => return sim.submit(&entry),
        };
        if self.backlog.is_empty() {
            if try_push(uring, &entry) {
                return;
            }
            // EBUSY / EINTR only delay the kernel taking the entries; completions beyond the
            // CQ size wait in its overflow list (IORING_FEAT_NODROP).
            let _ = uring.submit();
            if try_push(uring, &entry) {
                return;
            }
            if !self.backlog_logged {
                self.backlog_logged = true;
                log::warn!(
                    "io_uring submission queue full and the kernel took none; entries \
                     wait in a local backlog until it does (logged once per ring)"
                );
            }
        }
        self.backlog.push_back(entry);
    }

    /// Moves the backlog, in order, into the submission queue, submitting whenever it fills;
    /// stops where the kernel takes nothing. True when the backlog is empty.
    fn flush_backlog(&mut self) -> bool {
        let Backend::Kernel(uring) = &mut self.backend else {
            return true;
        };
        while let Some(entry) = self.backlog.front() {
            if try_push(uring, entry) {
                self.backlog.pop_front();
            } else if !matches!(uring.submit(), Ok(taken) if taken > 0) {
                return false;
            }
        }
        true
    }

    /// Submits everything queued and waits for at least `want` completions; without waiting
    /// while some entries are still in the backlog, so the next turn retries them.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        let want = if self.flush_backlog() { want } else { 0 };
        let Backend::Kernel(uring) = &mut self.backend else {
            // The simulation's driver runs the kernel's side between turns: nothing to wait for.
            return Ok(());
        };
        match uring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Without waiting: submits what is queued and runs deferred completion work, but only
    /// when there is something to submit or the kernel flagged pending work, so an idle
    /// secondary ring costs no syscall per turn.
    pub fn poll(&mut self) -> io::Result<()> {
        let Backend::Kernel(uring) = &mut self.backend else {
            return Ok(());
        };
        let sq = uring.submission();
        let needed = !sq.is_empty() || sq.taskrun() || sq.cq_overflow() || !self.backlog.is_empty();
        drop(sq);
        if needed {
            return self.submit_and_wait(0);
        }
        Ok(())
    }

    /// Completions are waiting to be reaped.
    pub fn has_completions(&mut self) -> bool {
        match &mut self.backend {
            Backend::Kernel(uring) => !uring.completion().is_empty(),
            Backend::Sim(sim) => sim.has_completions(),
        }
    }

    /// The kernel signals `eventfd` whenever it posts a completion to this ring, so a thread
    /// waiting on another ring learns that this one needs a `poll` (a `secondary` ring: with
    /// DEFER_TASKRUN nothing is posted, nor signalled, until the ring itself is entered).
    pub fn register_eventfd(&self, eventfd: RawFd) -> io::Result<()> {
        match &self.backend {
            Backend::Kernel(uring) => uring.submitter().register_eventfd(eventfd),
            // The simulation runs a turn whenever a ring has completions.
            Backend::Sim(_) => Ok(()),
        }
    }

    /// Copies up to `max` completions into `out` (cleared first).
    pub fn reap(&mut self, out: &mut Vec<Completion>, max: usize) {
        out.clear();
        let uring = match &mut self.backend {
            Backend::Kernel(uring) => uring,
            Backend::Sim(sim) => return sim.reap(out, max),
        };
        for cqe in uring.completion().take(max) {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    pub fn accept_multi(&mut self, listener: RawFd, token: Token) {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .allocate_file_index(true)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    pub fn recv_multi(&mut self, slot: u32, token: Token) {
        let entry = opcode::RecvMulti::new(types::Fixed(slot), self.bufs.group())
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// # Safety
    /// `buf..buf+len` must stay valid and unmoved until this send's completion arrives.
    pub unsafe fn send(&mut self, slot: u32, buf: *const u8, len: u32, token: Token) {
        let entry = opcode::Send::new(types::Fixed(slot), buf, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// Ends both directions: a multishot recv completes for the last time, a stuck send fails.
    pub fn shutdown(&mut self, slot: u32, token: Token) {
        let entry = opcode::Shutdown::new(types::Fixed(slot), libc::SHUT_RDWR)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// Ends the write side only (a FIN after what was sent); reads go on until the peer closes.
    pub fn shutdown_write(&mut self, slot: u32, token: Token) {
        let entry = opcode::Shutdown::new(types::Fixed(slot), libc::SHUT_WR)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// The client address of the socket in fixed-file `slot`, for a log line. A direct
    /// descriptor has no fd for getpeername(2), so this is getsockopt(SO_PEERNAME) as an
    /// io_uring socket command (kernel 6.7), submitted at once: the kernel runs it inline,
    /// so the address is in the buffer when the submit returns, and its completion
    /// (`Op::PeerName`) is ignored. One syscall per call: for rate-limited lines, never per
    /// message, and the connection keeps no address. `ipv6_first`: the socket's listener is
    /// IPv6 (the kernel refuses a buffer longer than the address, so the length is guessed
    /// from it, then the other one tried). `None` on the simulated kernel, while entries wait
    /// in the backlog (a submit now would overtake them), or when the kernel had no address.
    pub fn peer_addr(&mut self, slot: u32, ipv6_first: bool) -> Option<SocketAddr> {
        const V4_LEN: u32 = std::mem::size_of::<libc::sockaddr_in>() as u32;
        const V6_LEN: u32 = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        let lengths = if ipv6_first {
            [V6_LEN, V4_LEN]
        } else {
            [V4_LEN, V6_LEN]
        };
        for len in lengths {
            let Backend::Kernel(uring) = &mut self.backend else {
                return None;
            };
            if !self.backlog.is_empty() {
                return None;
            }
            *self.peer_buf = empty_sockaddr();
            let buf: *mut libc::sockaddr_in6 = &mut *self.peer_buf;
            let entry = opcode::GetSockOpt::new(
                types::Fixed(slot),
                libc::SOL_SOCKET as u32,
                libc::SO_PEERNAME as u32,
                buf.cast(),
                len,
            )
            .build()
            .user_data(Token::shard(Op::PeerName).pack());
            // A full queue is submitted first, as `push` does.
            if !try_push(uring, &entry) && (uring.submit().is_err() || !try_push(uring, &entry)) {
                return None;
            }
            if uring.submit().is_err() {
                return None;
            }
            // SAFETY: the command ran inline during the submit, and the kernel writes the
            // buffer no more; a volatile read all the same, as memory the kernel was handed.
            let raw = unsafe { std::ptr::read_volatile(buf) };
            // A buffer shorter than the address is filled with its start: not the address.
            let whole = len == V6_LEN || i32::from(raw.sin6_family) == libc::AF_INET;
            if let Some(addr) = socket_addr(&raw).filter(|_| whole) {
                return Some(addr);
            }
        }
        None
    }

    /// Cancels the operation submitted with `target`.
    pub fn cancel(&mut self, target: Token, token: Token) {
        let entry = opcode::AsyncCancel::new(target.pack())
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// Frees a fixed-file slot. Call only once no operation on it is in flight: closing the
    /// slot does not end a multishot recv.
    pub fn close(&mut self, slot: u32, token: Token) {
        let entry = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// # Safety
    /// `timespec` must stay valid until the timeout completes.
    pub unsafe fn timeout(&mut self, timespec: *const types::Timespec, token: Token) {
        let entry = opcode::Timeout::new(timespec)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// Writes `len` bytes at `buf` to the regular file `fd` at `offset`.
    ///
    /// # Safety
    /// `buf..buf + len` must stay valid until the write completes.
    pub unsafe fn write_file(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
        token: Token,
    ) {
        let entry = opcode::Write::new(types::Fd(fd), buf, len)
            .offset(offset)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// Reads `len` bytes of the regular file `fd` at `offset` into `buf`.
    ///
    /// # Safety
    /// `buf` must stay valid and untouched until the completion is reaped.
    pub unsafe fn read_file(
        &mut self,
        fd: RawFd,
        buf: *mut u8,
        len: u32,
        offset: u64,
        token: Token,
    ) {
        let entry = opcode::Read::new(types::Fd(fd), buf, len)
            .offset(offset)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// fdatasync of the regular file `fd`: its data written so far is on disk when it completes.
    pub fn datasync_file(&mut self, fd: RawFd, token: Token) {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// This ring's own descriptor: what another shard's `send_fixed_file` targets.
    pub fn raw_fd(&self) -> RawFd {
        match &self.backend {
            Backend::Kernel(uring) => uring.as_raw_fd(),
            Backend::Sim(sim) => sim.fd(),
        }
    }

    /// Moves fixed-file `slot` into a free slot of the ring `target_ring_fd` (IORING_OP_MSG_RING
    /// with IORING_MSG_SEND_FD and IORING_FILE_INDEX_ALLOC). The target ring gets a completion
    /// with `target_user_data` whose result is the slot the kernel allocated there (or no
    /// completion at all when it failed); this ring gets `token`'s completion, negative on
    /// failure (-ENFILE: the target's table is full). Our slot still holds the socket either
    /// way: close it once this completes.
    pub fn send_fixed_file(
        &mut self,
        slot: u32,
        target_ring_fd: RawFd,
        target_user_data: u64,
        token: Token,
    ) {
        let entry = opcode::MsgRingSendFd::new(
            types::Fd(target_ring_fd),
            types::Fixed(slot),
            types::DestinationSlot::auto_target(),
            target_user_data,
        )
        .build()
        .user_data(token.pack());
        self.push(entry);
    }

    /// Posts a completion carrying `token` on the ring `target_ring_fd` (IORING_OP_MSG_RING with
    /// IORING_MSG_DATA): wakes the thread waiting on it. No syscall of its own: the entry goes
    /// in with this ring's next submit. This ring gets a completion only if it failed.
    pub fn wake_ring(&mut self, target_ring_fd: RawFd, token: Token) {
        let entry = opcode::MsgRingData::new(types::Fd(target_ring_fd), 0, token.pack(), None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(token.pack());
        self.push(entry);
    }

    /// # Safety
    /// `buf` (8 bytes) must stay valid until the read completes.
    pub unsafe fn read_eventfd(&mut self, fd: RawFd, buf: *mut u64, token: Token) {
        let entry = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(token.pack());
        self.push(entry);
    }

    /// The bytes a recv completion delivered in provided buffer `bid`.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        self.bufs.get(bid, len)
    }

    pub fn recycle(&mut self, bid: u16) {
        self.bufs.recycle(bid);
    }

    /// More receive buffers in circulation (`BufRing::grow`), up to the pool's size.
    pub fn grow_buffers(&mut self) {
        self.bufs.grow();
    }

    /// Cancels every operation still in flight and waits (up to a second) for them to end, so
    /// no kernel work refers to shard memory once the ring is dropped. False when that could
    /// not be confirmed (the wait timed out, or the kernel refused the cancel): the caller
    /// must then keep the memory the operations point to. Entries still in the local backlog
    /// never reached the kernel and refer to nothing.
    pub fn cancel_all(&mut self) -> bool {
        self.flush_backlog();
        let uring = match &mut self.backend {
            Backend::Kernel(uring) => uring,
            Backend::Sim(sim) => {
                sim.cancel_all();
                return true;
            }
        };
        let _ = uring.submit();
        let timeout = types::Timespec::new().sec(1);
        uring
            .submitter()
            .register_sync_cancel(Some(timeout), types::CancelBuilder::any())
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_setup_says_how_to_enable_io_uring() {
        for errno in [libc::EPERM, libc::ENOSYS] {
            let message = explain_setup_error(io::Error::from_raw_os_error(errno)).to_string();
            assert!(
                message.contains("io_uring is disabled: run sysctl -w kernel.io_uring_disabled=0"),
                "{message}"
            );
        }
        let message = explain_setup_error(io::Error::from_raw_os_error(libc::ENOMEM)).to_string();
        assert!(message.contains("RLIMIT_MEMLOCK"), "{message}");
    }

    /// Issue 7: `push` never drops an entry nor lets a later one overtake it, even while the
    /// kernel takes none. Here the pushes come from a thread other than the ring's single
    /// issuer, whose every enter the kernel refuses (EEXIST), so the 4-entry queue stays full
    /// for most of 64 no-ops; 64 more follow from the owning thread. All 128 complete, in order.
    #[test]
    fn issue_7_push_keeps_every_entry_in_order_while_the_queue_is_full() {
        use std::time::{Duration, Instant};
        const COUNT: u64 = 64;
        let mut ring = Ring::new(RingSizes {
            entries: 4,
            files: 4,
            recv_buffer_count: 4,
            recv_buffer_size: 64,
        })
        .expect("io_uring");
        let nop = |n: u64| opcode::Nop::new().build().user_data(n);
        std::thread::scope(|scope| {
            scope.spawn(|| (0..COUNT).for_each(|n| ring.push(nop(n))));
        });
        (COUNT..2 * COUNT).for_each(|n| ring.push(nop(n)));
        let mut seen = Vec::new();
        let mut batch = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.len() < 2 * COUNT as usize && Instant::now() < deadline {
            ring.submit_and_wait(0).expect("submit");
            ring.reap(&mut batch, 8);
            seen.extend(batch.iter().map(|c| c.user_data));
        }
        assert_eq!(seen, (0..2 * COUNT).collect::<Vec<_>>());
    }

    #[test]
    fn a_ring_builds_and_registers_its_tables() {
        let ring = Ring::new(RingSizes {
            entries: 8,
            files: 16,
            recv_buffer_count: 8,
            recv_buffer_size: 256,
        });
        // Where io_uring is off this is the error above; here the kernel allows it.
        let mut ring = ring.expect("io_uring available on the test machine");
        assert_eq!(ring.files(), 16);
        assert!(!ring.has_completions());
        ring.poll().expect("an idle poll");
    }

    /// The whole receive path on a socketpair: multishot recv on a fixed slot fills provided
    /// buffers, stays armed (F_MORE), and ends with one last completion after a shutdown.
    #[test]
    fn multishot_recv_fills_provided_buffers_until_shutdown() {
        let mut ring = Ring::new(RingSizes {
            entries: 8,
            files: 4,
            recv_buffer_count: 4,
            recv_buffer_size: 64,
        })
        .expect("io_uring");
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into the array.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) },
            0
        );
        let (ours, peer) = (fds[0], fds[1]);
        let Backend::Kernel(uring) = &ring.backend else {
            unreachable!("a kernel ring");
        };
        uring
            .submitter()
            .register_files_update(2, &[ours])
            .expect("slot 2");
        let token = Token::new(Op::Recv, 2, 7);
        ring.recv_multi(2, token);
        let mut completions = Vec::new();
        for word in [&b"hello"[..], &b"world!"[..]] {
            // SAFETY: writes from a live slice to our socket.
            let n = unsafe { libc::write(peer, word.as_ptr().cast(), word.len()) };
            assert_eq!(n, word.len() as isize);
            ring.submit_and_wait(1).expect("wait");
            ring.reap(&mut completions, 16);
            assert_eq!(completions.len(), 1);
            let c = completions[0];
            assert_eq!(Token::unpack(c.user_data), Some(token));
            assert!(c.more(), "multishot recv stays armed");
            let bid = c.buffer_id().expect("a provided buffer");
            assert_eq!(ring.buffer(bid, c.result as usize), word);
            ring.recycle(bid);
        }
        ring.shutdown(2, Token::new(Op::Shutdown, 2, 7));
        let mut last_recv = None;
        while last_recv.is_none() {
            ring.submit_and_wait(1).expect("wait");
            ring.reap(&mut completions, 16);
            for c in &completions {
                if Token::unpack(c.user_data).map(|t| t.op) == Some(Op::Recv) {
                    last_recv = Some(*c);
                }
            }
        }
        let last = last_recv.expect("recv ended");
        assert!(!last.more(), "the shutdown ends the multishot recv");
        assert_eq!(last.result, 0, "end of stream");
        ring.close(2, Token::new(Op::Close, 2, 7));
        ring.submit_and_wait(0).expect("submit");
        // SAFETY: closes the descriptors this test opened.
        unsafe {
            libc::close(ours);
            libc::close(peer);
        }
    }
}
