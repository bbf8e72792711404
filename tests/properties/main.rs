//! Property tests of the parsers a client's (or an operator's) bytes reach: the request head
//! and the router ([head]), the PROXY header and `X-Forwarded-For` ([proxy]), the chat
//! decoder and JSON string escaping ([chat]), the upgrade query ([query]) and the
//! configuration ([config]). Each property runs a few hundred cases, in well under a second.

mod chat;
mod config;
mod head;
mod proxy;
mod query;
