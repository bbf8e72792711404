//! The command line: the usage text, the shapes asked for, and the plan of every run.

use std::time::Duration;

use testkit::bench::{Args, fail};

const USAGE: &str = "\
fan-out: N rooms x S members (P of each room publishing) at a fixed total publish rate

usage: cargo bench --bench fanout -- [options]
  --shape NxS         rooms x members per room; presets 1x50, 10x20, 1x1000, 1000x2,
                      or `all` for those four in turn (default 1x50)
  --rooms N --subs S  the same, one at a time (override --shape)
  --pubs P            publishing members per room, among the S (default 2, at most S)
  --rate R            total publish rate in messages/s over all rooms
                      (default 150000/S: the 150,000 deliveries/s target)
  --secs D            publishing time per run (default 10; 5 per step with --search)
  --search            find the highest rate with zero loss and p99 < 100 ms: double from
                      --rate while it passes, then bisect to 5 %
  --max-steps N       search runs at most (default 14); a failed run during which other
                      processes used > 20 % of a core is repeated (twice at most)
  --budget-secs T     search time per shape at most (default 300)
  --redis URL         two server instances on the Redis at URL (127.0.0.1 only); members
                      alternate between them. `--redis start` runs a private redis-server
                      on a free port (no persistence) and stops it at the end
  --server-workers N  ROOMCAST_WORKERS per server (default 1)
  --gen-threads N     load generator tokio worker threads (default 1)
  --tasks N           reader tasks in the load generator (default 4)
  --send-queue N      ROOMCAST_SEND_QUEUE (default: the server's, 256)
  --drain-ms N        after publishing, wait at most this long for deliveries (default 3000)
  --no-pin            do not pin server and generator to separate CPUs
  --auth              ROOMCAST_AUTH=required: every member connects with its own token, and
                      every frame carries its sender

env: ROOMCAST_BIN  the roomcast binary (default target/x86_64-unknown-linux-musl/release/roomcast)";

/// `--shape all`.
const PRESETS: [(usize, usize); 4] = [(1, 50), (10, 20), (1, 1000), (1000, 2)];

pub fn parse() -> Args {
    Args::parse(
        &[
            "shape",
            "rooms",
            "subs",
            "pubs",
            "rate",
            "secs",
            "max-steps",
            "budget-secs",
            "redis",
            "server-workers",
            "gen-threads",
            "tasks",
            "send-queue",
            "drain-ms",
        ],
        &["search", "no-pin", "auth"],
        USAGE,
    )
}

/// The (rooms, members) shapes to run, in turn.
pub fn shapes(args: &Args) -> Vec<(usize, usize)> {
    match args.text("shape").unwrap_or("1x50") {
        "all" => PRESETS.to_vec(),
        shape => {
            let parsed = shape
                .split_once('x')
                .and_then(|(n, s)| Some((n.parse().ok()?, s.parse().ok()?)));
            match parsed {
                Some((n, s)) if n > 0 && s > 0 => {
                    vec![(args.or("rooms", n), args.or("subs", s))]
                }
                _ => fail(format!("--shape: expected NxS such as 1x50, got {shape:?}")),
            }
        }
    }
}

#[derive(Clone)]
pub struct Plan {
    pub rooms: usize,
    pub subs: usize,
    pub pubs: usize,
    pub secs: f64,
    pub redis: Option<String>,
    pub server_workers: usize,
    pub gen_threads: usize,
    pub tasks: usize,
    /// CPUs this bench may use (read before pinning itself).
    pub cores: usize,
    /// (server CPU, generator CPU) when pinned.
    pub pin: Option<(usize, usize)>,
    pub send_queue: Option<usize>,
    pub drain: Duration,
    /// Tokens required; members send theirs.
    pub auth: bool,
}

impl Plan {
    pub fn members(&self) -> usize {
        self.rooms * self.subs
    }

    pub fn instances(&self) -> usize {
        if self.redis.is_some() { 2 } else { 1 }
    }

    pub fn shape(&self) -> String {
        format!("{}x{}", self.rooms, self.subs)
    }
}

impl Plan {
    /// Everything but the shape, from the command line; `redis` is the URL of a Redis this
    /// bench started, if it did.
    pub fn from_args(
        args: &Args,
        cores: usize,
        pin: Option<(usize, usize)>,
        redis: Option<String>,
    ) -> Plan {
        let plan = Plan {
            rooms: 0,
            subs: 0,
            pubs: args.or("pubs", 2),
            secs: args.or("secs", if args.flag("search") { 5.0 } else { 10.0 }),
            redis: redis.or_else(|| args.text("redis").map(String::from)),
            server_workers: args.or("server-workers", 1),
            gen_threads: args.or("gen-threads", 1).max(1),
            tasks: args.or("tasks", 4).max(1),
            cores,
            pin,
            send_queue: args.get("send-queue"),
            drain: Duration::from_millis(args.or("drain-ms", 3000)),
            auth: args.flag("auth"),
        };
        if let Some(url) = &plan.redis
            && !(url.starts_with("redis://127.0.0.1") || url.starts_with("redis://localhost"))
        {
            fail("--redis: only a Redis on 127.0.0.1 is allowed (redis://127.0.0.1:PORT/)");
        }
        plan
    }

    /// This plan with another shape; no more publishers per room than members.
    pub fn with_shape(&self, rooms: usize, subs: usize) -> Plan {
        Plan {
            rooms,
            subs,
            pubs: self.pubs.clamp(1, subs),
            ..self.clone()
        }
    }
}
