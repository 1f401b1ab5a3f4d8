//! Recovery time: for each healed fault, how long until the first successful probe (a persistent session
//! connect) at or after the heal through one of the nodes the fault acted on. The probe connects in turn
//! through HAProxy and straight to each node; a probe through HAProxy may land on a node the fault never
//! touched, so for a fault on some nodes only probes straight to one of them count. A fault on every node
//! (netem, a rolling restart, or any fault whose targets cover the run's nodes) recovers with any
//! successful probe, HAProxy's included. A heal with no such probe after it gets no time.

use crate::history::{Event, FaultKind, FaultPhase, NodeId, Record, Via};
use std::collections::{BTreeMap, HashMap};

/// Milliseconds from each heal to the next successful probe through one of its targets, per fault kind,
/// in the order of the heals.
pub(crate) fn recovery_ms(records: &[Record]) -> BTreeMap<FaultKind, Vec<u64>> {
    let mut nodes: Option<u8> = None;
    // Every successful probe, and those straight to each node, sorted by time.
    let mut any: Vec<u64> = Vec::new();
    let mut by_node: HashMap<NodeId, Vec<u64>> = HashMap::new();
    let mut heals: Vec<(u64, FaultKind, &[NodeId])> = Vec::new();
    for r in records {
        match &r.event {
            Event::Start { nodes: n, .. } => nodes = Some(*n),
            Event::Probe { via, ok: true, .. } => {
                any.push(r.t);
                if let Via::Node(n) = via {
                    by_node.entry(*n).or_default().push(r.t);
                }
            }
            Event::Fault {
                kind,
                phase: FaultPhase::End,
                targets,
                ..
            } => heals.push((r.t, *kind, targets)),
            _ => {}
        }
    }
    any.sort_unstable();
    by_node.values_mut().for_each(|v| v.sort_unstable());
    heals.sort_by_key(|h| h.0);
    let first_from = |times: &[u64], t: u64| times.get(times.partition_point(|&x| x < t)).copied();
    let mut out: BTreeMap<FaultKind, Vec<u64>> = BTreeMap::new();
    for (t_end, kind, targets) in heals {
        let everywhere = matches!(kind, FaultKind::Netem | FaultKind::Rolling)
            || targets.is_empty()
            || nodes.is_some_and(|n| (1..=n).all(|i| targets.contains(&i)));
        let first = if everywhere {
            first_from(&any, t_end)
        } else {
            targets
                .iter()
                .filter_map(|n| first_from(by_node.get(n)?, t_end))
                .min()
        };
        if let Some(t) = first {
            out.entry(kind).or_default().push(t - t_end);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::History;
    use crate::history::FaultKind::{Kill, Netem, Partition, Rolling};
    use crate::history::FaultPhase::{End, Start};

    #[test]
    fn each_heal_gets_the_time_to_the_next_successful_probe_through_its_node() {
        let records = History::new()
            .probe(50, true)
            .via(Via::Node(1))
            .fault(100, Kill, Start, &[1])
            .probe(150, true)
            .via(Via::Node(1))
            .fault(200, Kill, End, &[1])
            .probe(250, false)
            .via(Via::Node(1))
            .probe(200, true)
            .via(Via::Node(1))
            .fault(300, Partition, Start, &[2])
            .fault(400, Partition, End, &[2])
            // Through HAProxy, or straight to another node: not a sign that node 2 is back.
            .probe(500, true)
            .probe(600, true)
            .via(Via::Node(3))
            .probe(900, false)
            .via(Via::Node(2))
            .probe(1000, true)
            .via(Via::Node(2))
            .fault(2000, Kill, Start, &[3])
            .fault(3000, Kill, End, &[3])
            .probe(2999, true)
            .via(Via::Node(3))
            .probe(3100, true)
            .records();
        let r = recovery_ms(&records);
        assert_eq!(r.get(&Kill), Some(&vec![0]));
        assert_eq!(r.get(&Partition), Some(&vec![600]));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_fault_on_every_node_recovers_with_any_probe() {
        let records = History::new()
            .push(
                0,
                Event::Start {
                    seed: 1,
                    nodes: 3,
                    namespaces: true,
                    faults: vec![],
                },
            )
            .fault(100, Netem, Start, &[1, 2, 3])
            .fault(200, Netem, End, &[1, 2, 3])
            .probe(230, true)
            .fault(300, Rolling, Start, &[])
            .fault(400, Rolling, End, &[])
            .probe(440, true)
            .via(Via::Node(2))
            .fault(500, Kill, Start, &[3, 1, 2])
            .fault(600, Kill, End, &[3, 1, 2])
            .probe(650, true)
            .records();
        let r = recovery_ms(&records);
        assert_eq!(r.get(&Netem), Some(&vec![30]));
        assert_eq!(r.get(&Rolling), Some(&vec![40]));
        assert_eq!(r.get(&Kill), Some(&vec![50]));
    }
}
