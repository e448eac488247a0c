//! Deadlines for the coarse per-shard timer. One 1 s timeout op drives a sweep of the shard's
//! connections: a kernel timeout per connection would need re-arming on every packet. The
//! arithmetic is here, as plain functions of `now`, so it is tested without waiting.

/// How often the shard sweeps its connections.
pub const TICK_MS: u64 = 1000;

/// After a server DISCONNECT, how long the client's last bytes are read and dropped, waiting
/// for it to close, before the connection is cut (`close.rs`).
pub const LINGER_MS: u64 = 2 * TICK_MS;

/// [MQTT-3.1.2-24] One and a half keepalive periods without a packet: disconnect. Keepalive 0
/// turns the mechanism off.
pub fn keepalive_expired(last_packet_ms: u64, keepalive_secs: u16, now_ms: u64) -> bool {
    if keepalive_secs == 0 {
        return false;
    }
    let deadline_ms = last_packet_ms + keepalive_secs as u64 * 1500;
    now_ms >= deadline_ms
}

/// The keepalive the broker holds a client to: the client's own, capped by
/// `limits.keepalive_max_secs` (0 = no cap). MQTT 3.1.1 cannot tell the client a shorter one
/// (MQTT 5 sends Server Keep Alive), so a client asking for more, or for none, is simply held
/// to the cap.
pub fn effective_keepalive_secs(client_secs: u16, max_secs: u16) -> u16 {
    if max_secs == 0 {
        return client_secs;
    }
    if client_secs == 0 {
        return max_secs;
    }
    client_secs.min(max_secs)
}

/// A connection that has not sent CONNECT within `timeout_secs` of its accept is closed, so
/// silent sockets cannot hold slots forever.
pub fn connect_expired(accepted_ms: u64, timeout_secs: u16, now_ms: u64) -> bool {
    now_ms >= accepted_ms + timeout_secs as u64 * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_allows_one_and_a_half_periods() {
        assert!(!keepalive_expired(10_000, 10, 24_999));
        assert!(keepalive_expired(10_000, 10, 25_000));
        // Keepalive 1: 1.5 s, not rounded down to 1 s.
        assert!(!keepalive_expired(0, 1, 1_499));
        assert!(keepalive_expired(0, 1, 1_500));
    }

    #[test]
    fn keepalive_zero_never_expires() {
        assert!(!keepalive_expired(0, 0, u64::MAX / 2));
    }

    #[test]
    fn keepalive_max_does_not_overflow() {
        assert!(!keepalive_expired(0, u16::MAX, 98_302_000));
        assert!(keepalive_expired(0, u16::MAX, 98_302_500));
    }

    #[test]
    fn keepalive_is_capped_by_the_limit() {
        assert_eq!(effective_keepalive_secs(60, 0), 60);
        assert_eq!(effective_keepalive_secs(0, 0), 0);
        assert_eq!(effective_keepalive_secs(60, 10), 10);
        assert_eq!(effective_keepalive_secs(5, 10), 5);
        assert_eq!(
            effective_keepalive_secs(0, 10),
            10,
            "no keepalive is longer than any cap"
        );
    }

    #[test]
    fn connect_timeout() {
        assert!(!connect_expired(5_000, 10, 14_999));
        assert!(connect_expired(5_000, 10, 15_000));
    }
}
