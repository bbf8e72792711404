//! A master killed under traffic: its replica takes over its slots, its rooms take messages
//! again within seconds, the other masters' rooms carry on, and no member is told a lie.

use std::time::{Duration, Instant};

use testkit::redis_cluster::RedisCluster;
use tokio::time::sleep;

use super::check::{first_echo_after, longest_silence, resets_in};
use super::{
    Members, ONE_LOAD_AT_A_TIME, UNTOUCHED_SILENCE, context, instances, room_on, slot_of_room,
};

/// From the kill until the killed master's rooms take messages again.
const RECOVERY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_traffic_fails_over_without_lies() {
    if !RedisCluster::available() {
        return;
    }
    let _alone = ONE_LOAD_AT_A_TIME.lock().await;
    let mut cluster = RedisCluster::start(3, 1);
    let servers = instances(&cluster, 3).await;
    let rooms: Vec<String> = cluster
        .masters()
        .into_iter()
        .map(|master| room_on(&cluster, master, "failover"))
        .collect();
    let members = Members::join(&servers, &rooms).await;
    members.publish(true);
    let traffic_from = Instant::now();
    sleep(Duration::from_millis(1500)).await;

    let victim = &rooms[0];
    let master = cluster.master_of(slot_of_room(victim));
    let failover = tokio::task::block_in_place(|| cluster.kill_master_and_fail_over(master));
    let killed_at = failover.killed_at;
    sleep(Duration::from_secs(3)).await;
    let traffic_to = Instant::now();
    let (report, records) = members.finish(Duration::from_secs(15)).await;

    let recovery = first_echo_after(&records, victim, killed_at);
    let silences: Vec<Duration> = rooms
        .iter()
        .map(|room| longest_silence(&records, room, traffic_from, traffic_to))
        .collect();
    eprintln!(
        "master {master} killed: replica {} served its slots after {:?}; its room {victim} was \
         silent for {:?} at most and took a message again {recovery:?} after the kill; the \
         other rooms' longest silences {:?}",
        failover.new_master,
        failover.without_master,
        silences[0],
        &silences[1..],
    );
    eprintln!("failover: {report}");
    report.assert_truthful(&context(&servers, &records));
    assert!(
        recovery.is_some_and(|recovery| recovery < RECOVERY),
        "{victim} took no message within {RECOVERY:?} of the kill: {recovery:?}\n{}",
        context(&servers, &records)
    );
    for (room, silence) in rooms.iter().zip(&silences).skip(1) {
        assert!(
            *silence < UNTOUCHED_SILENCE,
            "{room}, on a master that stayed up, was silent for {silence:?}\n{}",
            context(&servers, &records)
        );
        assert_eq!(resets_in(&records, room), 0, "{room} lost nothing");
    }
}
