//! The CONNACK within the client's Maximum Packet Size [MQTT-3.1.2-24]: the server never sends a packet
//! larger than the client accepts. Announcements the client can do without go first; what it must know to
//! keep talking (its assigned id, a changed keep-alive or session expiry) stays, and a CONNACK that does not
//! fit even so is not sent: the connection closes without one.

use crate::protocol::{encode, ConnAck, Packet, Properties, ProtocolVersion};
use bytes::BytesMut;

/// The optional properties, in the order they are dropped (the least useful to the client first).
const OPTIONAL: &[fn(&mut Properties)] = &[
    |p| p.reason_string = None,
    |p| p.user_properties.clear(),
    |p| p.response_information = None,
    |p| p.server_reference = None,
    |p| p.shared_subscription_available = None,
    |p| p.subscription_identifier_available = None,
    |p| p.wildcard_subscription_available = None,
    |p| p.retain_available = None,
    |p| p.topic_alias_maximum = None,
    |p| p.maximum_packet_size = None,
    |p| p.maximum_qos = None,
    |p| p.receive_maximum = None,
];

fn size(ack: &ConnAck) -> usize {
    let mut out = BytesMut::new();
    match encode(&Packet::ConnAck(ack.clone()), ProtocolVersion::V5, &mut out) {
        Ok(()) => out.len(),
        Err(_) => usize::MAX,
    }
}

/// Drops optional properties of a v5 CONNACK until it fits in `max` bytes; `false` when it cannot.
pub fn fit_connack(ack: &mut ConnAck, max: u32) -> bool {
    let max = max as usize;
    let mut drop = OPTIONAL.iter();
    while size(ack) > max {
        match drop.next() {
            Some(d) => d(&mut ack.properties),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ReasonCode;

    fn full() -> ConnAck {
        ConnAck {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            properties: Properties {
                receive_maximum: Some(100),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(10),
                response_information: Some("reply/".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn optional_properties_go_first_and_a_connack_that_cannot_fit_is_not_sent() {
        let whole = size(&full());
        for (max, fits, keeps) in [
            // Room for everything: unchanged.
            (u32::MAX, true, whole),
            (whole as u32, true, whole),
            // Response information goes, then the announcements.
            (whole as u32 - 1, true, whole - 9),
            // 8 bytes: Receive Maximum (3 bytes), the last to go, still fits.
            (8, true, 8),
            (7, true, 5),
            (5, true, 5),
            // Not even the bare CONNACK (5 bytes).
            (4, false, 0),
            (2, false, 0),
        ] {
            let mut ack = full();
            assert_eq!(fit_connack(&mut ack, max), fits, "max {max}");
            if fits {
                assert_eq!(size(&ack), keeps, "max {max}: {ack:?}");
                assert!(size(&ack) <= max as usize);
            }
        }
    }

    #[test]
    fn what_the_client_must_know_is_never_dropped() {
        let mut ack = full();
        ack.properties.assigned_client_identifier = Some("auto-1234567890".into());
        ack.properties.server_keep_alive = Some(30);
        let must = {
            let mut m = ack.clone();
            for d in OPTIONAL {
                d(&mut m.properties);
            }
            size(&m)
        };
        assert!(fit_connack(&mut ack, must as u32));
        assert_eq!(
            ack.properties.assigned_client_identifier.as_deref(),
            Some("auto-1234567890")
        );
        assert_eq!(ack.properties.server_keep_alive, Some(30));
        let mut ack = full();
        ack.properties.assigned_client_identifier = Some("auto-1234567890".into());
        assert!(
            !fit_connack(&mut ack, 10),
            "the assigned id does not fit: no CONNACK"
        );
    }
}
