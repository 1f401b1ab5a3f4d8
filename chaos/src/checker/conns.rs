//! The connections of a run, read once from the CONNECT records and shared by the promises that need to
//! know which client a connection belongs to and how it started (delivery, sessions, single connection).

use crate::history::{Event, Outcome, Record, Via};
use std::collections::HashMap;

/// One CONNECT and its outcome.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connect<'a> {
    /// When the outcome came (for a success: when the CONNACK was read).
    pub t: u64,
    pub client: &'a str,
    pub conn: u64,
    pub via: Via,
    pub clean_start: bool,
    pub sent: u64,
    pub outcome: &'a Outcome,
    pub session_present: Option<bool>,
}

impl Connect<'_> {
    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// Whether a clean start may have discarded the client's session: it succeeded, or its outcome is
    /// unknown (a CONNECT that timed out or whose connection failed may have been read by the broker). A
    /// refused one did not.
    pub fn may_have_cleaned(&self) -> bool {
        self.clean_start && !matches!(self.outcome, Outcome::Refused { .. })
    }
}

/// Every CONNECT of a history, by connection and by client.
pub(crate) struct Connects<'a> {
    by_conn: HashMap<u64, Connect<'a>>,
    by_client: HashMap<&'a str, Vec<Connect<'a>>>,
}

impl<'a> Connects<'a> {
    /// Reads the CONNECT records of `records`. A connection number recorded twice (a hand-edited history)
    /// keeps its first record.
    pub fn new(records: &'a [Record]) -> Connects<'a> {
        let mut by_conn = HashMap::new();
        let mut by_client: HashMap<&str, Vec<Connect>> = HashMap::new();
        for r in records {
            if let Event::Connect {
                client,
                conn,
                via,
                clean_start,
                sent,
                outcome,
                session_present,
            } = &r.event
            {
                let c = Connect {
                    t: r.t,
                    client,
                    conn: *conn,
                    via: *via,
                    clean_start: *clean_start,
                    sent: *sent,
                    outcome,
                    session_present: *session_present,
                };
                by_conn.entry(c.conn).or_insert(c);
                by_client.entry(c.client).or_default().push(c);
            }
        }
        for list in by_client.values_mut() {
            list.sort_by_key(|c| (c.t, c.conn));
        }
        Connects { by_conn, by_client }
    }

    /// The CONNECT that opened connection `conn`.
    pub fn get(&self, conn: u64) -> Option<&Connect<'a>> {
        self.by_conn.get(&conn)
    }

    /// The CONNECTs of `client` (every outcome), ordered by the time of their outcome.
    pub fn of_client(&self, client: &str) -> &[Connect<'a>] {
        self.by_client.get(client).map_or(&[], Vec::as_slice)
    }

    /// Each client's CONNECTs (every outcome), ordered by the time of their outcome.
    pub fn by_client(&self) -> impl Iterator<Item = (&'a str, &[Connect<'a>])> + '_ {
        self.by_client.iter().map(|(k, v)| (*k, v.as_slice()))
    }
}

/// How a violation names where a client connected.
pub(crate) fn via(v: Via) -> String {
    match v {
        Via::Node(n) => format!("node {n}"),
        Via::Haproxy => "HAProxy".to_string(),
    }
}
