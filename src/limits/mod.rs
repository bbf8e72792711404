//! Limits on what one client may do: publish [rate]s, connections and upgrades per
//! [address](addresses), and what large messages in flight may hold together ([inbound]).

pub mod addresses;
pub mod inbound;
pub mod rate;

pub use addresses::{AddressGuard, AddressTable, TooMany};
pub use inbound::InboundBudget;
pub use rate::{RateLimit, RateState};
