//! Cluster mode across hosts: a Redis Cluster of three masters and three replicas, each node
//! in its own container, and three roomcast containers on one private Docker network
//! ([`stack`]). Members on every roomcast container, in rooms on every master, publish at a
//! steady pace ([`traffic`], [`member`]) while one roomcast container loses its route to one
//! master for a while, and then a master is killed. The zero-loss check ([`check`]), the
//! stalls and `/readyz` ([`readiness`]) are printed:
//! `cargo test --test containers cluster -- --nocapture`.
//!
//! Also compose.cluster.yml as users run it: up, a message through the cluster, up again
//! (the job that creates the cluster does nothing the second time), down.
//!
//! Cutting a route enters the roomcast container's network namespace (`nsenter`, `ip route
//! add blackhole`): it needs root and the engine on this host.

mod check;
mod member;
mod readiness;
mod stack;
mod traffic;

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::docker::{Image, docker, docker_output, inspect, wait_healthy};
use testkit::{http, procfs, skip_or_fail, tools, wait, ws};

use super::compose::{Env, Project, ProjectGuard};
use super::{ONE_LOAD_AT_A_TIME, standins};
use check::{Report, Stall, check, longest_silence, stall};
use member::Record;
use stack::{Stack, Topology};
use traffic::{Outcome, Traffic};

const APPS: usize = 3;
const ROOMS_PER_MASTER: usize = 2;
/// Members publish 10 messages a second, over the default rate.
const APP_ENV: &[(&str, &str)] = &[("ROOMCAST_RATE", "50"), ("ROOMCAST_BURST", "100")];

/// Traffic before anything happens, the cut, and the time after each event.
const WARM_UP: Duration = Duration::from_secs(3);
const CUT_FOR: Duration = Duration::from_secs(5);
const AFTER_RESTORE: Duration = Duration::from_secs(5);
const AFTER_FAILOVER: Duration = Duration::from_secs(6);
/// Members a cut or a failover does not touch may go this long without a message...
const UNTOUCHED_SILENCE: Duration = Duration::from_secs(2);
/// ...and wait this long for their own. The publisher's turn waits for every node's reply,
/// up to the 2 s Redis timeout: when a route goes, the container's publishes to the other
/// nodes wait that long once.
const UNTOUCHED_ECHO: Duration = Duration::from_secs(3);

/// When each thing happened, and to whom.
struct Events {
    traffic_from: Instant,
    cut_app: usize,
    cut_master: usize,
    cut_at: Instant,
    restored_at: Instant,
    killed: usize,
    killed_at: Instant,
    /// The replica that took over, and how long after the kill a survivor saw it.
    promoted: usize,
    failover_took: Duration,
    stopped_at: Instant,
}

#[test]
fn cluster_on_docker_rides_out_a_cut_route_and_a_killed_master() {
    let Some(env) = Env::find() else { return };
    if !standins(&["redis"]) || !can_cut_routes() {
        return;
    }
    let _alone = ONE_LOAD_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let image = Image::from_binary(&env.binary, "cluster");
    let stack = Stack::start(image.tag(), APPS, APP_ENV);
    let topology = stack.topology(0).expect("the cluster's topology");
    eprintln!(
        "cluster: 6 nodes joined and {APPS} roomcast containers ready in {:.1?}; masters {}",
        started.elapsed(),
        describe(&stack, &topology)
    );
    let pid = inspect(&stack.apps[0].name, "{{.State.Pid}}");
    if !Path::new(&format!("/proc/{pid}/ns/net")).exists() {
        skip_or_fail("the Docker engine is not on this host: no container network to enter");
        return;
    }
    let rooms = rooms_on_every_master(&stack, &topology);
    let names: Vec<String> = rooms.iter().map(|(name, _)| name.clone()).collect();
    let traffic = Traffic::join(&stack, &names);

    traffic.publish();
    let traffic_from = Instant::now();
    std::thread::sleep(WARM_UP);

    // 1. One roomcast container loses its route to one master, then gets it back.
    let (cut_app, cut_master) = (0, topology.masters[1].node);
    let cut_at = Instant::now();
    stack.cut(cut_app, cut_master, true);
    std::thread::sleep(CUT_FOR);
    stack.cut(cut_app, cut_master, false);
    let restored_at = Instant::now();
    std::thread::sleep(AFTER_RESTORE);

    // 2. Another master is killed; its replica takes over.
    let killed = &topology.masters[0];
    let killed_at = Instant::now();
    stack.kill(killed.node);
    let (promoted, failover_took) =
        stack.wait_promoted(killed.node, killed.slots[0].0, &killed.replicas, killed_at);
    std::thread::sleep(AFTER_FAILOVER);

    let stopped_at = Instant::now();
    let outcome = traffic.finish();
    let events = Events {
        traffic_from,
        cut_app,
        cut_master,
        cut_at,
        restored_at,
        killed: killed.node,
        killed_at,
        promoted,
        failover_took,
        stopped_at,
    };
    let report = check(&outcome.records);
    let figures = figures(&outcome, &rooms, &events);
    eprintln!(
        "cluster: settled {:.2?} after publishing stopped; {report}",
        outcome.settled_after
    );
    for (index, app) in stack.apps.iter().enumerate() {
        let warnings = stack.app_warnings(index);
        let shown: String = warnings
            .iter()
            .take(12)
            .map(|line| format!("\n    {line}"))
            .collect();
        eprintln!(
            "cluster: {} logged {} lines above info{shown}",
            app.name,
            warnings.len()
        );
    }
    eprintln!("cluster: the whole test took {:.1?}", started.elapsed());
    verdict(&report, &figures);
}

/// The stalls the verdict looks at.
struct Figures {
    cut_off: Stall,
    same_app: Stall,
    other_apps: Stall,
    elsewhere: Stall,
}

/// Prints who went how long without a message, and waited how long for their own, in each
/// phase; how long each room went without one; and `/readyz`.
fn figures(outcome: &Outcome, rooms: &[(String, usize)], events: &Events) -> Figures {
    let records = &outcome.records;
    let master_of = |r: &Record| rooms.iter().find(|(name, _)| *name == r.room).unwrap().1;
    let (cut_app, cut_master) = (events.cut_app, events.cut_master);
    let cut_window = (events.cut_at, events.restored_at + AFTER_RESTORE);
    let until = events.stopped_at;
    eprintln!(
        "cluster: app{cut_app} cut from master node {cut_master} for {CUT_FOR:?}, then \
         {AFTER_RESTORE:?} more; the worst-off member without a message / waiting for its own:"
    );
    let cut_off = stall(records, cut_window, until, |r| {
        r.app == cut_app && master_of(r) == cut_master
    });
    eprintln!("    app{cut_app}, rooms on node {cut_master}: {cut_off}");
    let same_app = stall(records, cut_window, until, |r| {
        r.app == cut_app && master_of(r) != cut_master
    });
    eprintln!("    app{cut_app}, rooms on other nodes: {same_app}");
    let other_apps = stall(records, cut_window, until, |r| r.app != cut_app);
    eprintln!("    the other containers: {other_apps}");
    let killed = events.killed;
    eprintln!(
        "cluster: master node {killed} killed; node {} served its slots {:.2?} later; until \
         publishing stopped, the worst-off member without a message / waiting for its own:",
        events.promoted, events.failover_took
    );
    let kill_window = (events.killed_at, until);
    let on_killed = stall(records, kill_window, until, |r| master_of(r) == killed);
    eprintln!("    rooms on node {killed}: {on_killed}");
    let elsewhere = stall(records, kill_window, until, |r| master_of(r) != killed);
    eprintln!("    rooms on other nodes: {elsewhere}");
    let whole = (events.traffic_from, until);
    for (room, master) in rooms {
        let members = records.iter().filter(|r| r.room == *room);
        let worst = stall(records, whole, until, |r| r.room == *room);
        eprintln!(
            "cluster: room {room} (master node {master}): longest without a delivered message \
             {:.2?} (any member), {:.2?} (the worst-off member)",
            longest_silence(members, whole.0, whole.1),
            worst.silence,
        );
    }
    eprintln!(
        "cluster: readiness: {}",
        readiness::describe(&outcome.readiness, events.traffic_from)
    );
    Figures {
        cut_off,
        same_app,
        other_apps,
        elsewhere,
    }
}

fn verdict(report: &Report, figures: &Figures) {
    let problems = report.problems();
    assert!(
        problems.is_empty(),
        "cluster traffic:\n- {}",
        problems.join("\n- ")
    );
    assert!(
        figures.cut_off.silence > CUT_FOR / 2,
        "the cut stopped nothing ({}): was the route really cut?",
        figures.cut_off
    );
    for (what, stall) in [
        (
            "during the cut, the cut container's other rooms",
            &figures.same_app,
        ),
        ("during the cut, the other containers", &figures.other_apps),
        (
            "during the failover, the other nodes' rooms",
            &figures.elsewhere,
        ),
    ] {
        assert!(
            stall.silence < UNTOUCHED_SILENCE && stall.echo.wait < UNTOUCHED_ECHO,
            "{what}: {stall}"
        );
    }
    assert!(report.delivered > 20_000, "too little traffic: {report}");
}

#[test]
fn compose_cluster_file_comes_up_carries_a_message_and_comes_up_again() {
    let Some(env) = Env::find() else { return };
    if !standins(&["redis"]) {
        return;
    }
    let started = Instant::now();
    let image = Image::from_binary(&env.binary, "compose-cluster");
    let guard = ProjectGuard(Project::of_file(&env, image.tag(), "compose.cluster.yml"));
    let project = &guard.0;
    project.compose_within(&["up", "-d"], Duration::from_secs(90));
    let app = project.container("roomcast");
    wait_healthy(&app, Duration::from_secs(60));
    let up_took = started.elapsed();
    let readyz = http::get_blocking(project.front, "/readyz");
    assert!(readyz.as_ref().is_ok_and(|r| r.status == 200), "{readyz:?}");
    // roomcast started once the job had seen every node say the cluster is ok.
    let creator = project.container("cluster-create");
    assert_eq!(inspect(&creator, "{{.State.ExitCode}}"), "0");
    let created = docker_output(&["logs", &creator]);
    assert!(
        created.contains("every node says the cluster is ok"),
        "{created}"
    );
    let node = project.container("redis-1");
    let info = docker(&["exec", &node, "redis-cli", "cluster", "info"]);
    assert!(info.contains("cluster_known_nodes:6"), "{info}");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let url = format!("ws://{}/ws/chat/compose-cluster/", project.front);
        let mut reader = ws::connect(&url, true).await;
        let mut writer = ws::connect(&url, true).await;
        for client in [&mut reader, &mut writer] {
            let welcome = ws::recv_unless_presence(client).await;
            assert_eq!(welcome["type"], "welcome", "{welcome}");
        }
        ws::send_chat(&mut writer, "through the cluster").await;
        for client in [&mut reader, &mut writer] {
            let frame = ws::recv_unless_presence(client).await;
            assert_eq!(ws::chat(&frame), ("through the cluster".to_string(), 1));
        }
    });
    // The room's seq is on the master that serves its slot (`-c` follows the redirection).
    let key = "roomcast:room:{compose-cluster}:seq";
    assert_eq!(docker(&["exec", &node, "redis-cli", "-c", "get", key]), "1");

    // A second `up` finds the cluster made and leaves everything as it is.
    let again = Instant::now();
    project.compose_within(&["up", "-d"], Duration::from_secs(60));
    wait::until_blocking("the job to run again", Duration::from_secs(30), || {
        let state = inspect(&creator, "{{.State.Status}} {{.State.ExitCode}}");
        let logs = docker_output(&["logs", &creator]);
        let runs = logs.matches("every node says the cluster is ok").count();
        match state.as_str() {
            "exited 0" if logs.contains("the cluster exists already") && runs == 2 => Ok(()),
            _ => Err(format!("{state}: {logs}")),
        }
    });
    assert_eq!(project.container("roomcast"), app, "roomcast was recreated");
    let readyz = http::get_blocking(project.front, "/readyz");
    assert!(readyz.as_ref().is_ok_and(|r| r.status == 200), "{readyz:?}");
    eprintln!(
        "compose.cluster.yml: up and healthy in {up_took:.1?}, the second up done in {:.1?}, \
         all in {:.1?}",
        again.elapsed(),
        started.elapsed()
    );
}

/// Whether this host can enter a container's network namespace and change its routes.
fn can_cut_routes() -> bool {
    if tools::require_program(&["nsenter"], "apt-get install -y util-linux").is_none()
        || tools::require_program(&["ip"], "apt-get install -y iproute2").is_none()
    {
        return false;
    }
    let root = procfs::status_field("self", "Uid")
        .is_some_and(|uids| uids.split_whitespace().nth(1) == Some("0"));
    if !root {
        skip_or_fail("entering a container's network namespace (nsenter) needs root");
    }
    root
}

/// `ROOMS_PER_MASTER` rooms on each master, named `cluster-<n>`, with the master's node; each
/// slot checked against the cluster's own `CLUSTER KEYSLOT`.
fn rooms_on_every_master(stack: &Stack, topology: &Topology) -> Vec<(String, usize)> {
    let mut rooms = Vec::new();
    for master in &topology.masters {
        let names = (0..)
            .map(|n| format!("cluster-{n}"))
            .filter(|name| topology.master_of(slot_of_room(name)) == Some(master.node))
            .take(ROOMS_PER_MASTER);
        for name in names {
            let key = format!("roomcast:room:{{{name}}}");
            assert_eq!(
                stack.keyslot(&key),
                slot_of_room(&name),
                "the slot of {key}"
            );
            rooms.push((name, master.node));
        }
    }
    rooms
}

/// Redis Cluster's slot of a room's keys: CRC16 (XMODEM) of the hash tag, the room's name.
fn slot_of_room(room: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in room.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn describe(stack: &Stack, topology: &Topology) -> String {
    topology
        .masters
        .iter()
        .map(|m| {
            format!(
                "node {} ({}, slots {:?}, replica node {:?})",
                m.node, stack.nodes[m.node].ip, m.slots, m.replicas
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
