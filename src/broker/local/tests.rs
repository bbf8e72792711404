//! The embedded broker's rooms, history bounds, budgets and presence.

use super::*;
use crate::broker::{Feed, Replay};

fn broker(history: usize, queue: usize) -> Arc<LocalBroker> {
    let config = Config {
        history,
        send_queue: queue,
        ..Config::default()
    };
    LocalBroker::new(&config, Arc::new(Metrics::default()))
}

fn chat_text(delivery: Delivery) -> String {
    match delivery {
        Delivery::Chat(frame) => frame.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

fn publish(membership: &Membership, message: &str) {
    match &membership.handle {
        MemberHandle::Local(member) => member.publish(&ChatParts::new(message, None, 9)),
        MemberHandle::Redis(_) => unreachable!("a local broker hands out local members"),
    }
}

fn next(feed: &mut Feed) -> String {
    chat_text(feed.try_recv().expect("a delivery"))
}

#[test]
fn members_get_every_message_in_order_with_seqs() {
    let broker = broker(10, 16);
    let mut alice = broker.join("lobby", None, None);
    let mut bob = broker.join("lobby", None, None);
    publish(&alice, "one");
    publish(&bob, "two");
    for member in [&mut alice, &mut bob] {
        assert_eq!(
            next(&mut member.feed),
            r#"{"message":"one","seq":1,"ts":9}"#
        );
        assert_eq!(
            next(&mut member.feed),
            r#"{"message":"two","seq":2,"ts":9}"#
        );
    }
}

#[test]
fn rooms_are_isolated_and_freed_when_empty() {
    let broker = broker(10, 16);
    let lobby = broker.join("lobby", None, None);
    let mut other = broker.join("other", None, None);
    publish(&lobby, "hi");
    assert!(other.feed.try_recv().is_none());
    assert_eq!(broker.room_count(), 2);
    let first_epoch = lobby.epoch.clone();
    drop(lobby);
    assert_eq!(broker.room_count(), 1);
    assert_eq!(broker.history_budget.used(), 0, "its history is freed");
    let again = broker.join("lobby", None, None);
    assert_eq!(again.seq, 0);
    assert_ne!(again.epoch, first_epoch);
}

#[test]
fn resume_replays_from_history_a_page_at_a_time() {
    let broker = broker(3, 16);
    let keeper = broker.join("lobby", None, None);
    for n in 1..=5 {
        publish(&keeper, &n.to_string());
    }
    let since = |since| {
        Some(Resume::Since {
            since,
            epoch: Some(keeper.epoch.clone()),
        })
    };
    let resumed = broker.join("lobby", since(3), None);
    assert!(matches!(
        resumed.replay,
        Replay::From {
            after: 3,
            reset: None,
            ..
        }
    ));
    let MemberHandle::Local(member) = &resumed.handle else {
        unreachable!()
    };
    let page = member.replay_page(3, resumed.seq);
    assert_eq!((page.frames.len(), page.last, page.gap), (2, 5, false));
    let trimmed = broker.join("lobby", since(1), None);
    assert!(matches!(
        trimmed.replay,
        Replay::From { reset: Some(_), .. }
    ));
}

#[test]
fn a_full_feed_cuts_only_that_member() {
    let broker = broker(0, 2);
    let mut slow = broker.join("lobby", None, None);
    let mut fast = broker.join("lobby", None, None);
    for n in 0..3 {
        publish(&fast, &n.to_string());
        fast.feed.try_recv().unwrap();
    }
    assert!(
        slow.feed.try_recv().is_none(),
        "a cut member's queue is freed"
    );
    publish(&fast, "still here");
    assert!(fast.feed.try_recv().is_some());
    assert_eq!(broker.metrics.read("roomcast_slow_reader_drops_total"), 1);
}

#[test]
fn histories_share_one_budget_and_the_largest_give_way() {
    let config = Config {
        history: 1000,
        history_bytes: 1 << 20,
        history_budget_bytes: 64 * 1024,
        ..Config::default()
    };
    let broker = LocalBroker::new(&config, Arc::new(Metrics::default()));
    let quiet = broker.join("quiet", None, None);
    publish(&quiet, "small");
    let loud: Vec<Membership> = (0..4)
        .map(|n| broker.join(&format!("loud{n}"), None, None))
        .collect();
    let big = "x".repeat(4000);
    for _ in 0..10 {
        for member in &loud {
            publish(member, &big);
        }
    }
    assert!(broker.history_budget.used() <= 64 * 1024);
    let MemberHandle::Local(member) = &quiet.handle else {
        unreachable!()
    };
    assert_eq!(
        member.replay_page(0, 1).frames.len(),
        1,
        "the quiet room kept its message"
    );
}

#[test]
fn a_publish_into_a_room_freed_meanwhile_keeps_nothing() {
    let broker = broker(10, 16);
    let member = broker.join("lobby", None, None);
    let MemberHandle::Local(handle) = &member.handle else {
        unreachable!()
    };
    let room = Arc::clone(&handle.room);
    drop(member);
    broker.publish_in(&room, &ChatParts::new("late", None, 1));
    assert_eq!(broker.history_budget.used(), 0);
    assert_eq!(broker.frame_bytes(), 0);
}

#[test]
fn members_furthest_behind_are_cut_past_the_backlog_budget() {
    let config = Config {
        history: 0,
        send_queue_bytes: 1 << 20,
        backlog_budget_bytes: 50_000,
        ..Config::default()
    };
    let broker = LocalBroker::new(&config, Arc::new(Metrics::default()));
    let stuck = broker.join("a", None, None);
    let mut reader = broker.join("b", None, None);
    for _ in 0..20 {
        publish(&stuck, &"y".repeat(4000));
        publish(&reader, "z");
        reader.feed.try_recv();
    }
    assert!(broker.frame_bytes() <= 50_000, "{}", broker.frame_bytes());
    publish(&reader, "still here");
    assert!(reader.feed.try_recv().is_some(), "the reader is not cut");
}

fn visitor(id: &str, name: &str) -> Option<Visitor> {
    Some(Visitor {
        id: id.into(),
        user: Arc::from(format!(r#"{{"id":"{id}","name":"{name}"}}"#)),
    })
}

fn notices(feed: &mut Feed) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(delivery) = feed.try_recv() {
        if let Delivery::Notice(frame) = delivery {
            let notice: serde_json::Value = serde_json::from_str(&frame).unwrap();
            seen.push(format!(
                "{} {}",
                notice["type"].as_str().unwrap(),
                notice["count"]
            ));
        }
    }
    seen
}

fn lingering(linger_ms: u64) -> Arc<LocalBroker> {
    let config = Config {
        presence_linger: Duration::from_millis(linger_ms),
        ..Config::default()
    };
    LocalBroker::new(&config, Arc::new(Metrics::default()))
}

#[test]
fn joins_and_leaves_are_told_and_a_reconnect_within_the_linger_is_neither() {
    let broker = lingering(5000);
    let mut watcher = broker.join("lobby", None, None);
    let ada = broker.join("lobby", None, visitor("1", "Ada"));
    assert_eq!(ada.members.count, 2);
    assert_eq!(notices(&mut watcher.feed), ["join 2"]);
    drop(ada);
    let back = broker.join("lobby", None, visitor("1", "Ada"));
    broker.tick(Instant::now() + Duration::from_secs(10));
    assert!(notices(&mut watcher.feed).is_empty(), "no leave, no join");
    drop(back);
    broker.tick(Instant::now() + Duration::from_secs(10));
    assert_eq!(notices(&mut watcher.feed), ["leave 1"]);
    assert_eq!(broker.presence("lobby", 10).count, 1);
}

#[test]
fn a_room_waits_for_its_lingering_users_before_it_is_freed() {
    let broker = lingering(5000);
    let ada = broker.join("lobby", None, visitor("1", "Ada"));
    let epoch = ada.epoch.clone();
    drop(ada);
    assert_eq!(broker.room_count(), 1, "kept while Ada lingers");
    let reload = broker.join("lobby", None, visitor("1", "Ada"));
    assert_eq!(reload.epoch, epoch, "a reload keeps the room's history");
    drop(reload);
    broker.tick(Instant::now() + Duration::from_secs(10));
    assert_eq!(broker.room_count(), 0);
    let anonymous = lingering(5000).join("quiet", None, None);
    drop(anonymous);
}
