//! The traffic of one run: members of every room on every roomcast container, on a runtime
//! of their own so that the scenario drives Docker from the test's thread meanwhile, and the
//! readiness watch beside them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use testkit::wait;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::check::check;
use super::member::{Member, Pace, Record};
use super::readiness::{self, Timeline};
use super::stack::Stack;

/// Members of each room on each roomcast container.
const MEMBERS_PER_APP: usize = 2;
/// Each member publishes this often.
const EVERY: Duration = Duration::from_millis(100);
/// How long every member may take to have everything once publishing stops.
const SETTLE: Duration = Duration::from_secs(20);

/// What a run leaves to check.
pub struct Outcome {
    pub records: Vec<Record>,
    pub readiness: Timeline,
    /// From the end of publishing until nothing was missing (or nothing more came).
    pub settled_after: Duration,
}

pub struct Traffic {
    runtime: Runtime,
    pace: Arc<Pace>,
    members: Vec<Member>,
    readiness: JoinHandle<Timeline>,
}

impl Traffic {
    /// Every member of `rooms` on every roomcast container of `stack`, each with its
    /// welcome; nobody publishes yet.
    pub fn join(stack: &Stack, rooms: &[String]) -> Traffic {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let pace = Arc::new(Pace::default());
        let (members, readiness) = runtime.block_on(async {
            let mut members = Vec::new();
            for (room_index, room) in rooms.iter().enumerate() {
                for (app_index, app) in stack.apps.iter().enumerate() {
                    for k in 0..MEMBERS_PER_APP {
                        let record = Record {
                            name: format!("a{app_index}r{room_index}m{k}"),
                            room: room.clone(),
                            app: app_index,
                            ..Record::default()
                        };
                        let url = format!("ws://{}/ws/chat/{room}/", app.addr);
                        members.push(Member::spawn(record, url, Arc::clone(&pace), EVERY));
                    }
                }
            }
            let welcomed = async || {
                let records: Vec<Record> = members.iter().map(Member::snapshot).collect();
                if let Some(failed) = records.iter().find(|r| r.failure.is_some()) {
                    panic!("{} failed: {:?}", failed.name, failed.failure);
                }
                match records.iter().filter(|r| r.connects == 0).count() {
                    0 => Ok(()),
                    waiting => Err(format!("{waiting} members without one")),
                }
            };
            wait::until("every member's welcome", Duration::from_secs(30), welcomed).await;
            let apps = stack.apps.iter().map(|app| app.addr).collect();
            let readiness = tokio::spawn(readiness::watch(apps, Arc::clone(&pace)));
            (members, readiness)
        });
        Traffic {
            runtime,
            pace,
            members,
            readiness,
        }
    }

    pub fn publish(&self) {
        self.pace.publishing.store(true, Ordering::SeqCst);
    }

    /// Stops publishing, waits until nothing is missing (or nothing more comes for 2 s,
    /// within [`SETTLE`]), then every member leaves.
    pub fn finish(self) -> Outcome {
        self.pace.publishing.store(false, Ordering::SeqCst);
        let settled_after = self.runtime.block_on(settle(&self.members));
        self.pace.leaving.store(true, Ordering::SeqCst);
        let Traffic {
            runtime,
            members,
            readiness,
            ..
        } = self;
        runtime.block_on(async {
            // Each closes within a tick of its pace; together they get 5 s.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut records = Vec::new();
            for member in members {
                records.push(member.finish(deadline).await);
            }
            Outcome {
                records,
                readiness: readiness.await.expect("the readiness watch"),
                settled_after,
            }
        })
    }
}

async fn settle(members: &[Member]) -> Duration {
    let started = Instant::now();
    let (mut frames, mut quiet_since) = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let records: Vec<Record> = members.iter().map(Member::snapshot).collect();
        let now: usize = records.iter().map(|r| r.chats.len()).sum();
        if now != frames {
            (frames, quiet_since) = (now, Instant::now());
        }
        if check(&records).settled()
            || quiet_since.elapsed() > Duration::from_secs(2)
            || started.elapsed() > SETTLE
        {
            return started.elapsed();
        }
    }
}
