//! The typed token every submission carries in its `user_data`: which operation it was, which
//! connection slot it was for, and that slot's generation when it was submitted. A completion
//! for a slot that has since been closed and reused carries an old generation, so the shard
//! recognises and drops it instead of applying it to the new connection.
//!
//! Layout (64 bits): `op` in the top 8, `generation` in the next 24, `slot` in the low 32.

/// What a completion completes. The shard's `complete` is one `match` on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on the shard's listener; `slot` unused.
    Accept = 1,
    /// Multishot recv on a connection, reading into the provided-buffer ring.
    Recv = 2,
    /// One send of a connection's outbox.
    Send = 3,
    /// `shutdown` of a closing connection: `SHUT_RDWR` ends its recv and any stuck send;
    /// `SHUT_WR` starts a linger after a server DISCONNECT (`close.rs`).
    Shutdown = 4,
    /// Cancel of a closing connection's multishot recv.
    Cancel = 5,
    /// Close of a fixed-file slot.
    Close = 6,
    /// The coarse 1 s timer.
    Timer = 7,
    /// A read on the shard's eventfd: someone (Broker::stop, later the mesh) woke the shard.
    Wake = 8,
    /// A read on the eventfd the shard's secondary rings signal when they have completions.
    RingWake = 9,
    /// Cancel of a ring's multishot accept, when accepting moves to another ring.
    AcceptCancel = 10,
    /// The accepting shard's `MsgRingSendFd` of a connection to its client's home shard
    /// completed (`slot`, `generation`: the connection on the accepting shard).
    HandOffSend = 11,
    /// A connection's descriptor arrived from another shard (`MsgRingSendFd`); the result is
    /// the fixed-file slot the kernel allocated here. `generation` holds the source shard and
    /// `slot` the source's hand-off sequence number: together the hand-off id.
    HandOffFd = 12,
    /// A mesh wake-up: another shard's MSG_RING telling this sleeping shard that its inbound
    /// rings have messages (or, on the sender, a wake-up that could not be delivered).
    MeshWake = 13,
    /// A write of the shard's persistence log (`shard/durable/`).
    LogWrite = 14,
    /// An fdatasync of the shard's persistence log.
    LogSync = 15,
    /// The timer of `sync = "interval"`: the log's written records are due for an fdatasync.
    LogTimer = 16,
    /// A getsockopt(SO_PEERNAME) of a connection, for a log line (`Ring::peer_addr`): it
    /// completed inline, its buffer was read then; the completion says nothing more.
    PeerName = 17,
    /// Compaction of the shard's log: the read of the old log, the writes and the fdatasync
    /// of the new one (`shard/durable/`).
    CompactRead = 18,
    CompactWrite = 19,
    CompactSync = 20,
}

impl Op {
    fn from_u8(value: u8) -> Option<Op> {
        Some(match value {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Shutdown,
            5 => Op::Cancel,
            6 => Op::Close,
            7 => Op::Timer,
            8 => Op::Wake,
            9 => Op::RingWake,
            10 => Op::AcceptCancel,
            11 => Op::HandOffSend,
            12 => Op::HandOffFd,
            13 => Op::MeshWake,
            14 => Op::LogWrite,
            15 => Op::LogSync,
            16 => Op::LogTimer,
            17 => Op::PeerName,
            18 => Op::CompactRead,
            19 => Op::CompactWrite,
            20 => Op::CompactSync,
            _ => return None,
        })
    }
}

/// Generations wrap at 24 bits: a completion would have to stay in flight across 16 million
/// reuses of one slot to be misapplied.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub op: Op,
    pub slot: u32,
    pub generation: u32,
}

impl Token {
    pub fn new(op: Op, slot: u32, generation: u32) -> Token {
        Token {
            op,
            slot,
            generation: generation & GENERATION_MASK,
        }
    }

    /// A token for an operation that belongs to no connection (accept, timer, wake).
    pub fn shard(op: Op) -> Token {
        Token {
            op,
            slot: 0,
            generation: 0,
        }
    }

    pub fn pack(self) -> u64 {
        (self.op as u64) << 56
            | ((self.generation & GENERATION_MASK) as u64) << 32
            | self.slot as u64
    }

    /// `None` for user_data the shard never submitted (e.g. 0 from a kernel-internal CQE).
    pub fn unpack(user_data: u64) -> Option<Token> {
        let op = Op::from_u8((user_data >> 56) as u8)?;
        let generation = ((user_data >> 32) as u32) & GENERATION_MASK;
        Some(Token {
            op,
            slot: user_data as u32,
            generation,
        })
    }
}

/// The next generation of a slot, wrapping within the 24 bits a token carries.
pub fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) & GENERATION_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trips_every_op() {
        let ops = [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Shutdown,
            Op::Cancel,
            Op::Close,
            Op::Timer,
            Op::Wake,
            Op::RingWake,
            Op::AcceptCancel,
            Op::HandOffSend,
            Op::HandOffFd,
            Op::MeshWake,
            Op::LogWrite,
            Op::LogSync,
            Op::LogTimer,
            Op::PeerName,
            Op::CompactRead,
            Op::CompactWrite,
            Op::CompactSync,
        ];
        for op in ops {
            for (slot, generation) in [(0, 0), (1, 1), (19_935, 77), (u32::MAX, GENERATION_MASK)] {
                let token = Token::new(op, slot, generation);
                assert_eq!(Token::unpack(token.pack()), Some(token));
            }
        }
    }

    #[test]
    fn generation_wraps_within_24_bits() {
        assert_eq!(next_generation(GENERATION_MASK), 0);
        assert_eq!(next_generation(5), 6);
        let token = Token::new(Op::Recv, 3, GENERATION_MASK + 2);
        assert_eq!(token.generation, 1);
        assert_eq!(Token::unpack(token.pack()).map(|t| t.generation), Some(1));
    }

    #[test]
    fn fields_do_not_bleed_into_each_other() {
        let a = Token::new(Op::Send, u32::MAX, 0).pack();
        let b = Token::new(Op::Send, 0, GENERATION_MASK).pack();
        assert_eq!(a & b, (Op::Send as u64) << 56);
    }

    #[test]
    fn unknown_op_is_rejected() {
        assert_eq!(Token::unpack(0), None);
        assert_eq!(Token::unpack(0xFF << 56), None);
    }
}
