//! The raft node's settings from the broker's configuration: `[store]` and `[cluster]`.

use crate::config::{ClusterConfigError, Config};
use cicada_cluster::ClusterConfig;

/// This node's raft settings: a cluster of one without `[cluster]`, else the configured node. The store
/// lives in `{data_dir}/store` either way.
pub fn cluster_config(config: &Config) -> Result<ClusterConfig, ClusterConfigError> {
    let mut c = ClusterConfig::single(config.data_dir.join("store"));
    c.fsync = config.store.fsync.into();
    c.cache_capacity = config.store.cache_mb << 20;
    if let Some(s) = &config.cluster {
        c.node_id = s.node_id;
        c.cluster_id = s.cluster_id.clone();
        c.listen = s.peer_bind.clone();
        c.advertise = Some(s.advertised());
        c.peers = s.members();
        c.join = s.join;
        c.secret = s.secret_bytes()?;
        c.tick = s.tick();
        c.snapshot_interval = s.snapshot_interval;
        if let Some(t) = &s.tls {
            c.tls = Some(crate::broker::tls::peer_tls(t)?);
        }
    }
    Ok(c)
}
