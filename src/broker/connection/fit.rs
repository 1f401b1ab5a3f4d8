//! The CONNACK within the client's Maximum Packet Size [MQTT-3.1.2-24]: the server never sends a packet
//! larger than the client accepts. What the client can do without goes first: Reason String and User
//! Properties (which the spec says to leave out rather than exceed the limit), Response Information and
//! Server Reference, Topic Alias Maximum (without it the client sends no aliases), and properties whose
//! value is the default anyway. Restrictions the client must know (Maximum QoS, Receive Maximum, Maximum
//! Packet Size, a feature not available) and what it must know to keep talking (its assigned id, a changed
//! keep-alive or session expiry) stay; a CONNACK that does not fit even so is not sent: the connection closes
//! without one.

use crate::protocol::{encode, ConnAck, Packet, Properties, ProtocolVersion};
use bytes::BytesMut;

/// The properties the client can do without, in the order they are dropped.
const OPTIONAL: &[fn(&mut Properties)] = &[
    |p| p.reason_string = None,
    |p| p.user_properties.clear(),
    |p| p.response_information = None,
    |p| p.server_reference = None,
    |p| p.topic_alias_maximum = None,
    // Values that are the default when absent.
    |p| p.receive_maximum = p.receive_maximum.filter(|m| *m != u16::MAX),
    |p| p.maximum_qos = p.maximum_qos.filter(|q| *q != 2),
    |p| p.retain_available = p.retain_available.filter(|a| !*a),
    |p| p.wildcard_subscription_available = p.wildcard_subscription_available.filter(|a| !*a),
    |p| p.subscription_identifier_available = p.subscription_identifier_available.filter(|a| !*a),
    |p| p.shared_subscription_available = p.shared_subscription_available.filter(|a| !*a),
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
            // Response Information goes, then Topic Alias Maximum.
            (whole as u32 - 1, true, whole - 9),
            (whole as u32 - 9, true, whole - 9),
            (whole as u32 - 10, true, whole - 12),
            // Receive Maximum 100 and Maximum Packet Size are restrictions: 13 bytes at least.
            (13, true, 13),
            (12, false, 0),
            (5, false, 0),
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
    fn defaults_go_and_restrictions_stay() {
        let mut ack = full();
        ack.properties.receive_maximum = Some(u16::MAX);
        ack.properties.retain_available = Some(false);
        assert!(fit_connack(&mut ack, 12));
        assert_eq!(ack.properties.receive_maximum, None, "65535 is the default");
        assert_eq!(
            ack.properties.retain_available,
            Some(false),
            "a restriction stays"
        );
        assert_eq!(ack.properties.maximum_packet_size, Some(1 << 20));
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
