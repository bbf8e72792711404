//! The room task on a cluster: stranded rooms subscribed again where their slot now is,
//! and readiness as the cluster link is whole or not.

use serde_json::json;

use super::RoomTask;
use super::link::Link;
use crate::log;

/// Stranded rooms settled in one turn at most.
pub(super) const SETTLE_AT_MOST: usize = 256;

impl RoomTask {
    /// Readiness follows whether the cluster link is whole; a change is logged once.
    pub(super) fn note_whole(&mut self, link: &Link) {
        let whole = link.is_whole();
        self.inner.set_up(&self.inner.pubsub_up, whole);
        // Before the cluster's first look nothing is known yet: not a fault to report.
        if whole != self.whole && link.has_looked() {
            self.whole = whole;
            if whole {
                log::info(
                    "redis cluster reachable again",
                    json!({ "rooms": self.rooms.len() }),
                );
            } else {
                log::warn(
                    "redis cluster not fully reachable",
                    json!({ "rooms": self.rooms.len() }),
                );
            }
        }
    }

    /// On a cluster, after the watcher's look at the table: strands the rooms whose slot
    /// moved, and settles every stranded room where its slot now is. One that fails stays
    /// stranded for the next turn; meanwhile `/readyz` says the instance is not whole.
    pub(super) async fn resettle(&mut self, link: &mut Link) {
        let Some(sharded) = link.sharded_mut() else {
            return;
        };
        sharded.followed();
        sharded.follow_table().await;
        // A turn is bounded, so that after a failover of a master with many rooms the other
        // rooms' messages get through between turns.
        for name in sharded.take_stranded(SETTLE_AT_MOST) {
            if !self.rooms.contains_key(&name) {
                continue;
            }
            if let Err(error) = self.settle_room(link, &name).await {
                log::debug(
                    "redis cluster room not settled yet",
                    json!({ "room": &*name, "error": log::cut(&error.to_string()) }),
                );
                if let Some(sharded) = link.sharded_mut() {
                    sharded.strand(name);
                }
            }
        }
        self.note_whole(link);
    }
}
