//! A connection's write task: takes everything queued for the socket, encodes it into one buffer and writes
//! it with one call (no syscall per message under load), assigning outbound topic aliases on the way.

use super::conn::{ConnShared, Outbound};
use super::session::SessionMsg;
use super::Context;
use crate::protocol::{encode, encode_publish, Packet, ProtocolVersion, Publish};
use bytes::BytesMut;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most packets taken from the queue into one write.
const BATCH: usize = 256;

/// Outbound topic aliases (v5): the first `max` distinct topics get an alias; later sends of such a topic
/// carry only the alias and an empty name.
struct Aliases {
    max: u16,
    map: HashMap<String, u16>,
}

impl Aliases {
    fn apply(&mut self, p: &mut Publish) {
        if self.max == 0 {
            return;
        }
        if let Some(&alias) = self.map.get(&p.topic) {
            p.topic.clear();
            p.properties.topic_alias = Some(alias);
        } else if self.map.len() < usize::from(self.max) {
            let alias = self.map.len() as u16 + 1;
            self.map.insert(p.topic.clone(), alias);
            p.properties.topic_alias = Some(alias);
        }
    }
}

pub struct Writer<W> {
    pub io: W,
    pub rx: mpsc::UnboundedReceiver<Outbound>,
    pub shared: Arc<ConnShared>,
    pub version: ProtocolVersion,
    /// The client's Topic Alias Maximum.
    pub topic_alias_max: u16,
    /// Cancelled when the writer stops, so the reader stops too.
    pub cancel: CancellationToken,
    pub ctx: Arc<Context>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Runs until a Close, a write error, or every sender is gone. `session` is told when the queue drains.
    pub async fn run(mut self, session: ActorRef<SessionMsg>) {
        let mut aliases = Aliases {
            max: if self.version.is_v5() {
                self.topic_alias_max
            } else {
                0
            },
            map: HashMap::new(),
        };
        // Allocated on first use and kept while busy: idle connections hold (almost) nothing.
        let mut buf = BytesMut::new();
        let mut batch = Vec::new();
        'outer: loop {
            tokio::select! {
                n = self.rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                }
                _ = self.cancel.cancelled() => break,
            }
            let taken = batch.len();
            let mut close = false;
            for out in batch.drain(..) {
                let result = match out {
                    Outbound::Packet(p) => encode(&p, self.version, &mut buf).map(|_| ()),
                    Outbound::Publish(mut p) => {
                        aliases.apply(&mut p);
                        encode_publish(&p, self.version, &mut buf).map(|_| ())
                    }
                    Outbound::Close(d) => {
                        if let Some(d) = d {
                            let _ = encode(&Packet::Disconnect(*d), self.version, &mut buf);
                        }
                        close = true;
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "cannot encode an outbound packet; dropped");
                }
                if close {
                    break;
                }
            }
            let len = buf.len();
            if len > 0 {
                // Flush too: TLS and WebSocket streams hold data until flushed (a no-op for TCP).
                let written = tokio::select! {
                    r = async { self.io.write_all(&buf).await?; self.io.flush().await } => r,
                    _ = self.cancel.cancelled() => break 'outer,
                };
                if let Err(e) = written {
                    tracing::debug!(error = %e, "write failed");
                    break 'outer;
                }
                self.ctx.metrics.bytes_sent.inc_by(len as u64);
                buf.clear();
                if buf.capacity() > 1024 * 1024 || self.rx.is_empty() {
                    buf = BytesMut::new();
                }
            }
            // SeqCst with the swap below: see `SessionState::flush`.
            self.shared.pending.fetch_sub(taken, Ordering::SeqCst);
            self.shared.drained.notify_waiters();
            if close {
                let _ = self.io.flush().await;
                let _ = self.io.shutdown().await;
                break;
            }
            if self.shared.session_waiting.swap(false, Ordering::SeqCst) {
                let _ = session.cast(SessionMsg::Drained);
            }
        }
        self.cancel.cancel();
    }
}
