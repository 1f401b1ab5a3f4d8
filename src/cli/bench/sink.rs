//! `bench sink`: accepts MQTT connections and acknowledges everything (CONNACK, SUBACK, PUBACK, PUBREC,
//! PUBCOMP, PINGRESP) without routing. Publishing to it measures what the load generator alone can do.

use super::SinkArgs;
use crate::cli::CliError;
use crate::protocol::{
    self, ConnAck, Decoder, Packet, ProtocolVersion, PubAck, ReasonCode, SubAck,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest packet the sink accepts.
const MAX_PACKET: usize = 1 << 20;

/// Listens until interrupted.
pub async fn run(args: SinkArgs) -> Result<(), CliError> {
    let listener = TcpListener::bind(&args.bind)
        .await
        .map_err(|e| CliError::failure(format!("bind {}: {e}", args.bind)))?;
    eprintln!(
        "sink listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve(stream));
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut decoder = Decoder::new(ProtocolVersion::V311, MAX_PACKET);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    loop {
        match stream.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let packet = match decoder.decode(&mut rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => return,
            };
            let reply = match packet {
                Packet::Connect(_) => Some(Packet::ConnAck(ConnAck::default())),
                Packet::Subscribe(s) => Some(Packet::SubAck(SubAck {
                    pkid: s.pkid,
                    properties: Default::default(),
                    reasons: s
                        .filters
                        .iter()
                        .map(|f| ReasonCode(f.options.qos as u8))
                        .collect(),
                })),
                Packet::Publish(p) => match p.qos {
                    protocol::QoS::AtMostOnce => None,
                    protocol::QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.pkid))),
                    protocol::QoS::ExactlyOnce => Some(Packet::PubRec(PubAck::new(p.pkid))),
                },
                Packet::PubRel(r) => Some(Packet::PubComp(PubAck::new(r.pkid))),
                Packet::PingReq => Some(Packet::PingResp),
                Packet::Disconnect(_) => return,
                _ => None,
            };
            if let Some(reply) = reply {
                if protocol::encode(&reply, decoder.version, &mut wbuf).is_err() {
                    return;
                }
            }
        }
        if !wbuf.is_empty() {
            if stream.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
    }
}
