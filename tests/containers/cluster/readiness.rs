//! Every roomcast container's `/readyz`, polled while the traffic runs, and its spans of
//! answers other than 200.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use testkit::http;

use super::member::Pace;

/// Per container: each answer's time and status (0: no answer).
pub type Timeline = Vec<Vec<(Instant, u16)>>;

pub async fn watch(apps: Vec<SocketAddr>, pace: Arc<Pace>) -> Timeline {
    let mut timeline: Timeline = vec![Vec::new(); apps.len()];
    while !pace.leaving.load(Ordering::SeqCst) {
        for (index, addr) in apps.iter().enumerate() {
            let status = match http::try_get(*addr, "/readyz").await {
                Ok(response) => response.status,
                Err(_) => 0,
            };
            timeline[index].push((Instant::now(), status));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    timeline
}

/// Each container's spans of answers other than 200, from `origin`.
pub fn describe(timeline: &Timeline, origin: Instant) -> String {
    let mut parts = Vec::new();
    for (index, answers) in timeline.iter().enumerate() {
        let mut spans = Vec::new();
        let mut open: Option<(Instant, u16)> = None;
        for (at, status) in answers {
            match (open, *status == 200) {
                (None, false) => open = Some((*at, *status)),
                (Some((from, status)), true) => {
                    spans.push(format!(
                        "{status} from {:.1?} for {:.1?}",
                        from.duration_since(origin),
                        at.duration_since(from)
                    ));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some((from, status)) = open {
            spans.push(format!(
                "{status} from {:.1?} on",
                from.duration_since(origin)
            ));
        }
        let spans = if spans.is_empty() {
            "200 throughout".to_string()
        } else {
            spans.join(", ")
        };
        parts.push(format!("app{index} {spans}"));
    }
    parts.join("; ")
}
