//! Cluster mode: roomcast processes on a real Redis Cluster on loopback
//! (`ROOMCAST_REDIS_CLUSTER`), with rooms on every master, under steady traffic from members
//! on every instance: one order per room, resume, a master killed, a slot migrated, readiness.
//! Every traffic test ends with the same check ([`check`]) and prints its figures
//! (`cargo test --test cluster -- --nocapture`).
//!
//! Needs `redis-server` (`apt-get install -y redis-server`); without it the tests are
//! skipped, or fail when `CI` is set.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use testkit::redis_cluster::RedisCluster;
use testkit::{Endpoint, Server, http, wait};
use tokio::time::sleep;

mod check;
mod failover;
mod harness;
mod member;
mod migration;

use check::{Report, check};
use member::{Member, Pace, Record, Seen};

/// The traffic tests measure stalls: one at a time, so they do not share two cores.
static ONE_LOAD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Each member publishes this often while publishing is on.
const EVERY: Duration = Duration::from_millis(25);

/// The most a room may go silent while another master fails or loses a slot: about a
/// second, with room for a busy two-core machine.
const UNTOUCHED_SILENCE: Duration = Duration::from_millis(1500);

/// Roomcast processes on `cluster`, each ready.
async fn instances(cluster: &RedisCluster, count: usize) -> Vec<Server> {
    let seeds = cluster.seeds();
    let env = [
        ("ROOMCAST_REDIS_CLUSTER", seeds.as_str()),
        ("ROOMCAST_RATE", "100000"),
        ("ROOMCAST_BURST", "100000"),
        // Every member connects, and reconnects, from 127.0.0.1.
        ("ROOMCAST_UPGRADE_RATE", "10000"),
        ("ROOMCAST_UPGRADE_BURST", "10000"),
    ];
    let mut servers = Vec::new();
    for _ in 0..count {
        let server = Server::start(&env);
        server.wait_metric("roomcast_ready", 1).await;
        servers.push(server);
    }
    servers
}

/// The slot of `room`'s keys and channel, `roomcast:room:{<room>}:…`.
fn slot_of_room(room: &str) -> u16 {
    RedisCluster::slot_of(&format!("roomcast:room:{{{room}}}"))
}

/// A room named `<prefix>-<n>` whose slot master `index` serves.
fn room_on(cluster: &RedisCluster, index: usize, prefix: &str) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|room| cluster.master_of(slot_of_room(room)) == index)
        .unwrap_or_else(|| panic!("no room named {prefix}-<n> lands on node {index}"))
}

/// The members of one run: one per room on every instance, all publishing at one pace.
struct Members {
    pace: Arc<Pace>,
    members: Vec<Member>,
}

impl Members {
    async fn join(servers: &[Server], rooms: &[String]) -> Members {
        let pace = Arc::new(Pace::default());
        let mut members = Vec::new();
        for room in rooms {
            for server in servers {
                let name = format!("c{}", members.len());
                let url = server.ws_url(&format!("/ws/chat/{room}/"));
                members.push(Member::join(&name, room, url, &pace, EVERY).await);
            }
        }
        Members { pace, members }
    }

    fn publish(&self, on: bool) {
        self.pace.publishing.store(on, Ordering::SeqCst);
    }

    fn records(&self) -> Vec<Record> {
        self.members.iter().map(Member::snapshot).collect()
    }

    /// Stops publishing and waits (at most `limit`) until nothing is missing or nothing has
    /// come for a second; then every member leaves, and the check runs over the records.
    async fn finish(mut self, limit: Duration) -> (Report, Vec<Record>) {
        self.publish(false);
        let started = Instant::now();
        let (mut frames, mut quiet_since) = (0, Instant::now());
        while started.elapsed() < limit {
            sleep(Duration::from_millis(100)).await;
            let records = self.records();
            let now: usize = records.iter().map(|record| record.frames.len()).sum();
            if now != frames {
                (frames, quiet_since) = (now, Instant::now());
            }
            let report = check(&records);
            let complete = report.lost.is_empty() && report.unanswered == 0;
            if complete || quiet_since.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
        for member in &mut self.members {
            member.leave().await;
        }
        let records = self.records();
        (check(&records), records)
    }
}

/// For a failure message: how members' connections ended, other than by leaving, and every
/// server's last log lines.
fn context(servers: &[Server], records: &[Record]) -> String {
    let mut text = String::new();
    for record in records {
        let endings: Vec<&String> = record.endings.iter().filter(|e| *e != "left").collect();
        if !endings.is_empty() {
            text.push_str(&format!(
                "{} in {}: {endings:?}\n",
                record.name, record.room
            ));
        }
    }
    for (index, server) in servers.iter().enumerate() {
        let logs = server.logs();
        text.push_str(&format!("instance {index} (pid {}):\n", server.pid()));
        for line in &logs[logs.len().saturating_sub(20)..] {
            text.push_str(&format!("  {line}\n"));
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_every_master_keep_one_order_across_instances() {
    if !RedisCluster::available() {
        return;
    }
    let _alone = ONE_LOAD_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start(3, 1);
    let servers = instances(&cluster, 3).await;
    let rooms: Vec<String> = cluster
        .masters()
        .into_iter()
        .map(|master| room_on(&cluster, master, "order"))
        .collect();
    let mut members = Members::join(&servers, &rooms).await;
    members.publish(true);
    sleep(Duration::from_secs(2)).await;

    // One member drops out while the others go on, then resumes where it was.
    let away = &mut members.members[1];
    away.leave().await;
    let (_, since) = away.snapshot().resume_point().expect("it had joined");
    sleep(Duration::from_secs(1)).await;
    away.resume().await;
    sleep(Duration::from_millis(500)).await;

    let (report, records) = members.finish(Duration::from_secs(15)).await;
    eprintln!("one order across instances: {report}");
    // Every member got every message, at the seq every other member got it at.
    report.assert_truthful(&context(&servers, &records));
    assert_eq!(
        report.resets,
        Default::default(),
        "no reset without a failure: {report}"
    );
    assert!(report.acknowledged > 500, "too little traffic: {report}");

    // The resumed member was replayed what it missed, from the seq after its last one.
    let resumed = &records[1];
    let after_resume = resumed
        .frames
        .iter()
        .skip_while(|(_, seen)| !matches!(seen, Seen::Welcome { since: Some(_), .. }))
        .collect::<Vec<_>>();
    let (_, Seen::Welcome { seq: latest, .. }) = after_resume[0] else {
        panic!("{} never resumed", resumed.name);
    };
    assert!(
        *latest > since + 10,
        "nothing was missed while away: {since} then {latest}"
    );
    let replayed: Vec<u64> = after_resume[1..]
        .iter()
        .filter_map(|(_, seen)| match seen {
            Seen::Chat { seq, .. } => Some(*seq),
            _ => None,
        })
        .take_while(|seq| seq <= latest)
        .collect();
    assert_eq!(replayed, (since + 1..=*latest).collect::<Vec<_>>());

    // Each room's keys are on the master that serves its slot.
    for room in &rooms {
        let slot = slot_of_room(room).to_string();
        let master = cluster.master_of(slot_of_room(room));
        let keys = cluster
            .command(master, &["CLUSTER", "COUNTKEYSINSLOT", &slot])
            .unwrap();
        assert_ne!(keys, [":0"], "no keys of {room} on node {master}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_cluster() {
    if !RedisCluster::available() {
        return;
    }
    let mut cluster = RedisCluster::start(3, 0);
    let servers = instances(&cluster, 1).await;
    let server = &servers[0];
    assert_eq!(http::get(server.addr(), "/readyz").await.status, 200);

    for master in cluster.masters() {
        cluster.kill_node(master);
    }
    let killed_at = Instant::now();
    // About 1 s on the machine this was written on; the bound leaves room for a busy one.
    wait::until(
        "/readyz to answer 503",
        Duration::from_secs(6),
        async || match http::get(server.addr(), "/readyz").await.status {
            503 => Ok(()),
            status => Err(format!("it answers {status}")),
        },
    )
    .await;
    eprintln!(
        "/readyz turned 503 {:?} after every master was killed",
        killed_at.elapsed()
    );
    assert_eq!(http::get(server.addr(), "/healthz").await.status, 200);
}
