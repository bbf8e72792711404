//! A room's slot migrated to another master under traffic: nothing lost, nothing told twice,
//! and the room goes on from its new master.

use std::time::{Duration, Instant};

use testkit::redis_cluster::RedisCluster;
use tokio::time::sleep;

use super::check::{first_echo_after, longest_silence, resets_in};
use super::{
    Members, ONE_LOAD_AT_A_TIME, UNTOUCHED_SILENCE, context, instances, room_on, slot_of_room,
};

/// Keys of no meaning in the moving room's slot, so that the migration takes a while under
/// traffic (0.5 to 1 s here), as moving a slot that holds more than one room does.
const FILLER_KEYS: usize = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_under_traffic_loses_nothing() {
    if !RedisCluster::available() {
        return;
    }
    let _alone = ONE_LOAD_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start(3, 0);
    let servers = instances(&cluster, 3).await;
    let (moving, staying) = (
        room_on(&cluster, 0, "moving"),
        room_on(&cluster, 1, "staying"),
    );
    fill_slot(&cluster, &moving, FILLER_KEYS);
    let members = Members::join(&servers, &[moving.clone(), staying.clone()]).await;
    members.publish(true);
    let traffic_from = Instant::now();
    sleep(Duration::from_millis(1500)).await;

    let slot = slot_of_room(&moving);
    let took = tokio::task::block_in_place(|| cluster.migrate_slot(slot, 2));
    let migrated_at = Instant::now();
    sleep(Duration::from_secs(2)).await;
    let traffic_to = Instant::now();
    let (report, records) = members.finish(Duration::from_secs(15)).await;

    let moving_silent = longest_silence(&records, &moving, traffic_from, traffic_to);
    let staying_silent = longest_silence(&records, &staying, traffic_from, traffic_to);
    let after = first_echo_after(&records, &moving, migrated_at);
    eprintln!(
        "slot {slot} of {moving} migrated from node 0 to node 2 in {took:?}: the room was silent \
         for {moving_silent:?} at most and took a message {after:?} after the migration; \
         {staying} on node 1 was silent for {staying_silent:?} at most"
    );
    eprintln!("migration: {report}");
    report.assert_truthful(&context(&servers, &records));
    assert_eq!(cluster.master_of(slot), 2);
    let keys_in_slot = |index| {
        let reply = cluster.command(index, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
        reply.unwrap().concat()
    };
    assert_eq!(keys_in_slot(0), ":0");
    let on_target: usize = keys_in_slot(2)[1..].parse().unwrap();
    assert!(
        on_target > FILLER_KEYS,
        "{moving}'s keys are not on its new master"
    );
    assert!(
        after.is_some_and(|after| after < Duration::from_secs(5)),
        "{moving} took no message on its new master: {after:?}\n{}",
        context(&servers, &records)
    );
    assert!(
        staying_silent < UNTOUCHED_SILENCE,
        "{staying} was silent for {staying_silent:?}"
    );
    assert_eq!(resets_in(&records, &staying), 0, "{staying} lost nothing");
}

/// `count` keys `filler:{<room>}:<n>`, in `room`'s slot but not among its keys.
fn fill_slot(cluster: &RedisCluster, room: &str, count: usize) {
    let script = "for n = 1, tonumber(ARGV[1]) do redis.call('SET', KEYS[1] .. n, 'x') end";
    let prefix = format!("filler:{{{room}}}:");
    let master = cluster.master_of(slot_of_room(room));
    let reply = cluster.command(master, &["EVAL", script, "1", &prefix, &count.to_string()]);
    assert_eq!(reply.as_deref(), Some(&[][..]), "filling {room}'s slot");
}
