//! Misbehaving clients: raw sockets that send what a broken or hostile device would (garbage, a wildcard in
//! a PUBLISH topic, a packet past the maximum size, a second CONNECT, a flood without reading). Each attempt
//! records whether the broker closed the connection and with which reason code.

use super::conn::Ctx;
use crate::history::{BadKind, Event};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The kinds, in the order they are tried.
pub const KINDS: [BadKind; 5] = [
    BadKind::Garbage,
    BadKind::WildcardTopic,
    BadKind::Oversized,
    BadKind::SecondConnect,
    BadKind::Flood,
];

/// How long the broker has to close a bad connection.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// How long a flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(2);

/// An MQTT 5 CONNECT with clean start and this client id.
pub fn connect_v5(client_id: &str) -> Vec<u8> {
    let mut body = vec![
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, 0x00,
    ];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    packet(0x10, &body)
}

/// An MQTT 5 QoS 0 PUBLISH of `payload` to `topic` (not validated: a bad topic goes out as is).
pub fn publish_v5(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.push(0x00);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    push_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// The reason code of the first CONNACK or DISCONNECT in `buf` (MQTT 5 layout), if there is one.
pub fn reason_in(buf: &[u8]) -> Option<u8> {
    match buf {
        [0x20, _, _, code, ..] => Some(*code),
        [0xE0, 0, ..] => Some(0),
        [0xE0, _, code, ..] => Some(*code),
        _ => None,
    }
}

/// Reads until the broker closes the connection or `within` passes; what was read and whether it closed.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => {
                if got.len() < 64 * 1024 {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Err(_) => return (got, false),
        }
    }
}

/// Reads the CONNACK of a good CONNECT; false if it did not come.
async fn connack(s: &mut TcpStream) -> bool {
    let mut head = [0u8; 2];
    if tokio::time::timeout(CLOSE_WITHIN, s.read_exact(&mut head))
        .await
        .is_err()
        || head[0] != 0x20
    {
        return false;
    }
    let mut rest = vec![0u8; usize::from(head[1])];
    matches!(
        tokio::time::timeout(CLOSE_WITHIN, s.read_exact(&mut rest)).await,
        Ok(Ok(_))
    )
}

/// One attempt of `kind` against `node`; recorded.
pub async fn attempt(ctx: &Ctx, node: u8, kind: BadKind, n: u64) {
    let id = format!("bad-{n}");
    let start = ctx.rec.now();
    let addr = ctx.targets.nodes[usize::from(node) - 1];
    let Ok(Ok(mut s)) = tokio::time::timeout(CLOSE_WITHIN, TcpStream::connect(addr)).await else {
        return; // the node is down: nothing was tried
    };
    let (closed, code) = match kind {
        BadKind::Garbage => {
            let _ = s
                .write_all(&[0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
                .await;
            let (got, closed) = until_closed(&mut s, CLOSE_WITHIN).await;
            (closed, reason_in(&got))
        }
        BadKind::Flood => {
            if s.write_all(&connect_v5(&id)).await.is_err() || !connack(&mut s).await {
                return;
            }
            let one = publish_v5("chaos/flood/x", &[0u8; 256]);
            let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
            let end = Instant::now() + FLOOD_FOR;
            let mut closed = false;
            while Instant::now() < end {
                match tokio::time::timeout_at(end, s.write_all(&burst)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            (closed, None)
        }
        BadKind::WildcardTopic | BadKind::Oversized | BadKind::SecondConnect => {
            if s.write_all(&connect_v5(&id)).await.is_err() || !connack(&mut s).await {
                return;
            }
            let bad = match kind {
                BadKind::WildcardTopic => publish_v5("chaos/+/bad", b"x"),
                BadKind::SecondConnect => connect_v5(&id),
                _ => {
                    // A PUBLISH announcing 8 MiB, with a few bytes of it: the broker must refuse it from
                    // the fixed header, without waiting for the rest (and its DISCONNECT must not be
                    // lost to a reset caused by unread data).
                    let mut p = vec![0x30];
                    push_varint(&mut p, 8 * 1024 * 1024);
                    p.extend_from_slice(&[0u8; 16]);
                    p
                }
            };
            let _ = s.write_all(&bad).await;
            let (got, closed) = until_closed(&mut s, CLOSE_WITHIN).await;
            (closed, reason_in(&got))
        }
    };
    ctx.rec.record(Event::BadClient {
        client: id,
        node,
        kind,
        closed,
        code,
        ms: ctx.rec.now() - start,
    });
}

/// Tries one bad client every `period`, kinds and nodes in turn, until the workload drains.
pub async fn run(ctx: Ctx, period: Duration) {
    let mut n = 0u64;
    while !ctx.quiet() {
        let kind = KINDS[(n as usize) % KINDS.len()];
        let node = (n % ctx.targets.nodes.len() as u64) as u8 + 1;
        n += 1;
        attempt(&ctx, node, kind, n).await;
        if ctx.pause(period).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_framed_with_their_length() {
        let c = connect_v5("ab");
        assert_eq!(c[0], 0x10);
        assert_eq!(usize::from(c[1]), c.len() - 2);
        let mut v = Vec::new();
        push_varint(&mut v, 8 * 1024 * 1024);
        assert_eq!(v, vec![0x80, 0x80, 0x80, 0x04]);
        assert_eq!(reason_in(&[0xE0, 1, 0x95]), Some(0x95));
        assert_eq!(reason_in(&[0x20, 3, 0, 0x82, 0]), Some(0x82));
        assert_eq!(reason_in(&[0xE0, 0]), Some(0));
        assert_eq!(reason_in(&[]), None);
    }
}
