//! An in-process Cicada broker per test on ephemeral loopback ports, and a raw MQTT peer that sends exactly
//! the bytes a test wants and reads packets back with bounded waits.

use super::WAIT;
use bytes::BytesMut;
use cicada::broker::Broker;
use cicada::client::{Client, ClientOptions, Events};
use cicada::config::Config;
use cicada::protocol::{
    encode, Connect, Decoder, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A broker on 127.0.0.1 with ephemeral MQTT and HTTP ports.
pub struct TestBroker {
    pub broker: Option<Broker>,
    /// The broker's data directory (its store), removed with the test.
    pub data: tempfile::TempDir,
    pub addr: SocketAddr,
    pub http: SocketAddr,
}

/// The test configuration: loopback, port 0, no $SYS noise unless a test asks for it.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.listeners[0].bind = "127.0.0.1:0".into();
    c.http.bind = "127.0.0.1:0".into();
    c.mqtt.sys_interval = 0;
    c
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::with(|_| {}).await
    }

    pub async fn with(f: impl FnOnce(&mut Config)) -> TestBroker {
        let mut c = test_config();
        let data = tempfile::tempdir().expect("temp dir");
        c.data_dir = data.path().to_path_buf();
        f(&mut c);
        let broker = Broker::start(c).await.expect("broker starts");
        TestBroker {
            addr: broker.mqtt_addrs[0],
            http: broker.http_addr,
            broker: Some(broker),
            data,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn options(&self, id: &str, v: ProtocolVersion) -> ClientOptions {
        ClientOptions::new("127.0.0.1", self.port(), id).version(v)
    }

    pub async fn client(&self, id: &str, v: ProtocolVersion) -> (Client, Events) {
        let (c, e, _) = Client::connect(self.options(id, v))
            .await
            .expect("connect to cicada");
        (c, e)
    }

    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr).await
    }

    /// GET a path from the HTTP endpoint: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_request(self.http, "GET", path).await
    }

    pub async fn shutdown(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }
}

/// A minimal HTTP/1.1 request over a raw socket.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to HTTP");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("HTTP answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A raw MQTT peer.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub decoder: Decoder,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw::from_stream(stream)
    }

    /// A raw peer on a socket the test made (e.g. with a small receive buffer).
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(ProtocolVersion::V311, 1 << 24),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends a packet; `false` when the connection is gone (a test that kills the broker expects that).
    pub async fn try_send(&mut self, p: &Packet) -> bool {
        let mut out = BytesMut::new();
        encode(p, self.decoder.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.is_ok()
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, self.decoder.version, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    /// Sends CONNECT and returns the CONNACK's reason (and session present).
    pub async fn handshake(&mut self, c: Connect) -> (ReasonCode, bool, Properties) {
        self.decoder.version = c.protocol;
        self.send(&Packet::Connect(Box::new(c))).await;
        match self.recv().await {
            Some(Packet::ConnAck(a)) => (a.reason, a.session_present, a.properties),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packet; `None` when the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a packet or a close in time")
    }

    /// The next packet, or `None` when the broker closed the connection; no time limit (the caller bounds it).
    pub async fn recv_or_close(&mut self) -> Option<Packet> {
        self.recv_inner().await
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.buf)
                .expect("the broker sends valid packets")
            {
                return Some(p);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the broker closes; returns the DISCONNECT reason if one came first.
    pub async fn expect_close(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        while let Some(p) = self.recv().await {
            if let Packet::Disconnect(d) = p {
                reason = Some(d.reason);
            }
        }
        reason
    }

    pub async fn subscribe(&mut self, pkid: u16, filter: &str, qos: QoS) -> Vec<ReasonCode> {
        self.send(&Packet::Subscribe(Subscribe {
            pkid,
            properties: Properties::default(),
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
        }))
        .await;
        loop {
            match self.recv().await {
                Some(Packet::SubAck(a)) if a.pkid == pkid => return a.reasons,
                Some(_) => continue,
                None => panic!("closed before SUBACK"),
            }
        }
    }
}

/// A CONNECT with the given id and level, clean, keep-alive 60.
pub fn connect(id: &str, v: ProtocolVersion) -> Connect {
    Connect {
        protocol: v,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }
}
