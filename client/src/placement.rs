//! Choosing storage nodes for a new chunk from the cluster map.

use std::collections::HashMap;

use crate::control::{ClusterMap, NodeInfo};

/// Free bytes a node reported: total minus used minus reserved.
pub fn free_bytes(n: &NodeInfo) -> u64 {
    n.capacity
        .total
        .saturating_sub(n.capacity.used)
        .saturating_sub(n.capacity.reserved)
}

/// Live nodes with at least one shard, most free space first (ties by node
/// id). `claimed` holds bytes this client reserved since the map's capacities
/// were reported, so a burst of placements spreads instead of piling onto
/// the one node that looked emptiest.
pub fn candidates<'a>(map: &'a ClusterMap, claimed: &HashMap<u64, u64>) -> Vec<&'a NodeInfo> {
    let mut nodes: Vec<&NodeInfo> = map
        .nodes
        .iter()
        .filter(|n| n.up && !n.shards.is_empty())
        .collect();
    let free =
        |n: &NodeInfo| free_bytes(n).saturating_sub(claimed.get(&n.node_id).copied().unwrap_or(0));
    nodes.sort_by(|a, b| free(b).cmp(&free(a)).then(a.node_id.cmp(&b.node_id)));
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Capacity;

    fn node(id: u64, up: bool, total: u64, used: u64) -> NodeInfo {
        NodeInfo {
            node_id: id,
            up,
            shards: vec![format!("127.0.0.1:{id}")],
            capacity: Capacity {
                total,
                used,
                reserved: 0,
                chunks: 0,
            },
            last_heartbeat_ago_ms: 0,
        }
    }

    #[test]
    fn most_free_live_nodes_first_and_claims_count() {
        let map = ClusterMap {
            epoch: 1,
            nodes: vec![
                node(1, true, 100, 90),
                node(2, true, 100, 10),
                node(3, false, 100, 0),
                node(4, true, 100, 50),
            ],
        };
        let ids = |c: Vec<&NodeInfo>| c.iter().map(|n| n.node_id).collect::<Vec<_>>();
        assert_eq!(ids(candidates(&map, &HashMap::new())), vec![2, 4, 1]);
        let claimed = HashMap::from([(2, 60)]);
        assert_eq!(ids(candidates(&map, &claimed)), vec![4, 2, 1]);
    }
}
