//! `cicada-cluster`: the replicated store. raft-rs's `RawNode` driven by one ractor actor ([`node`]), the raft
//! log and the state machine in sled ([`storage`], [`machine`]), TCP peer links ([`transport`]). It knows
//! nothing of MQTT: the broker proposes opaque commands and implements [`StateMachine`].
//!
//! A single node is a group of one; the same code runs three or five.

pub mod contact;
pub mod counter;
pub mod crash;
mod entry;
mod error;
pub mod freeze;
mod legacy;
pub mod logger;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod snapshot;
pub mod storage;
pub mod transport;
pub mod view;

pub use crash::{CrashAt, CrashPoint};
pub use error::{ChangeRefused, ClusterError, StartError, StorageError};
pub use machine::{StateMachine, Txn};
pub use transport::PeerTls;
pub use view::{Peers, View};

use bytes::Bytes;
use node::{Node, NodeArgs, NodeMsg, ToActor};
use ractor::{Actor, ActorRef};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, Mutex};

/// When the raft log is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// sled flush (fsync) after every Ready, before messages that depend on it leave and before clients
    /// are answered: the safe default.
    Always,
    /// sled's background flush (every 500 ms): faster; a node crash can lose its last writes, which raft
    /// repairs from the other nodes, but a single node can lose acknowledged commands.
    Interval,
}

/// How a node starts.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// Nodes with another cluster id are refused on the peer link.
    pub cluster_id: String,
    /// Peer link listen address (`127.0.0.1:0` picks a port).
    pub listen: String,
    /// The address other nodes dial (defaults to the bound listen address).
    pub advertise: Option<String>,
    /// The initial voters and their peer addresses, this node included. Ignored when the log exists.
    pub peers: HashMap<u64, String>,
    /// `true` for a node added later: it starts with no voters and waits for the leader.
    pub join: bool,
    pub data_dir: PathBuf,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub fsync: Fsync,
    /// sled's page cache in bytes (sled's own default is 1 GiB; what is not cached is read from disk).
    pub cache_capacity: u64,
    /// Log entries kept before compaction (followers further behind get a snapshot).
    pub snapshot_interval: u64,
    /// The leader keeps the entries a follower heard from within this window still needs (a restart costs a
    /// log catch-up, not a snapshot)...
    pub log_retention: Duration,
    /// ...as long as the log after the applied index stays under this many bytes.
    pub max_log_bytes: u64,
    /// Commands per raft entry at most.
    pub max_batch: usize,
    /// Bytes of commands per raft entry at most (a single larger command is an entry of its own).
    pub max_batch_bytes: usize,
    /// Bytes of uncommitted entries the leader holds before it refuses proposals
    /// ([`ClusterError::Busy`]) instead of growing its memory.
    pub max_uncommitted_bytes: u64,
    /// How long a proposal or read may wait for an answer.
    pub propose_timeout: Duration,
    /// A shared cluster secret every peer link proves in its handshake (HMAC-SHA256 over both sides' nonces).
    /// `None`: links check only the cluster id and node id.
    pub secret: Option<Vec<u8>>,
    /// Largest frame a peer may send after the handshake; a command must be 1 MiB smaller
    /// ([`ClusterError::TooLarge`]). Snapshots travel in 1 MiB chunks.
    pub max_frame_bytes: usize,
    /// A peer link silent this long is dropped and redialled (idle links send pings).
    pub peer_timeout: Duration,
    /// Mutual TLS on peer links (`None`: plain TCP, the cluster secret still proven in the handshake).
    pub tls: Option<transport::PeerTls>,
    /// Test hook for the multi-process crash tests: abort right after a given write. `None` in production.
    pub crash_at: Option<CrashAt>,
}

impl ClusterConfig {
    /// A single node (a group of one) keeping its data in `data_dir`.
    pub fn single(data_dir: impl Into<PathBuf>) -> ClusterConfig {
        let mut peers = HashMap::new();
        peers.insert(1, "127.0.0.1:0".to_string());
        ClusterConfig {
            node_id: 1,
            cluster_id: "cicada".into(),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            peers,
            join: false,
            data_dir: data_dir.into(),
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            fsync: Fsync::Always,
            cache_capacity: 128 << 20,
            snapshot_interval: 10_000,
            log_retention: Duration::from_secs(60),
            max_log_bytes: 256 << 20,
            max_batch: 1024,
            max_batch_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            propose_timeout: Duration::from_secs(5),
            secret: None,
            max_frame_bytes: transport::MAX_FRAME,
            peer_timeout: Duration::from_secs(5),
            tls: None,
            crash_at: None,
        }
    }
}

/// A committed command, as applied on this node.
#[derive(Debug, Clone)]
pub struct Applied {
    pub index: u64,
    pub command: Bytes,
}

/// A membership change (one at a time; raft-rs applies it with joint consensus when needed).
#[derive(Debug, Clone)]
pub enum Membership {
    /// Add a node as a learner (it catches up without voting); `addr` is its peer address.
    AddLearner {
        id: u64,
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        id: u64,
    },
    Remove {
        id: u64,
    },
}

/// What `status()` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// (node, match index), known on the leader only.
    pub peers: Vec<(u64, u64)>,
    /// (member, milliseconds since this node last heard from it; `u64::MAX`: never since it started), for
    /// every other voter and learner. On the leader, which hears from every follower each heartbeat, a long silence
    /// means that node is down or cut off.
    pub silent_ms: Vec<(u64, u64)>,
}

/// A running node of the store.
pub struct Cluster {
    node: ActorRef<NodeMsg>,
    handle: Mutex<Option<tokio::task::JoinHandle<()>>>,
    view: View,
    applied: broadcast::Sender<Applied>,
    app_frames: Mutex<Option<mpsc::Receiver<(u64, Bytes)>>>,
    transport: transport::Transport,
    peer_addr: SocketAddr,
    timeout: Duration,
    /// The node's view of the leader (the `cicada_raft_leader` gauge), readable without a call.
    leader: prometheus::IntGauge,
    freshness: Arc<contact::Freshness>,
    /// How long a read barrier keeps this node fresh (see [`Cluster::fresh`]).
    lease_window: Duration,
}

impl Cluster {
    /// Opens the data directory, replays nothing twice (the applied index is stored with the state), and
    /// starts the node, its peer links and its ticks.
    pub async fn start(
        config: ClusterConfig,
        machine: impl StateMachine,
        registry: &prometheus::Registry,
    ) -> Result<Cluster, ClusterError> {
        let dir = &config.data_dir;
        let storage_err = |what: &'static str| {
            move |source| StartError::Storage {
                dir: dir.clone(),
                what,
                source,
            }
        };
        let raft_err = |what: &'static str| {
            move |source| StartError::Raft {
                dir: dir.clone(),
                what,
                source: Arc::new(source),
            }
        };
        let db = open_db(&config.data_dir, config.cache_capacity)
            .await
            .map_err(storage_err("cannot open its database"))?;
        let mut voters: Vec<u64> = if config.join {
            Vec::new()
        } else {
            config.peers.keys().copied().collect()
        };
        voters.sort_unstable();
        let bootstrap = storage::Bootstrap {
            voters,
            peers: config
                .peers
                .iter()
                .map(|(id, addr)| (*id, addr.clone()))
                .collect(),
        };
        let (mut storage, view) = storage::SledStorage::open(&db, &bootstrap)
            .map_err(storage_err("cannot open the raft log"))?;
        storage.set_snapshot_source(view::source(&view));
        // Members added at run time are known from the replicated state; the configuration names the rest and
        // wins where both name a node (it says where the node is now).
        let mut peers = view
            .peers()
            .map_err(storage_err("cannot read the peer addresses"))?;
        for (id, addr) in &config.peers {
            peers.insert(*id, addr.clone());
        }
        let applied = view
            .applied()
            .map_err(storage_err("cannot read the applied index"))?;
        let raft_config = raft::Config {
            id: config.node_id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_size: config.max_uncommitted_bytes.max(1 << 20),
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(raft_err("raft configuration"))?;
        let mut raw = raft::RawNode::new(&raft_config, storage, &logger::logger(config.node_id))
            .map_err(raft_err("raft"))?;
        // The only voter need not wait an election timeout: it is the leader at once, so a single node
        // accepts proposals as soon as it has started.
        if raw.store().conf_state().voters == [config.node_id] {
            raw.campaign().map_err(raft_err("raft campaign"))?;
        }
        let listen_err = |source| StartError::Listen {
            addr: config.listen.clone(),
            source: Arc::new(source),
        };
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(listen_err)?;
        let peer_addr = listener.local_addr().map_err(listen_err)?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| peer_addr.to_string());
        let metrics = metrics::Metrics::new(registry);
        let leader = metrics.leader.clone();
        let (applied_tx, _) = broadcast::channel(4096);
        let (app_tx, app_rx) = mpsc::channel(256);
        // The actor needs the transport and the transport routes into the actor: start the actor with a
        // transport whose inbound side forwards to it once it exists.
        let (ref_tx, ref_rx) = tokio::sync::oneshot::channel::<ActorRef<NodeMsg>>();
        let relay = Arc::new(Relay::new(ref_rx));
        let snapshots = snapshot::Snapshots::new(view.clone(), metrics.clone());
        let transport = transport::Transport::start(
            transport::Options {
                me: config.node_id,
                cluster_id: config.cluster_id.clone(),
                advertise,
                secret: config.secret.as_deref().map(transport::Secret::new),
                max_frame: config.max_frame_bytes.max(1 << 20),
                peer_timeout: config.peer_timeout.max(Duration::from_millis(300)),
                tls: config.tls.clone(),
            },
            listener,
            &peers,
            relay.clone(),
            app_tx,
            snapshots.clone(),
            metrics.clone(),
        );
        snapshots.set_transport(&transport);
        // The machine builds its in-memory index from the stored state before raft replays anything after it.
        let mut machine = machine;
        machine.restored(&view);
        let freshness = Arc::new(contact::Freshness::default());
        // Half an election timeout: heartbeats go every `heartbeat_ticks`, and freshness runs out well before
        // a follower that lost its leader could see another one elected.
        let lease_window = config.tick * (config.election_ticks as u32 / 2).max(1);
        let args = NodeArgs {
            raw,
            db,
            view: view.clone(),
            machine: Box::new(machine),
            transport: transport.clone(),
            metrics,
            applied_tx: applied_tx.clone(),
            fsync: config.fsync,
            tick: config.tick,
            max_batch: config.max_batch.max(1),
            max_batch_bytes: config.max_batch_bytes.max(1),
            max_command: node::max_command(config.max_frame_bytes.max(1 << 20)),
            incarnation: node::incarnation()?,
            crash: crash::Crasher::new(config.crash_at),
            snapshots,
            contact_window: lease_window,
            freshness: freshness.clone(),
            snapshot_interval: config.snapshot_interval.max(1),
            log_retention: config.log_retention,
            max_log_bytes: config.max_log_bytes,
            propose_timeout: config.propose_timeout,
        };
        let (node, handle) = Actor::spawn(None, Node, args)
            .await
            .map_err(|e| StartError::Actor(Arc::new(e)))?;
        let _ = ref_tx.send(node.clone());
        Ok(Cluster {
            node,
            handle: Mutex::new(Some(handle)),
            view,
            applied: applied_tx,
            app_frames: Mutex::new(Some(app_rx)),
            transport,
            peer_addr,
            timeout: config.propose_timeout + Duration::from_secs(1),
            leader,
            freshness,
            lease_window,
        })
    }

    /// How long after a read barrier was asked this node counts as fresh. Every node of a cluster runs
    /// with the same tick and election timeout, so a node that last asked before a command committed at
    /// `t` is no longer fresh after `t` + this (clocks that run at about the same rate), unless it
    /// applied that command.
    pub fn lease_window(&self) -> Duration {
        self.lease_window
    }

    /// Proposes a command; the answer is the state machine's result once the command is committed and
    /// applied on this node. Followers forward to the leader.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ClusterError> {
        self.call(|r| NodeMsg::Propose(command, r)).await?
    }

    /// Like [`propose`](Self::propose), but the command is queued before this returns: commands submitted one
    /// after another from one task are proposed (and so committed and applied) in that order, whoever awaits
    /// the returned futures and when.
    pub fn submit(
        &self,
        command: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, ClusterError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.node.cast(NodeMsg::Propose(command, tx.into()));
        let timeout = self.timeout;
        async move {
            sent.map_err(|_| ClusterError::Stopped)?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ClusterError::Stopped),
                Err(_) => Err(ClusterError::Timeout),
            }
        }
    }

    /// A read barrier: returns once this node has applied everything committed when it was called.
    pub async fn read_index(&self) -> Result<u64, ClusterError> {
        self.call(NodeMsg::ReadIndex).await?
    }

    pub async fn status(&self) -> Result<NodeStatus, ClusterError> {
        self.call(NodeMsg::Status).await
    }

    pub async fn change_membership(&self, change: Membership) -> Result<(), ClusterError> {
        self.call(|r| NodeMsg::Change(change, r)).await?
    }

    pub fn transfer_leader(&self, to: u64) {
        let _ = self.node.cast(NodeMsg::TransferLeader(to));
    }

    /// Commands as they are applied on this node.
    pub fn applied(&self) -> broadcast::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// The applied state (local reads).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether this node's applied state may be decided on without asking the leader: a read barrier asked
    /// within the last half election timeout completed (the node actor asks for one in the background every
    /// quarter; see [`contact`]). Otherwise a [`Cluster::read_index`] first. Without waiting for the actor.
    pub fn fresh(&self) -> bool {
        self.freshness.fresh()
    }

    /// The leader this node knows of (0: none), without waiting for the actor.
    pub fn leader(&self) -> u64 {
        self.leader.get().max(0) as u64
    }

    /// The peer link's bound address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Whether the application lane to a peer is connected now.
    pub fn app_link_up(&self, to: u64) -> bool {
        self.transport.app_link_up(to)
    }

    /// Sends an opaque frame to a peer on the application lane, waiting while the lane is full.
    pub async fn send_app(&self, to: u64, frame: Bytes) -> Result<(), transport::AppSendError> {
        self.transport.send_app(to, frame).await
    }

    /// Sends an opaque frame to a peer if the application lane has room.
    pub fn try_send_app(&self, to: u64, frame: Bytes) -> Result<(), transport::AppSendError> {
        self.transport.try_send_app(to, frame)
    }

    /// The frames peers send with [`Cluster::send_app`] (once).
    pub async fn take_app_frames(&self) -> Option<mpsc::Receiver<(u64, Bytes)>> {
        self.app_frames.lock().await.take()
    }

    /// Stops the node: peer links close, sled is flushed and the data directory released.
    pub async fn shutdown(&self) {
        self.node.stop(None);
        if let Some(h) = self.handle.lock().await.take() {
            let _ = h.await;
        }
        self.transport.shutdown();
    }

    async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<T>) -> NodeMsg,
    ) -> Result<T, ClusterError> {
        match self.node.call(msg, Some(self.timeout)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            Ok(ractor::rpc::CallResult::Timeout) => Err(ClusterError::Timeout),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(ClusterError::Stopped),
        }
    }
}

/// How long [`open_db`] waits for a data directory's lock before it reports the directory as in use.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens sled, waiting for its directory lock when another holder is letting go of it.
///
/// sled 0.34 releases the lock from a background thread some time after the last handle is dropped (sled
/// issues 1234 and 1289), so a node stopped and started again in the same process, or a process restarted
/// right after the previous one exited, can find the lock still held for a few milliseconds. A directory that
/// stays locked for [`LOCK_WAIT`] belongs to another running node: that is the error.
async fn open_db(dir: &std::path::Path, cache_capacity: u64) -> Result<sled::Db, sled::Error> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(dir = %dir.display(), "store directory still locked; waiting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                return Err(sled::Error::Io(std::io::Error::other(format!(
                    "{e} (another cicada node is using this data directory)"
                ))));
            }
            other => return other,
        }
    }
}

type NodeRx = tokio::sync::oneshot::Receiver<ActorRef<NodeMsg>>;

/// Forwards peer traffic to the node actor once it has started (messages before that are dropped; raft
/// resends them).
struct Relay {
    node: std::sync::OnceLock<ToActor>,
    pending: std::sync::Mutex<Option<NodeRx>>,
}

impl Relay {
    fn new(rx: tokio::sync::oneshot::Receiver<ActorRef<NodeMsg>>) -> Relay {
        Relay {
            node: std::sync::OnceLock::new(),
            pending: std::sync::Mutex::new(Some(rx)),
        }
    }

    fn target(&self) -> Option<&ToActor> {
        if let Some(t) = self.node.get() {
            return Some(t);
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = p.as_mut() {
            if let Ok(node) = rx.try_recv() {
                p.take();
                let _ = self.node.set(ToActor { node });
            }
        }
        self.node.get()
    }
}

impl transport::Inbound for Relay {
    fn raft(&self, message: raft::eraftpb::Message) {
        if let Some(t) = self.target() {
            t.raft(message);
        }
    }
    fn unreachable(&self, peer: u64) {
        if let Some(t) = self.target() {
            t.unreachable(peer);
        }
    }
}
