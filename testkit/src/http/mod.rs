//! HTTP/1.1 over plain TCP, the way a test sees it: [`Response`], one request per connection
//! ([`fetch`], async and blocking), and a kept-alive [`Connection`] for byte-exact tests.

mod connection;
mod fetch;
mod response;

pub use connection::Connection;
pub use fetch::{exchange, get, get_blocking, get_request, try_exchange, try_get};
pub use response::Response;
