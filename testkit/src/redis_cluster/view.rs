//! What each node of a cluster says of it (`CLUSTER NODES`, `CLUSTER INFO`, `INFO`), and
//! when they all agree.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use super::{RedisCluster, SETTLE, SLOTS};
use crate::wait;

impl RedisCluster {
    /// The first of `replicas` that some live node sees serving all of `slots`.
    pub(super) fn heir(&self, replicas: &[String], slots: &[RangeInclusive<u16>]) -> Option<usize> {
        let slots = slots.iter().flat_map(Clone::clone);
        self.live().find_map(|observer| {
            let view = self.view(observer)?;
            let heir = view.into_iter().find(|line| {
                replicas.contains(&line.id) && slots.clone().all(|slot| line.serves(slot))
            })?;
            Some(self.index_of(&heir.id))
        })
    }

    /// A field of `CLUSTER INFO` on node `index`.
    pub(super) fn cluster_info(&self, index: usize, field: &str) -> Option<String> {
        let text = self
            .command(index, &["CLUSTER", "INFO"])?
            .into_iter()
            .next()?;
        info_field(&text, field).map(str::to_string)
    }

    /// Every node as node `index` sees it.
    fn view(&self, index: usize) -> Option<Vec<NodeLine>> {
        let text = self
            .command(index, &["CLUSTER", "NODES"])?
            .into_iter()
            .next()?;
        Some(text.lines().filter_map(NodeLine::parse).collect())
    }

    /// What node `index` says of itself.
    pub(super) fn own_line(&self, index: usize) -> Option<NodeLine> {
        self.view(index)?.into_iter().find(|line| line.myself)
    }

    pub(super) fn wait_until_settled(&self, what: &str) {
        wait::until_blocking(what, SETTLE, || self.settled());
    }

    /// `Ok` when the live masters between them serve every slot, every live node says the
    /// cluster is ok and sees every live node as that node sees itself, and every replica's
    /// link to its master is up; else the first thing that is not so.
    fn settled(&self) -> Result<(), String> {
        let mut claims = BTreeMap::new();
        for index in self.live() {
            let own = self
                .own_line(index)
                .ok_or(format!("node {index} does not answer"))?;
            claims.insert(own.id.clone(), own);
        }
        let served: usize = claims
            .values()
            .flat_map(|own| &own.slots)
            .map(|range| range.clone().count())
            .sum();
        if served != usize::from(SLOTS) {
            return Err(format!("the live masters serve {served} slots"));
        }
        for index in self.live() {
            let state = self.cluster_info(index, "cluster_state");
            if state.as_deref() != Some("ok") {
                return Err(format!("node {index} says the cluster is {state:?}"));
            }
            let view = self.view(index).unwrap_or_default();
            for (id, claim) in &claims {
                let seen = view.iter().find(|line| &line.id == id);
                if !seen.is_some_and(|line| {
                    !line.failing
                        && line.replica_of == claim.replica_of
                        && line.slots == claim.slots
                }) {
                    return Err(format!(
                        "node {index} sees {seen:?}, which says it is {claim:?}"
                    ));
                }
            }
            if claims[&self.nodes[index].id].replica_of.is_some() {
                let text = self
                    .command(index, &["INFO", "replication"])
                    .unwrap_or_default()
                    .concat();
                let link = info_field(&text, "master_link_status").unwrap_or("unknown");
                if link != "up" {
                    return Err(format!("replica {index}'s link to its master is {link}"));
                }
            }
        }
        Ok(())
    }
}

/// One line of `CLUSTER NODES`: a node as the answering node sees it.
#[derive(Debug, Clone)]
pub(super) struct NodeLine {
    pub(super) id: String,
    /// This line is the answering node itself.
    pub(super) myself: bool,
    /// Flagged `fail` or `fail?`: the answering node thinks it is down.
    pub(super) failing: bool,
    /// Its master's id, for a replica.
    pub(super) replica_of: Option<String>,
    /// What it serves; a replica serves none.
    pub(super) slots: Vec<RangeInclusive<u16>>,
}

impl NodeLine {
    /// `<id> <addr> <flags> <master> <ping> <pong> <epoch> <link> <slot or range>...`
    fn parse(line: &str) -> Option<NodeLine> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = fields.get(2)?;
        let slots = fields
            .get(8..)
            .unwrap_or_default()
            .iter()
            // `[slot->-id]` and `[slot-<-id]` are migrations under way, not what it serves.
            .filter(|field| !field.starts_with('['))
            .filter_map(|field| {
                let (first, last) = field.split_once('-').unwrap_or((field, field));
                Some(first.parse().ok()?..=last.parse().ok()?)
            })
            .collect();
        Some(NodeLine {
            id: fields.first()?.to_string(),
            myself: flags.split(',').any(|flag| flag == "myself"),
            failing: flags.split(',').any(|flag| flag.starts_with("fail")),
            replica_of: fields
                .get(3)
                .filter(|master| **master != "-")
                .map(|master| master.to_string()),
            slots,
        })
    }

    pub(super) fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|range| range.contains(&slot))
    }
}

/// `field:value` from an `INFO` or `CLUSTER INFO` text.
fn info_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}
