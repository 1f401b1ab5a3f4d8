//! PROXY protocol v1 and v2 (HAProxy's), so that the client address behind a load balancer is the real one.
//! A listener with `proxy_protocol = true` requires the header on every connection: without it anyone could
//! claim any address. Pure parser; the listener peeks the socket, parses, then consumes exactly the header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use thiserror::Error;

/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included (spec 2.1).
const V1_MAX: usize = 107;
/// Longest v2 header we accept (addresses plus TLVs); anything longer is refused.
pub const V2_MAX: usize = 16 + 512;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// A parsed header: the original source address (None for LOCAL / UNKNOWN: keep the socket's) and its
/// length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub source: Option<SocketAddr>,
    pub len: usize,
}

/// Parses a header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if V2_SIG.starts_with(&buf[..buf.len().min(12)]) && buf[0] == b'\r' {
        return parse_v2(buf);
    }
    if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(ProxyError::Malformed("v1 line too long"));
    }
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyError::Malformed("v1 line is not text"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let source = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source address"))?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Malformed("v1 address family"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source port"))?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyError::Malformed("v1 fields")),
    };
    Ok(Some(Header { source, len }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    let fam = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let a = &buf[16..len];
    let source = match (ver_cmd & 0x0F, fam) {
        (0x0, _) => None, // LOCAL: the proxy's own connection (health checks)
        (0x1, 0x11) if a.len() >= 12 => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            u16::from_be_bytes([a[8], a[9]]),
        )),
        (0x1, 0x21) if a.len() >= 36 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        (0x1, 0x00) => None, // UNSPEC
        (0x1, _) => return Err(ProxyError::Malformed("v2 address family or length")),
        _ => return Err(ProxyError::Malformed("v2 command")),
    };
    Ok(Some(Header { source, len }))
}

/// Peeks until a whole header is visible, then consumes exactly it. Returns the client's address.
pub async fn read_header(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; V2_MAX];
    loop {
        let n = stream
            .peek(&mut buf)
            .await
            .map_err(|_| ProxyError::Missing)?;
        if n == 0 {
            return Err(ProxyError::Missing);
        }
        if let Some(h) = parse(&buf[..n])? {
            let mut header = vec![0u8; h.len];
            stream
                .read_exact(&mut header)
                .await
                .map_err(|_| ProxyError::Missing)?;
            return Ok(h.source.unwrap_or(peer));
        }
        if n == buf.len() {
            return Err(ProxyError::Malformed("header too long"));
        }
        // Not all of it has arrived (rare: HAProxy sends it in one segment). Peeked bytes keep the socket
        // readable, so readiness cannot tell when more came: look again shortly (bounded by the caller).
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, addr: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend((addr.len() as u16).to_be_bytes());
        b.extend(addr);
        b
    }

    #[test]
    fn v1_lines() {
        let h = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 4000 1883\r\n\x10")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("203.0.113.7:4000".parse().unwrap()));
        assert_eq!(h.len, 43);
        let h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 5000 1883\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:5000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().source, None);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None, "incomplete");
        assert!(
            parse(b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n").is_err(),
            "family mismatch"
        );
        assert!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n").is_err(),
            "bad port"
        );
        assert!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)).is_err(),
            "too long"
        );
    }

    #[test]
    fn v2_headers() {
        let mut a = vec![198, 51, 100, 9, 10, 0, 0, 1];
        a.extend(4321u16.to_be_bytes());
        a.extend(1883u16.to_be_bytes());
        let b = v2(1, 0x11, &a);
        let h = parse(&b).unwrap().unwrap();
        assert_eq!(
            (h.source, h.len),
            (Some("198.51.100.9:4321".parse().unwrap()), 28)
        );
        assert_eq!(parse(&b[..20]).unwrap(), None);
        assert_eq!(
            parse(&v2(0, 0, &[])).unwrap().unwrap().source,
            None,
            "LOCAL"
        );
        let mut a6 = vec![0u8; 36];
        a6[15] = 1;
        a6[32..34].copy_from_slice(&80u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &a6)).unwrap().unwrap().source,
            Some("[::1]:80".parse().unwrap())
        );
        assert!(parse(&v2(1, 0x11, &[1, 2])).is_err(), "short address");
        assert!(parse(&v2(5, 0x11, &a)).is_err(), "unknown command");
    }

    #[test]
    fn mqtt_without_a_header_is_refused() {
        assert_eq!(parse(&[0x10, 0x0c, 0, 4]), Err(ProxyError::Missing));
    }
}
