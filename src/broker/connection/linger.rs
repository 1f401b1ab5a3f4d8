//! A close the client can read: after the broker's last packet (a DISCONNECT with a reason, a refusing
//! CONNACK) and the shutdown of its write side, the connection keeps reading and discarding what the client
//! still sends, until the client closes or [`LINGER`] passes. Closing at once with unread bytes in the
//! socket makes the kernel reset the connection, and a client still sending may never read the reason.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a closing connection reads and discards at most.
pub const LINGER: Duration = Duration::from_secs(2);

/// Reads and discards until the client closes, a read fails, or `LINGER` passes.
pub async fn discard_until_closed<R: AsyncRead + Unpin>(rd: &mut R) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, rd.read(&mut scratch)).await {
        if n == 0 {
            break;
        }
    }
}
