//! The kernel's side of the simulation: what each submitted operation does to the sockets and
//! the fixed-file tables, and which completions it posts (`submitted`), then what can move
//! without the shard (`deliver`): accepts from the backlog, bytes into armed recvs, sends into
//! the clients that read. Strict where the real kernel would misbehave quietly (see `sim`).

use std::os::fd::RawFd;

use crate::ring::sim::{SimKernel, SimOp, CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE};
use crate::ring::BufRing;

use super::{PendingSend, SimBroker, SocketId, RING_FD_BASE};

/// The token an operation carries, for the trace.
fn describe(op: SimOp) -> String {
    let user_data = match op {
        SimOp::AcceptMulti { user_data }
        | SimOp::RecvMulti { user_data, .. }
        | SimOp::Send { user_data, .. }
        | SimOp::Shutdown { user_data, .. }
        | SimOp::Cancel { user_data, .. }
        | SimOp::Close { user_data, .. }
        | SimOp::Timeout { user_data }
        | SimOp::Read { user_data, .. }
        | SimOp::SendFd { user_data, .. }
        | SimOp::MsgData { user_data, .. } => user_data,
    };
    format!("{:?}", crate::ring::Token::unpack(user_data))
}

impl SimBroker {
    pub(super) fn kernel(&mut self, shard: usize, ring: usize) -> &mut SimKernel {
        self.shards[shard].rings[ring]
            .sim()
            .expect("a simulated ring")
            .0
    }

    pub(super) fn kernel_and_buffers(
        &mut self,
        shard: usize,
        ring: usize,
    ) -> (&mut SimKernel, &mut BufRing) {
        self.shards[shard].rings[ring]
            .sim()
            .expect("a simulated ring")
    }

    /// The ring a MSG_RING entry names.
    fn ring_at(&self, fd: RawFd) -> Option<(usize, usize)> {
        let index = usize::try_from(fd.checked_sub(RING_FD_BASE)?).ok()?;
        let shard = index / self.rings_per_shard;
        (shard < self.shards.len()).then_some((shard, index % self.rings_per_shard))
    }

    /// The kernel's side of one ring: takes what was submitted, then moves what can move.
    pub(super) fn kernel_step(&mut self, shard: usize, ring: usize) -> bool {
        let mut busy = false;
        while let Some(op) = self.kernel(shard, ring).take_submitted() {
            busy = true;
            self.submitted(shard, ring, op);
        }
        busy | self.deliver(shard, ring)
    }

    fn socket_in(&mut self, shard: usize, ring: usize, slot: u32, what: &str) -> SocketId {
        match self.kernel(shard, ring).file(slot) {
            Some(socket) => socket as SocketId,
            None => panic!("shard {shard} ring {ring}: {what} on empty slot {slot}"),
        }
    }

    pub(super) fn submitted(&mut self, shard: usize, ring: usize, op: SimOp) {
        let here = format!("shard {shard} ring {ring}");
        if self.trace {
            eprintln!("{here}: submitted {op:?} {}", describe(op));
        }
        match op {
            SimOp::AcceptMulti { user_data } => {
                let flight = &mut self.flights[shard][ring];
                assert!(flight.accept.is_none(), "{here}: a second accept armed");
                flight.accept = Some(user_data);
            }
            SimOp::RecvMulti { slot, user_data } => {
                self.socket_in(shard, ring, slot, "recv");
                let previous = self.flights[shard][ring].recvs.insert(slot, user_data);
                assert!(
                    previous.is_none(),
                    "{here}: a second recv armed on slot {slot}"
                );
            }
            SimOp::Send {
                slot,
                buf,
                len,
                user_data,
            } => {
                self.socket_in(shard, ring, slot, "send");
                assert!(len > 0, "{here}: an empty send on slot {slot}");
                // SAFETY: the shard keeps the buffer valid and unmoved until the completion
                // (`Ring::send`'s contract), as it must for the kernel.
                let bytes = unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec();
                let send = PendingSend {
                    buf,
                    len,
                    user_data,
                    bytes,
                };
                let previous = self.flights[shard][ring].sends.insert(slot, send);
                assert!(
                    previous.is_none(),
                    "{here}: a second send in flight on slot {slot}"
                );
            }
            SimOp::Shutdown { slot, user_data } => {
                let socket = self.socket_in(shard, ring, slot, "shutdown");
                self.sockets[socket].shut_down = true;
                self.kernel(shard, ring).post(user_data, 0, 0);
            }
            SimOp::Cancel { target, user_data } => {
                let flight = &mut self.flights[shard][ring];
                let recv = flight
                    .recvs
                    .iter()
                    .find(|(_, &armed)| armed == target)
                    .map(|(&slot, _)| slot);
                if recv.is_some() && self.faults.stuck_cancels {
                    self.kernel(shard, ring).post(user_data, -libc::EALREADY, 0);
                    return;
                }
                let found = if let Some(slot) = recv {
                    flight.recvs.remove(&slot);
                    true
                } else if flight.accept == Some(target) {
                    flight.accept = None;
                    true
                } else {
                    false
                };
                // The cancel completes first; the cancelled operation's last completion
                // follows from task work.
                let kernel = self.kernel(shard, ring);
                if found {
                    kernel.post(user_data, 0, 0);
                    kernel.post(target, -libc::ECANCELED, 0);
                } else {
                    kernel.post(user_data, -libc::ENOENT, 0);
                }
            }
            SimOp::Close { slot, user_data } => {
                let flight = &self.flights[shard][ring];
                // Closing a slot ends neither a multishot recv nor a send: the socket would
                // live on, unreachable.
                assert!(
                    !flight.recvs.contains_key(&slot),
                    "{here}: slot {slot} closed while its recv is armed"
                );
                assert!(
                    !flight.sends.contains_key(&slot),
                    "{here}: slot {slot} closed with a send in flight"
                );
                let Some(socket) = self.kernel(shard, ring).remove_file(slot) else {
                    panic!("{here}: close of empty slot {slot}");
                };
                let socket = &mut self.sockets[socket as SocketId];
                socket.refs -= 1;
                if socket.refs == 0 {
                    socket.closed = true;
                }
                self.kernel(shard, ring).post(user_data, 0, 0);
            }
            SimOp::Timeout { user_data } => {
                let flight = &mut self.flights[shard][ring];
                assert!(flight.timers.is_empty(), "{here}: a second timer armed");
                flight.timers.push(user_data);
            }
            SimOp::Read { user_data, .. } => self.flights[shard][ring].reads.push(user_data),
            SimOp::SendFd { .. } if self.faults.hold_handoffs => {
                self.held_handoffs.push((shard, ring, op));
            }
            SimOp::SendFd {
                slot,
                target_ring_fd,
                target_user_data,
                user_data,
            } => {
                let socket = self.socket_in(shard, ring, slot, "hand-off");
                assert!(
                    !self.flights[shard][ring].recvs.contains_key(&slot),
                    "{here}: slot {slot} handed off while its recv is armed"
                );
                let Some((target, target_ring)) = self.ring_at(target_ring_fd) else {
                    self.kernel(shard, ring).post(user_data, -libc::EBADF, 0);
                    return;
                };
                match self.kernel(target, target_ring).install(socket as u64) {
                    Some(_) if self.faults.handoff_overflow => {
                        self.sockets[socket].refs += 1;
                        self.kernel(shard, ring)
                            .post(user_data, -libc::EOVERFLOW, 0);
                    }
                    Some(target_slot) => {
                        self.sockets[socket].refs += 1;
                        self.kernel(target, target_ring).post(
                            target_user_data,
                            target_slot as i32,
                            0,
                        );
                        self.kernel(shard, ring).post(user_data, 0, 0);
                    }
                    None => self.kernel(shard, ring).post(user_data, -libc::ENFILE, 0),
                }
            }
            SimOp::MsgData {
                target_ring_fd,
                data,
                result,
                user_data,
                skip_success,
            } => match self.ring_at(target_ring_fd) {
                Some((target, target_ring)) => {
                    self.kernel(target, target_ring).post(data, result, 0);
                    if !skip_success {
                        self.kernel(shard, ring).post(user_data, 0, 0);
                    }
                }
                None => self.kernel(shard, ring).post(user_data, -libc::EBADF, 0),
            },
        }
    }

    /// Accepts waiting connections, feeds armed recvs, completes sends.
    fn deliver(&mut self, shard: usize, ring: usize) -> bool {
        let mut busy = false;
        while let Some(user_data) = self.flights[shard][ring].accept {
            let Some(socket) = self.backlog[shard].pop_front() else {
                break;
            };
            busy = true;
            match self.kernel(shard, ring).install(socket as u64) {
                Some(slot) => {
                    let socket = &mut self.sockets[socket];
                    socket.refs = 1;
                    self.kernel(shard, ring)
                        .post(user_data, slot as i32, CQE_F_MORE);
                }
                None => {
                    // The kernel closes the connection that found the table full and ends
                    // the multishot accept.
                    self.sockets[socket].closed = true;
                    self.flights[shard][ring].accept = None;
                    self.kernel(shard, ring).post(user_data, -libc::ENFILE, 0);
                }
            }
        }
        let recvs: Vec<(u32, u64)> = self.flights[shard][ring]
            .recvs
            .iter()
            .map(|(&slot, &user_data)| (slot, user_data))
            .collect();
        for (slot, user_data) in recvs {
            busy |= self.deliver_recv(shard, ring, slot, user_data);
        }
        let slots: Vec<u32> = self.flights[shard][ring].sends.keys().copied().collect();
        for slot in slots {
            busy |= self.deliver_send(shard, ring, slot);
        }
        busy
    }

    fn deliver_recv(&mut self, shard: usize, ring: usize, slot: u32, user_data: u64) -> bool {
        let socket_id = self.socket_in(shard, ring, slot, "armed recv");
        let mut busy = false;
        for _ in 0..self.recv_burst_max {
            let socket = &mut self.sockets[socket_id];
            let (result, flags) = if socket.reset {
                (-libc::ECONNRESET, 0)
            } else if socket.shut_down {
                (0, 0)
            } else if let Some(mut chunk) = socket.inbound.pop_front() {
                let (kernel, bufs) = self.kernel_and_buffers(shard, ring);
                match kernel.recv_into_buffer(bufs, &chunk) {
                    Some((bid, len)) => {
                        chunk.drain(..len);
                        let socket = &mut self.sockets[socket_id];
                        if !chunk.is_empty() {
                            socket.inbound.push_front(chunk);
                        }
                        let flags = CQE_F_MORE | CQE_F_BUFFER | u32::from(bid) << CQE_BUFFER_SHIFT;
                        (len as i32, flags)
                    }
                    None => {
                        self.sockets[socket_id].inbound.push_front(chunk);
                        (-libc::ENOBUFS, 0)
                    }
                }
            } else if socket.client_closed {
                (0, 0)
            } else {
                break;
            };
            busy = true;
            self.kernel(shard, ring).post(user_data, result, flags);
            if flags & CQE_F_MORE == 0 {
                self.flights[shard][ring].recvs.remove(&slot);
                break;
            }
        }
        busy
    }

    fn deliver_send(&mut self, shard: usize, ring: usize, slot: u32) -> bool {
        let socket_id = self.socket_in(shard, ring, slot, "send in flight");
        let flight = &mut self.flights[shard][ring];
        let send = &flight.sends[&slot];
        // SAFETY: as at submission; the completion has not been posted yet.
        let now = unsafe { std::slice::from_raw_parts(send.buf, send.len as usize) };
        assert!(
            now == send.bytes.as_slice(),
            "shard {shard} ring {ring}: slot {slot}'s send buffer changed while in flight"
        );
        let socket = &mut self.sockets[socket_id];
        let result = if socket.reset {
            -libc::ECONNRESET
        } else if socket.shut_down {
            -libc::EPIPE
        } else if socket.reading {
            let cut = match socket.send_cut {
                0 => send.bytes.len(),
                cut => cut.min(send.bytes.len()),
            };
            socket.received.extend_from_slice(&send.bytes[..cut]);
            cut as i32
        } else {
            return false;
        };
        let user_data = send.user_data;
        flight.sends.remove(&slot);
        self.kernel(shard, ring).post(user_data, result, 0);
        true
    }
}
