//! Limits on what one client may do: publish [rate]s, and connections and upgrades per
//! [address](addresses).

pub mod addresses;
pub mod rate;

pub use addresses::{AddressGuard, AddressTable, TooMany};
pub use rate::{RateLimit, RateState};
