//! The cluster harness itself, and what roomcast's cluster mode relies on Redis for: its key
//! hash, a failover that keeps the data, a slot that moves with its keys, and a shard
//! subscriber told when its slot moves away.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use testkit::redis_cluster::RedisCluster;

#[test]
fn slot_of_agrees_with_cluster_keyslot() {
    if !RedisCluster::available() {
        return;
    }
    let cluster = RedisCluster::start(1, 0);
    let keys = [
        "x",
        "123456789",
        "roomcast:room:{lobby}",
        "roomcast:room:{lobby}:seq",
        "foo{}",
        "{}bar",
        "a{}{b}",
        "{b}{c}",
        "a{b",
        "a}b{",
        "{user1000}.following",
        "h\u{e9}llo",
    ];
    for key in keys {
        let keyslot = cluster.command(0, &["CLUSTER", "KEYSLOT", key]);
        let expected = format!(":{}", RedisCluster::slot_of(key));
        assert_eq!(keyslot, Some(vec![expected]), "slot of {key:?}");
    }
}

#[test]
fn a_killed_master_fails_over_to_its_replica_with_its_data() {
    if !RedisCluster::available() {
        return;
    }
    let started = Instant::now();
    let mut cluster = RedisCluster::start(3, 1);
    eprintln!(
        "a 3-master, 3-replica cluster formed in {:?}",
        started.elapsed()
    );
    assert_eq!(cluster.masters(), [0, 1, 2]);
    let key = "roomcast:room:{failover}:seq";
    let master = cluster.master_of(RedisCluster::slot_of(key));
    assert_eq!(
        cluster.command(master, &["SET", key, "17"]).unwrap(),
        ["+OK"]
    );
    // The write is on the replica before the master dies.
    assert_eq!(
        cluster.command(master, &["WAIT", "1", "2000"]).unwrap(),
        [":1"]
    );
    let old_replid = replication(&cluster, master, "master_replid");

    let failover = cluster.kill_master_and_fail_over(master);
    eprintln!(
        "node {master} killed: node {} served its slots {:?} later",
        failover.new_master, failover.without_master
    );
    let promoted = failover.new_master;
    assert!(failover.without_master < Duration::from_secs(10));
    assert_eq!(cluster.master_of(RedisCluster::slot_of(key)), promoted);
    assert_eq!(cluster.command(promoted, &["GET", key]).unwrap(), ["17"]);
    assert_eq!(cluster.masters().len(), 3);
    assert!(
        !cluster
            .seeds()
            .contains(&format!(":{}", cluster.node(master).port()))
    );
    // A promoted replica starts a history of its own and names the old one second.
    assert_ne!(replication(&cluster, promoted, "master_replid"), old_replid);
    assert_eq!(
        replication(&cluster, promoted, "master_replid2"),
        old_replid
    );
}

#[test]
fn a_migrated_slot_takes_its_keys_and_unsubscribes_its_shard_subscribers() {
    if !RedisCluster::available() {
        return;
    }
    let cluster = RedisCluster::start(2, 0);
    let channel = "roomcast:room:{moving}";
    let slot = RedisCluster::slot_of(channel);
    let from = cluster.master_of(slot);
    let to = 1 - from;
    for n in 0..250 {
        let key = format!("{channel}:{n}");
        assert_eq!(cluster.command(from, &["SET", &key, "v"]).unwrap(), ["+OK"]);
    }
    let mut subscriber = ShardSubscriber::new(cluster.node(from).port(), channel);
    // What a publish script does: write a room's key and publish on its channel.
    let script = "#!lua\nredis.call('INFO', 'replication')\nredis.call('INCR', KEYS[1])\n\
                  return redis.call('SPUBLISH', ARGV[1], 'hello')";
    let published = cluster.command(
        from,
        &["EVAL", script, "1", &format!("{channel}:seq"), channel],
    );
    assert_eq!(published.unwrap(), [":1"]);
    subscriber.expect("smessage", "hello");

    let took = cluster.migrate_slot(slot, to);
    eprintln!("slot {slot} and its 251 keys moved in {took:?}");
    assert_eq!(cluster.master_of(slot), to);
    let keys_in_slot = |index| {
        let reply = cluster.command(index, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
        reply.unwrap().concat()
    };
    assert_eq!(
        (keys_in_slot(from), keys_in_slot(to)),
        (":0".into(), ":251".into())
    );
    subscriber.expect("sunsubscribe", channel);
}

/// A field of `INFO replication` on node `index`.
fn replication(cluster: &RedisCluster, index: usize, field: &str) -> String {
    let text = cluster
        .command(index, &["INFO", "replication"])
        .unwrap()
        .concat();
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {text}"))
        .trim()
        .to_string()
}

/// A RESP2 connection in shard pub/sub mode, read as raw text.
struct ShardSubscriber {
    stream: TcpStream,
    seen: String,
}

impl ShardSubscriber {
    fn new(port: u16, channel: &str) -> ShardSubscriber {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let request = format!(
            "*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut subscriber = ShardSubscriber {
            stream,
            seen: String::new(),
        };
        subscriber.expect("ssubscribe", channel);
        subscriber
    }

    /// Reads until a push of `kind` whose next element is `then` has arrived, within 5 s.
    fn expect(&mut self, kind: &str, then: &str) {
        let wanted = format!("${}\r\n{kind}\r\n", kind.len());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(at) = self.seen.find(&wanted) {
                let rest = self.seen[at + wanted.len()..].to_string();
                if rest.contains(&format!("\r\n{then}\r\n")) {
                    self.seen = rest;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} {then} in {:?}",
                self.seen
            );
            let mut buffer = [0u8; 4096];
            match self.stream.read(&mut buffer) {
                Ok(0) => panic!("the subscriber's connection closed: {:?}", self.seen),
                Ok(read) => self
                    .seen
                    .push_str(&String::from_utf8_lossy(&buffer[..read])),
                Err(_) => {}
            }
        }
    }
}
