//! A connection taken over settles what its client sent before: the client may have sent DISCONNECT (or
//! a PUBLISH) and reconnected at once, and the new CONNECT can be handled before this connection read
//! them. The session waits for this connection's end before it answers the new one, so the Will is
//! decided by what the client really sent [MQTT-3.1.2-10], and an inbound QoS 2 id this connection was
//! still to record is known before the new connection reads the resend [MQTT-4.3.3-9].

use super::*;

/// Bytes read beyond what was already buffered: what is already in the socket, not a flood.
const SETTLE_BYTES: usize = 64 * 1024;

impl Reader {
    /// Handles what was buffered and what the socket holds right now (never waiting for more): PUBLISH,
    /// PUBREL and DISCONNECT in order; requests that would need the session (SUBSCRIBE, UNSUBSCRIBE,
    /// acknowledgements of its deliveries) are dropped: the session is no longer this connection's.
    pub(super) async fn settle<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        decoder: &mut Decoder,
    ) -> End {
        let mut budget = SETTLE_BYTES;
        // What is settled is bounded already: no rate limit and no wait (see `stopped`, `wait_for_credit`),
        // so neither the close nor this connection's own session (which waits for it) holds it up.
        self.message_rate = None;
        self.byte_rate = None;
        self.settling = true;
        loop {
            loop {
                match decoder.decode(buf) {
                    Ok(Some(
                        p @ (Packet::Publish(_) | Packet::PubRel(_) | Packet::Disconnect(_)),
                    )) => {
                        if let Some(end) = self.handle_packet(p).await {
                            return end;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return End::ClosedByServer,
                }
            }
            if budget == 0 {
                return End::ClosedByServer;
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.capacity().clamp(512, 64 * 1024));
            }
            // A zero timeout polls the read once: what the socket holds now, without waiting for more
            // (unconstrained: a spent cooperative budget must not make a ready read look empty).
            let read = tokio::task::unconstrained(rd.read_buf(buf));
            match tokio::time::timeout(Duration::ZERO, read).await {
                Ok(Ok(n)) if n > 0 => budget = budget.saturating_sub(n),
                _ => return End::ClosedByServer,
            }
        }
    }
}
