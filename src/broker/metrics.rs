//! Every broker metric, registered in one place with its HELP text (Prometheus text format, prefix `cicada_`).
//! `$SYS/broker/...` reads the same counters, so the two never disagree.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The broker's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub connack: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub sessions_online: IntGauge,
    pub sessions_offline: IntGauge,
    pub subscriptions: IntGauge,
    pub retained: IntGauge,
    pub messages_received: IntCounterVec,
    pub messages_sent: IntCounterVec,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub dropped: IntCounterVec,
    pub queued_messages: IntGauge,
    pub queued_bytes: IntGauge,
    pub inflight: IntGauge,
    pub delivery_latency: Histogram,
    pub reads_paused: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub acl_denied: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    pub ws_handshake_failures: IntCounter,
    pub rate_limited: IntCounterVec,
    pub proxy_header_failures: IntCounter,
    pub jwt_logins: IntCounter,
    pub jwt_expired_disconnects: IntCounter,
    pub inbox: IntCounterVec,
    /// `inbox{op="appended"|"failed"}`, resolved once: they count on the per-message path.
    pub inbox_appended: IntCounter,
    pub inbox_failed: IntCounter,
    pub ack_hold: Histogram,
    /// Wills of connections on a down node that the cluster published, and that node's sessions it expired.
    pub wills_fired_by_cluster: IntCounter,
    pub sessions_expired_by_cluster: IntCounter,
    /// Read barriers a QoS 1/2 publish waited for because this node's state was not fresh, by outcome.
    pub read_barriers: IntCounterVec,
    /// Retained reads for SUBSCRIBEs in a cluster, by result (`fresh`, `deferred`).
    pub retained_reads: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid histogram");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::register();
        // Labelled series exist from the start, so dashboards and alerts see zeros instead of gaps.
        for q in ["0", "1", "2"] {
            m.messages_received.with_label_values(&[q]);
            m.messages_sent.with_label_values(&[q]);
        }
        for reason in [
            "queue_full",
            "offline_qos0",
            "expired",
            "too_large_for_client",
            "no_subscribers",
            "message_size_limit",
            "payload_format_invalid",
            "sys_topic",
            "no_group_member",
            "acl_denied",
            "store_unavailable",
        ] {
            m.dropped.with_label_values(&[reason]);
        }
        for op in ["appended", "removed", "paged", "failed"] {
            m.inbox.with_label_values(&[op]);
        }
        for cause in ["credit", "memory_watermark", "writer", "inflight"] {
            m.reads_paused.with_label_values(&[cause]);
        }
        for reason in [
            "bad_credentials",
            "anonymous_not_allowed",
            "jwt_invalid",
            "jwt_expired",
        ] {
            m.auth_failures.with_label_values(&[reason]);
        }
        for limit in ["client_messages", "client_bytes", "listener_connections"] {
            m.rate_limited.with_label_values(&[limit]);
        }
        for action in ["publish", "subscribe", "deliver", "will"] {
            m.acl_denied.with_label_values(&[action]);
        }
        m
    }

    fn register() -> Metrics {
        let r = Registry::new();
        let delivery_latency = histogram(
            &r,
            "cicada_delivery_latency_seconds",
            "Time from a PUBLISH arriving to its copy being handed to a subscriber's socket writer.",
            &[
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0,
            ],
        );
        let ack_hold = histogram(
            &r,
            "cicada_puback_hold_seconds",
            "Time a publisher's PUBACK/PUBREC waited for persistent sessions' copies to be committed.",
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        );
        let inbox = counter_vec(
            &r,
            "cicada_inbox_messages_total",
            "QoS 1/2 copies for persistent sessions in the store: appended, removed (acknowledged or gone), paged (read back from the store into memory), failed to append (or ignored by the store).",
            &["op"],
        );
        Metrics {
            connections: gauge(
                &r,
                "cicada_connections",
                "MQTT connections open now (after CONNACK).",
            ),
            connections_total: counter(
                &r,
                "cicada_connections_total",
                "MQTT connections accepted since start.",
            ),
            connack: counter_vec(
                &r,
                "cicada_connack_total",
                "CONNACK sent, by reason code.",
                &["code"],
            ),
            disconnects: counter_vec(
                &r,
                "cicada_disconnects_total",
                "Connections ended, by reason.",
                &["reason"],
            ),
            sessions_online: gauge(
                &r,
                "cicada_sessions_online",
                "Sessions with a connected client.",
            ),
            sessions_offline: gauge(
                &r,
                "cicada_sessions_offline",
                "Persistent sessions whose client is away.",
            ),
            subscriptions: gauge(
                &r,
                "cicada_subscriptions",
                "Subscriptions held by all sessions.",
            ),
            retained: gauge(&r, "cicada_retained_messages", "Retained messages stored."),
            messages_received: counter_vec(
                &r,
                "cicada_messages_received_total",
                "PUBLISH received from clients, by QoS.",
                &["qos"],
            ),
            messages_sent: counter_vec(
                &r,
                "cicada_messages_sent_total",
                "PUBLISH sent to clients, by QoS.",
                &["qos"],
            ),
            bytes_received: counter(
                &r,
                "cicada_bytes_received_total",
                "Bytes read from MQTT sockets.",
            ),
            bytes_sent: counter(
                &r,
                "cicada_bytes_sent_total",
                "Bytes written to MQTT sockets.",
            ),
            dropped: counter_vec(
                &r,
                "cicada_messages_dropped_total",
                "Messages not delivered, by reason.",
                &["reason"],
            ),
            queued_messages: gauge(
                &r,
                "cicada_queued_messages",
                "Messages waiting in session queues.",
            ),
            queued_bytes: gauge(
                &r,
                "cicada_queued_bytes",
                "Payload bytes waiting in session queues.",
            ),
            inflight: gauge(
                &r,
                "cicada_inflight_messages",
                "QoS 1/2 messages sent and not yet acknowledged.",
            ),
            delivery_latency,
            ack_hold,
            inbox_appended: inbox.with_label_values(&["appended"]),
            inbox_failed: inbox.with_label_values(&["failed"]),
            inbox,
            read_barriers: counter_vec(
                &r,
                "cicada_cluster_read_barriers_total",
                "QoS 1/2 publishes that waited for a read barrier (this node had stalled or lost contact with the leader) before matching persistent sessions, by outcome (ok; refused: no leader; taken_over: another node took the client over meanwhile, the message is not acknowledged).",
                &["outcome"],
            ),
            retained_reads: counter_vec(
                &r,
                "cicada_retained_reads_total",
                "SUBSCRIBEs in a cluster whose retained messages were read after a read barrier through the leader, by result: fresh (the barrier completed within the hold window), deferred (no barrier could complete in time, e.g. no leader: the retained messages are sent once one does).",
                &["result"],
            ),
            wills_fired_by_cluster: counter(
                &r,
                "cicada_cluster_wills_fired_total",
                "Wills of connections on a node counted as down (or on this node before it restarted) that the cluster published.",
            ),
            sessions_expired_by_cluster: counter(
                &r,
                "cicada_cluster_sessions_expired_total",
                "Sessions of a node counted as down whose expiry ran out while it was down.",
            ),
            reads_paused: counter_vec(
                &r,
                "cicada_reads_paused_total",
                "Times a connection's reads paused for backpressure, by cause.",
                &["cause"],
            ),
            auth_failures: counter_vec(
                &r,
                "cicada_auth_failures_total",
                "CONNECTs refused for their credentials, by reason.",
                &["reason"],
            ),
            jwt_logins: counter(&r, "cicada_jwt_logins_total", "Connections accepted with a JWT as the password."),
            jwt_expired_disconnects: counter(&r, "cicada_jwt_expired_disconnects_total", "Connections closed because their JWT expired (v5: DISCONNECT 0x87)."),
            tls_handshake_failures: counter(&r, "cicada_tls_handshake_failures_total", "TLS handshakes that failed or timed out (bad or missing client certificates included)."),
            proxy_header_failures: counter(&r, "cicada_proxy_header_failures_total", "Connections closed for a missing or malformed PROXY protocol header."),
            rate_limited: counter_vec(&r, "cicada_rate_limited_total", "Times a rate limit held a client or listener back, by limit.", &["limit"]),
            ws_handshake_failures: counter(&r, "cicada_ws_handshake_failures_total", "WebSocket upgrades refused or failed (wrong path, no MQTT subprotocol, timeouts)."),
            acl_denied: counter_vec(
                &r,
                "cicada_acl_denied_total",
                "Actions the ACL refused, by action.",
                &["action"],
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    pub fn qos_label(qos: crate::protocol::QoS) -> &'static str {
        match qos {
            crate::protocol::QoS::AtMostOnce => "0",
            crate::protocol::QoS::AtLeastOnce => "1",
            crate::protocol::QoS::ExactlyOnce => "2",
        }
    }

    /// Sum of a counter vector over its labels (for `$SYS`).
    pub fn total(c: &IntCounterVec) -> u64 {
        ["0", "1", "2"]
            .iter()
            .map(|q| c.with_label_values(&[q]).get())
            .sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
