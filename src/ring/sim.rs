//! A simulated kernel behind `Ring`, for tests and fuzzing (`shard::sim` drives it): no
//! io_uring, no syscall, every step decided by the driver. It reads each submission entry the
//! way the kernel does (the SQE layout is kernel ABI), so the `Ring` methods that build entries
//! are the code under test too; it keeps the ring's fixed-file table and takes provided buffers
//! from the real buffer ring (`BufRing::kernel_take`), so slot reuse and buffer recycling behave
//! as they do on the kernel. What happens to an operation (when a recv gets bytes, when a send
//! completes, what a cancel finds) is the driver's business: it takes the decoded operations
//! (`take_submitted`) and posts completions (`post`), which `Ring::reap` hands to the shard.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue};

use super::{BufRing, Completion};

/// Completion flags, as the kernel ABI defines them (`IORING_CQE_F_*`).
pub const CQE_F_BUFFER: u32 = 1 << 0;
pub const CQE_F_MORE: u32 = 1 << 1;
/// The buffer id of a provided-buffer completion sits above this bit.
pub const CQE_BUFFER_SHIFT: u32 = 16;

// SQE bits the broker's entries rely on (kernel ABI).
const IOSQE_FIXED_FILE: u8 = 1 << 0;
const IOSQE_BUFFER_SELECT: u8 = 1 << 5;
const IOSQE_CQE_SKIP_SUCCESS: u8 = 1 << 6;
const IORING_ACCEPT_MULTISHOT: u16 = 1 << 0;
const IORING_RECV_MULTISHOT: u16 = 1 << 1;
const IORING_FILE_INDEX_ALLOC: u32 = u32::MAX;
const IORING_MSG_DATA: u64 = 0;
const IORING_MSG_SEND_FD: u64 = 1;

const SQE_SIZE: usize = 64;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == SQE_SIZE);

/// One submission, decoded from its entry. Slots are fixed-file slots of the submitting ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimOp {
    /// Multishot accept into a slot the kernel allocates.
    AcceptMulti {
        user_data: u64,
    },
    /// Multishot recv into the provided-buffer ring.
    RecvMulti {
        slot: u32,
        user_data: u64,
    },
    /// `buf..buf + len` stays valid until the completion (the caller's promise to the kernel).
    Send {
        slot: u32,
        buf: *const u8,
        len: u32,
        user_data: u64,
    },
    Shutdown {
        slot: u32,
        user_data: u64,
    },
    /// Cancels the operation submitted with `target` as its user data.
    Cancel {
        target: u64,
        user_data: u64,
    },
    Close {
        slot: u32,
        user_data: u64,
    },
    Timeout {
        user_data: u64,
    },
    /// A read on a plain descriptor (the shard's eventfds).
    Read {
        fd: RawFd,
        user_data: u64,
    },
    /// MSG_RING with IORING_MSG_SEND_FD: `slot` into a slot the target ring allocates, whose
    /// completion carries `target_user_data` and the slot.
    SendFd {
        slot: u32,
        target_ring_fd: RawFd,
        target_user_data: u64,
        user_data: u64,
    },
    /// MSG_RING with IORING_MSG_DATA: a completion `{data, result}` on the target ring.
    MsgData {
        target_ring_fd: RawFd,
        data: u64,
        result: i32,
        user_data: u64,
        skip_success: bool,
    },
}

/// A submission entry's bytes, read as the kernel reads them.
struct Sqe([u8; SQE_SIZE]);

impl Sqe {
    fn of(entry: &squeue::Entry) -> Sqe {
        // SAFETY: `Entry` is `repr(C)` over the 64-byte `io_uring_sqe` (size asserted above),
        // built from zeroed memory, so every byte is initialised.
        Sqe(unsafe { std::mem::transmute_copy::<squeue::Entry, [u8; SQE_SIZE]>(entry) })
    }
    fn u8_at(&self, at: usize) -> u8 {
        self.0[at]
    }
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_ne_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    // The fields of `struct io_uring_sqe` the broker's operations use.
    fn opcode(&self) -> u8 {
        self.u8_at(0)
    }
    fn flags(&self) -> u8 {
        self.u8_at(1)
    }
    fn ioprio(&self) -> u16 {
        self.u16_at(2)
    }
    fn fd(&self) -> i32 {
        self.u32_at(4) as i32
    }
    fn off(&self) -> u64 {
        self.u64_at(8)
    }
    fn addr(&self) -> u64 {
        self.u64_at(16)
    }
    fn len(&self) -> u32 {
        self.u32_at(24)
    }
    fn user_data(&self) -> u64 {
        self.u64_at(32)
    }
    fn file_index(&self) -> u32 {
        self.u32_at(44)
    }
    fn addr3(&self) -> u64 {
        self.u64_at(48)
    }

    /// The fixed slot an operation names; the broker only ever uses fixed files for sockets.
    fn fixed_slot(&self) -> u32 {
        assert!(
            self.flags() & IOSQE_FIXED_FILE != 0,
            "opcode {} on a plain descriptor: connections are direct descriptors",
            self.opcode()
        );
        self.fd() as u32
    }

    fn decode(&self) -> SimOp {
        let user_data = self.user_data();
        match self.opcode() {
            opcode::AcceptMulti::CODE => {
                assert!(
                    self.ioprio() & IORING_ACCEPT_MULTISHOT != 0,
                    "accept is multishot"
                );
                assert_eq!(
                    self.file_index(),
                    IORING_FILE_INDEX_ALLOC,
                    "accept allocates a fixed slot"
                );
                SimOp::AcceptMulti { user_data }
            }
            opcode::RecvMulti::CODE => {
                assert!(
                    self.ioprio() & IORING_RECV_MULTISHOT != 0,
                    "recv is multishot"
                );
                assert!(
                    self.flags() & IOSQE_BUFFER_SELECT != 0,
                    "recv reads into provided buffers"
                );
                SimOp::RecvMulti {
                    slot: self.fixed_slot(),
                    user_data,
                }
            }
            opcode::Send::CODE => SimOp::Send {
                slot: self.fixed_slot(),
                buf: self.addr() as *const u8,
                len: self.len(),
                user_data,
            },
            opcode::Shutdown::CODE => SimOp::Shutdown {
                slot: self.fixed_slot(),
                user_data,
            },
            opcode::AsyncCancel::CODE => SimOp::Cancel {
                target: self.addr(),
                user_data,
            },
            opcode::Close::CODE => {
                // A fixed slot is named by file_index = slot + 1.
                assert!(self.file_index() > 0, "close of a plain descriptor");
                SimOp::Close {
                    slot: self.file_index() - 1,
                    user_data,
                }
            }
            opcode::Timeout::CODE => SimOp::Timeout { user_data },
            opcode::Read::CODE => SimOp::Read {
                fd: self.fd(),
                user_data,
            },
            opcode::MsgRingData::CODE => match self.addr() {
                IORING_MSG_DATA => SimOp::MsgData {
                    target_ring_fd: self.fd(),
                    data: self.off(),
                    result: self.len() as i32,
                    user_data,
                    skip_success: self.flags() & IOSQE_CQE_SKIP_SUCCESS != 0,
                },
                IORING_MSG_SEND_FD => {
                    assert_eq!(
                        self.file_index(),
                        IORING_FILE_INDEX_ALLOC,
                        "the target allocates the slot"
                    );
                    SimOp::SendFd {
                        slot: self.addr3() as u32,
                        target_ring_fd: self.fd(),
                        target_user_data: self.off(),
                        user_data,
                    }
                }
                other => panic!("MSG_RING command {other} is not one the broker uses"),
            },
            other => panic!("opcode {other} is not one the simulated kernel knows"),
        }
    }
}

/// The kernel's side of one simulated ring.
pub struct SimKernel {
    fd: RawFd,
    submitted: VecDeque<SimOp>,
    completions: VecDeque<Completion>,
    /// The fixed-file table: which of the driver's sockets each slot holds.
    table: Vec<Option<u64>>,
    /// The kernel's head in the provided-buffer ring.
    buf_head: u16,
}

// Like the kernel's own entries, the send pointers recorded here are read only by whoever
// drives the ring, on the thread that owns it.
unsafe impl Send for SimKernel {}

impl SimKernel {
    pub fn new(fd: RawFd, files: u32) -> SimKernel {
        SimKernel {
            fd,
            submitted: VecDeque::new(),
            completions: VecDeque::new(),
            table: vec![None; files as usize],
            buf_head: 0,
        }
    }

    /// The number other rings' MSG_RING entries name this ring by.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub(super) fn submit(&mut self, entry: &squeue::Entry) {
        let sqe = Sqe::of(entry);
        debug_assert_eq!(sqe.user_data(), entry.get_user_data(), "SQE layout");
        self.submitted.push_back(sqe.decode());
    }

    /// The oldest submission the driver has not taken yet.
    pub fn take_submitted(&mut self) -> Option<SimOp> {
        self.submitted.pop_front()
    }

    pub fn has_submitted(&self) -> bool {
        !self.submitted.is_empty()
    }

    /// Posts a completion for the shard's next `reap`.
    pub fn post(&mut self, user_data: u64, result: i32, flags: u32) {
        self.completions.push_back(Completion {
            user_data,
            result,
            flags,
        });
    }

    /// Completions posted and not reaped yet.
    pub fn completions(&self) -> impl Iterator<Item = &Completion> {
        self.completions.iter()
    }

    pub fn has_completions(&self) -> bool {
        !self.completions.is_empty()
    }

    pub(super) fn reap(&mut self, out: &mut Vec<Completion>, max: usize) {
        let take = max.min(self.completions.len());
        out.extend(self.completions.drain(..take));
    }

    pub(super) fn cancel_all(&mut self) {
        self.submitted.clear();
        self.completions.clear();
    }

    /// Installs `socket` in the lowest free slot (IORING_FILE_INDEX_ALLOC); `None`: the table
    /// is full (the kernel's -ENFILE).
    pub fn install(&mut self, socket: u64) -> Option<u32> {
        let slot = self.table.iter().position(Option::is_none)?;
        self.table[slot] = Some(socket);
        Some(slot as u32)
    }

    /// The socket in `slot`.
    pub fn file(&self, slot: u32) -> Option<u64> {
        self.table.get(slot as usize).copied().flatten()
    }

    /// Empties `slot`, returning the socket it held.
    pub fn remove_file(&mut self, slot: u32) -> Option<u64> {
        self.table.get_mut(slot as usize)?.take()
    }

    /// Slots holding a socket.
    pub fn files_in_use(&self) -> usize {
        self.table.iter().filter(|slot| slot.is_some()).count()
    }

    /// Buffers the shard has provided and the kernel not taken: all of them once every
    /// completion's buffer was recycled.
    pub fn buffers_provided(&self, bufs: &BufRing) -> u16 {
        bufs.kernel_available(self.buf_head)
    }

    /// A multishot recv's next completion: takes a provided buffer and copies as much of
    /// `bytes` as it holds. `None`: no buffer left (-ENOBUFS).
    pub fn recv_into_buffer(&mut self, bufs: &mut BufRing, bytes: &[u8]) -> Option<(u16, usize)> {
        let (bid, buffer) = bufs.kernel_take(&mut self.buf_head)?;
        let len = bytes.len().min(buffer.len());
        buffer[..len].copy_from_slice(&bytes[..len]);
        Some((bid, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Op, Ring, RingSizes, Token};

    fn ring() -> Ring {
        let sizes = RingSizes {
            entries: 8,
            files: 4,
            recv_buffer_count: 2,
            recv_buffer_size: 8,
        };
        Ring::simulated(sizes, 1_000).expect("a simulated ring")
    }

    #[test]
    fn entries_decode_as_the_kernel_reads_them() {
        let mut ring = ring();
        let token = |op| Token::new(op, 3, 9);
        ring.accept_multi(7, Token::shard(Op::Accept));
        ring.recv_multi(3, token(Op::Recv));
        let bytes = *b"hello";
        // SAFETY: the simulated kernel only records the pointer.
        unsafe { ring.send(3, bytes.as_ptr(), 5, token(Op::Send)) };
        ring.shutdown(3, token(Op::Shutdown));
        ring.cancel(token(Op::Recv), token(Op::Cancel));
        ring.close(3, token(Op::Close));
        ring.send_fixed_file(3, 2_000, 42, token(Op::HandOffSend));
        ring.wake_ring(2_000, Token::shard(Op::MeshWake));
        let (sim, _) = ring.sim().expect("simulated");
        let ops: Vec<SimOp> = std::iter::from_fn(|| sim.take_submitted()).collect();
        let recv = token(Op::Recv).pack();
        assert_eq!(
            ops,
            vec![
                SimOp::AcceptMulti {
                    user_data: Token::shard(Op::Accept).pack()
                },
                SimOp::RecvMulti {
                    slot: 3,
                    user_data: recv
                },
                SimOp::Send {
                    slot: 3,
                    buf: bytes.as_ptr(),
                    len: 5,
                    user_data: token(Op::Send).pack()
                },
                SimOp::Shutdown {
                    slot: 3,
                    user_data: token(Op::Shutdown).pack()
                },
                SimOp::Cancel {
                    target: recv,
                    user_data: token(Op::Cancel).pack()
                },
                SimOp::Close {
                    slot: 3,
                    user_data: token(Op::Close).pack()
                },
                SimOp::SendFd {
                    slot: 3,
                    target_ring_fd: 2_000,
                    target_user_data: 42,
                    user_data: token(Op::HandOffSend).pack()
                },
                SimOp::MsgData {
                    target_ring_fd: 2_000,
                    data: Token::shard(Op::MeshWake).pack(),
                    result: 0,
                    user_data: Token::shard(Op::MeshWake).pack(),
                    skip_success: true
                },
            ]
        );
    }

    #[test]
    fn completions_carry_buffers_and_the_table_reuses_the_lowest_slot() {
        let mut ring = ring();
        let (sim, bufs) = ring.sim().expect("simulated");
        assert_eq!((sim.install(10), sim.install(11)), (Some(0), Some(1)));
        assert_eq!(sim.remove_file(0), Some(10));
        assert_eq!(sim.install(12), Some(0), "the freed slot comes back first");
        assert_eq!(sim.files_in_use(), 2);
        let (bid, len) = sim.recv_into_buffer(bufs, b"0123456789").expect("a buffer");
        assert_eq!(len, 8, "one buffer's worth");
        let (other, _) = sim.recv_into_buffer(bufs, b"x").expect("the second buffer");
        assert!(sim.recv_into_buffer(bufs, b"y").is_none(), "-ENOBUFS");
        sim.post(
            5,
            len as i32,
            CQE_F_MORE | CQE_F_BUFFER | u32::from(bid) << CQE_BUFFER_SHIFT,
        );
        let mut out = Vec::new();
        ring.reap(&mut out, 16);
        assert_eq!(out.len(), 1);
        assert!(out[0].more());
        assert_eq!(out[0].buffer_id(), Some(bid));
        assert_eq!(ring.buffer(bid, len), b"01234567");
        ring.recycle(bid);
        ring.recycle(other);
        let (sim, bufs) = ring.sim().expect("simulated");
        assert_eq!(sim.recv_into_buffer(bufs, b"z").map(|(b, _)| b), Some(bid));
    }
}
