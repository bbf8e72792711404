//! The open-file limit: raised as far as allowed at start, and the connection cap kept
//! under it, so health checks and refusals always find a file descriptor.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept back from the connection cap: the listener, Redis connections, the
/// runtime's own, and the connections being refused at the cap.
pub const RESERVE: usize = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force
/// (`None`: unlimited).
pub fn raise() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// The connection cap that fits under `nofile` with the reserve to spare.
pub fn fit(max_connections: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(nofile) => {
            let room = (nofile as usize).saturating_sub(RESERVE).max(1);
            max_connections.min(room)
        }
        None => max_connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_free() {
        assert_eq!(fit(20_000, Some(1024)), 1024 - RESERVE);
        assert_eq!(fit(100, Some(1024)), 100);
        assert_eq!(fit(100, Some(50)), 1);
        assert_eq!(fit(100, None), 100);
    }
}
