//! A chat session: the replay, then the room's feed, the client's messages, the clock and
//! shutdown, all in one `select!`, until one of them ends it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::clock::{Due, PeerClock};
use super::outbound::{CLOSE_WAIT, Socket, feed_frame, send_message, within};
use super::{Ending, ending_for};
use crate::auth::jwt::LEEWAY_SECS;
use crate::auth::{Identity, Mode, Refusal, now_secs};
use crate::broker::{
    Delivery, Membership, Page, PageFuture, PublishFuture, Publishing, Replay, Unavailable,
};
use crate::config::LogLevel;
use crate::limits::{AddressGuard, RateState};
use crate::log;
use crate::protocol::{self, CLOSE_SLOW_READER, ChatParts, Inbound, ResetReason};
use crate::shared::Shared;
use crate::shutdown::Shutdown;

mod closing;

/// Frames written per flush, so one busy room cannot starve the rest of the loop.
const MAX_BATCH: usize = 64;

pub(super) struct ChatSession<'a> {
    socket: Socket,
    membership: Membership,
    room: String,
    extended: bool,
    shared: &'a Shared,
    clock: PeerClock,
    /// While replaying: the seq after which the next page starts.
    replay: Option<Cursor>,
    /// The replay page being read.
    page_in_flight: Option<PageFuture>,
    /// A message waiting for room in the broker's queue; the client is not read meanwhile.
    publishing: Option<PublishFuture>,
    /// This connection under the publish rate.
    rate: RateState,
    /// Messages refused over the rate since the last one accepted.
    refused_in_a_row: u32,
    /// The user, when a token named one.
    identity: Option<Identity>,
    /// The client's address, as counted; it carries the publish rate across reconnects.
    address: Option<&'a AddressGuard>,
}

struct Cursor {
    after: u64,
    /// Messages trimmed away meanwhile get a reset notice (a resume, not a page load).
    notify_gaps: bool,
    reset_sent: bool,
}

/// What the outbound side has next: a page of the replay, or the live feed.
enum Outbound {
    Page(Result<Page, Unavailable>),
    Live(Option<Delivery>),
}

/// The end of the publish in flight; never, when there is none.
async fn published(publishing: &mut Option<PublishFuture>) -> Result<(), Unavailable> {
    let Some(publish) = publishing else {
        return std::future::pending().await;
    };
    let outcome = publish.await;
    *publishing = None;
    outcome
}

/// The replay's next page (started now, or still on its way from an earlier turn of the
/// loop: a ping that arrives meanwhile must not restart the read), or the live feed.
async fn next_outbound(
    membership: &mut Membership,
    page_in_flight: &mut Option<PageFuture>,
    replay: Option<u64>,
) -> Outbound {
    match replay {
        Some(after) => {
            let page = page_in_flight.get_or_insert_with(|| membership.replay_page(after));
            let page = page.await;
            *page_in_flight = None;
            Outbound::Page(page)
        }
        None => Outbound::Live(membership.feed.recv().await),
    }
}

impl<'a> ChatSession<'a> {
    pub(super) fn new(
        socket: Socket,
        membership: Membership,
        room: String,
        extended: bool,
        shared: &'a Shared,
        clock: PeerClock,
    ) -> ChatSession<'a> {
        ChatSession {
            socket,
            membership,
            room,
            extended,
            shared,
            clock,
            replay: None,
            page_in_flight: None,
            publishing: None,
            rate: shared.publish_rate.start(),
            refused_in_a_row: 0,
            identity: None,
            address: None,
        }
    }

    /// Counts this connection's publishes from where its address's closed connections left
    /// off: a client that reconnects does not get a fresh burst.
    pub(super) fn publish_from(&mut self, address: Option<&'a AddressGuard>) {
        if let Some(guard) = address {
            self.rate = guard.publish_start(&self.shared.publish_rate);
        }
        self.address = address;
    }

    /// Names the user; the session ends with 4001 when the token expires unless a fresh one
    /// comes first.
    pub(super) fn identify(&mut self, identity: Option<Identity>) {
        // A far-future `exp` is a session without end, kept within what a timer can hold.
        const LONGEST: u64 = 365 * 24 * 3600;
        let expires = identity.as_ref().map(|identity| {
            let ends = identity.expires.saturating_add(LEEWAY_SECS);
            let left = ends.saturating_sub(now_secs()).min(LONGEST);
            Instant::now() + Duration::from_secs(left)
        });
        self.clock.expire_at(expires);
        self.identity = identity;
    }

    pub(super) async fn run(mut self, mut shutdown: Shutdown) {
        if self.extended && Box::pin(self.greet()).await.is_err() {
            return;
        }
        let ending = loop {
            let after = self.replay.as_ref().map(|cursor| cursor.after);
            let step = tokio::select! {
                _ = shutdown.signalled() => Some(Ending::Shutdown),
                // Every handler is boxed, like the closing paths below: inline, each would
                // make every idle session as large as the largest of them (a write under its
                // deadline is the largest). One allocation per delivery batch is the price.
                inbound = self.socket.next(), if self.publishing.is_none() => {
                    Box::pin(self.on_inbound(inbound)).await
                }
                outcome = published(&mut self.publishing) => Box::pin(self.on_published(outcome)).await,
                outbound = next_outbound(&mut self.membership, &mut self.page_in_flight, after) => match outbound {
                    Outbound::Page(page) => Box::pin(self.on_page(page)).await,
                    Outbound::Live(Some(delivery)) => Box::pin(self.deliver(delivery)).await,
                    Outbound::Live(None) => Some(Ending::Close(
                        CloseCode::from(CLOSE_SLOW_READER),
                        "too slow: resume with since",
                    )),
                },
                _ = self.clock.due() => Box::pin(self.on_timer()).await,
            };
            if let Some(ending) = step {
                break ending;
            }
        };
        if log::enabled(LogLevel::Debug) {
            let why = ending.describe();
            log::debug(
                "websocket closing",
                json!({ "room": self.room, "why": why }),
            );
        }
        Box::pin(self.close(ending)).await;
    }

    /// The welcome frame, a reset notice if the resume cannot be honoured, and the replay's
    /// starting point.
    async fn greet(&mut self) -> Result<(), WsError> {
        let limit = self.clock.timeout();
        let membership = &self.membership;
        let members = &membership.members;
        let users: Vec<&str> = members.users.iter().map(|user| &**user).collect();
        let welcome = protocol::welcome_frame(
            &self.room,
            &membership.epoch,
            membership.seq,
            members.count,
            &users,
        );
        let mut notice = None;
        if let Replay::From {
            after,
            reset,
            notify_gaps,
        } = membership.replay
        {
            if let Some(reason) = reset {
                notice = Some(protocol::reset_frame(
                    &membership.epoch,
                    membership.seq,
                    reason,
                ));
            }
            if after < membership.seq {
                self.replay = Some(Cursor {
                    after,
                    notify_gaps,
                    reset_sent: reset.is_some(),
                });
            }
        }
        let socket = &mut self.socket;
        within(limit, async {
            feed_frame(socket, welcome.into()).await?;
            if let Some(notice) = notice {
                feed_frame(socket, notice.into()).await?;
            }
            socket.flush().await
        })
        .await
    }

    /// Sends one page of the replay; an empty page, or one reaching the join seq, ends it.
    async fn on_page(&mut self, page: Result<Page, Unavailable>) -> Option<Ending> {
        let Ok(page) = page else {
            return Some(Ending::Close(
                CloseCode::Again,
                "broker unavailable: resume with since",
            ));
        };
        let limit = self.clock.timeout();
        let cursor = self.replay.as_mut()?;
        let mut notice = None;
        if page.gap && cursor.notify_gaps && !cursor.reset_sent {
            cursor.reset_sent = true;
            let membership = &self.membership;
            notice = Some(protocol::reset_frame(
                &membership.epoch,
                membership.seq,
                ResetReason::History,
            ));
        }
        let done = page.frames.is_empty() || page.last >= self.membership.seq;
        cursor.after = page.last;
        if done {
            self.replay = None;
        }
        // The whole page under one deadline: a peer that reads it a byte at a time is cut.
        let socket = &mut self.socket;
        let written = within(limit, async {
            if let Some(notice) = notice {
                feed_frame(socket, notice.into()).await?;
            }
            for frame in page.frames {
                feed_frame(socket, frame).await?;
            }
            socket.flush().await
        })
        .await;
        written.err().map(|_| Ending::Gone)
    }

    async fn on_inbound(&mut self, inbound: Option<Result<Message, WsError>>) -> Option<Ending> {
        self.clock.heard();
        let message = match inbound {
            None => return Some(Ending::Gone),
            Some(Ok(message)) => message,
            Some(Err(error)) => return Some(ending_for(error, &self.shared.metrics)),
        };
        if matches!(message, Message::Text(_) | Message::Ping(_))
            && let Err(retry_after) = self.shared.publish_rate.check(&mut self.rate)
        {
            return self.over_rate(retry_after).await;
        }
        self.refused_in_a_row = 0;
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => {
                self.shared.metrics.invalid_frame();
                Some(Ending::Close(
                    CloseCode::Unsupported,
                    "binary frames are not accepted",
                ))
            }
            // tungstenite answers pings itself and replies to a close before returning it.
            Message::Close(_) => Some(self.finish_close().await),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<Ending> {
        let metrics = &self.shared.metrics;
        metrics.message_received();
        let error = match protocol::parse_inbound(text, self.extended) {
            Ok(Inbound::Chat(message)) => {
                if let Some(identity) = &self.identity
                    && !identity.publish.allows(&self.room)
                {
                    return self.forbidden().await;
                }
                let user = self.identity.as_ref().map(|identity| &*identity.user_json);
                let chat = ChatParts::new(&message, user, protocol::now_ms());
                return match self.membership.publish(chat) {
                    Publishing::Accepted => None,
                    Publishing::Refused => Box::pin(self.on_published(Err(Unavailable))).await,
                    Publishing::Waiting(publish) => {
                        self.publishing = Some(publish);
                        None
                    }
                };
            }
            Ok(Inbound::Refresh(token)) => return self.refresh(&token).await,
            Err(invalid) => {
                metrics.invalid_frame();
                if !self.extended {
                    return Some(Ending::Close(CloseCode::Invalid, invalid.detail()));
                }
                protocol::error_frame(invalid.code(), invalid.detail())
            }
        };
        self.send_now(error).await
    }

    async fn on_published(&mut self, outcome: Result<(), Unavailable>) -> Option<Ending> {
        if outcome.is_ok() {
            return None;
        }
        self.shared.metrics.publish_refused();
        self.refused().await
    }

    /// Over the publish rate: the message is dropped. A plain client is closed (1008); an
    /// extended one is told when to retry, and closed if it keeps going regardless.
    async fn over_rate(&mut self, retry_after: Duration) -> Option<Ending> {
        self.shared.metrics.rate_limited();
        self.refused_in_a_row += 1;
        if !self.extended || self.refused_in_a_row > self.shared.config.burst {
            return Some(Ending::Close(CloseCode::Policy, "rate limit exceeded"));
        }
        let retry_after_ms = retry_after.as_millis().max(1) as u64;
        let frame = protocol::rate_limited_frame(retry_after_ms);
        self.send_now(frame).await
    }

    /// A user may read this room but not post in it.
    async fn forbidden(&mut self) -> Option<Ending> {
        const REASON: &str = "posting in this room is not granted by the token";
        self.refuse(CloseCode::Policy, "forbidden", REASON).await
    }

    /// A fresh token for the same user, still granted this room, puts the expiry off.
    async fn refresh(&mut self, token: &str) -> Option<Ending> {
        let auth = &self.shared.auth;
        let refreshed = match &self.identity {
            Some(current) => auth.refresh(token, current, &self.room, now_secs()),
            None => auth.verify(token, now_secs()).and_then(|fresh| {
                if fresh.rooms.allows(&self.room) {
                    Ok(fresh)
                } else {
                    Err(Refusal::Claims)
                }
            }),
        };
        match refreshed {
            Ok(fresh) if auth.mode != Mode::Off => {
                self.identify(Some(fresh));
                None
            }
            Ok(_) => None,
            Err(refusal) => {
                let frame = protocol::error_frame("forbidden", refusal.reason());
                self.send_now(frame).await
            }
        }
    }

    /// A message of this client's was not published: an error frame, or close 1013.
    async fn refused(&mut self) -> Option<Ending> {
        const REASON: &str = "broker unavailable: message not sent";
        self.refuse(CloseCode::Again, "unavailable", REASON).await
    }

    /// A plain client is closed with `close`; an extended one gets an error frame with
    /// `code` and stays.
    async fn refuse(
        &mut self,
        close: CloseCode,
        code: &str,
        reason: &'static str,
    ) -> Option<Ending> {
        if !self.extended {
            return Some(Ending::Close(close, reason));
        }
        self.send_now(protocol::error_frame(code, reason)).await
    }

    async fn send_now(&mut self, frame: String) -> Option<Ending> {
        let limit = self.clock.timeout();
        match send_message(&mut self.socket, limit, Message::Text(frame.into())).await {
            Ok(()) => None,
            Err(_) => Some(Ending::Gone),
        }
    }

    /// Writes `first` and whatever else is already queued, then flushes once, all under one
    /// deadline: a peer that stops reading mid-batch is cut like any other.
    async fn deliver(&mut self, first: Delivery) -> Option<Ending> {
        let extended = self.extended;
        let mut refused = false;
        let (socket, feed) = (&mut self.socket, &mut self.membership.feed);
        let written = within(self.clock.timeout(), async {
            let mut next = Some(first);
            let mut count = 0;
            while let Some(delivery) = next.take() {
                match delivery {
                    Delivery::Chat(frame) => feed_frame(socket, frame).await?,
                    Delivery::Notice(frame) if extended => feed_frame(socket, frame).await?,
                    Delivery::Notice(_) => {}
                    Delivery::PublishFailed => refused = true,
                }
                count += 1;
                if count < MAX_BATCH {
                    next = feed.try_recv();
                }
            }
            socket.flush().await
        })
        .await;
        if written.is_err() {
            return Some(Ending::Gone);
        }
        if refused {
            self.shared.metrics.publish_refused();
            return Box::pin(self.refused()).await;
        }
        None
    }

    async fn on_timer(&mut self) -> Option<Ending> {
        match self.clock.check(self.socket.get_ref().busy_since()) {
            Due::Nothing => None,
            Due::Silent => Some(Ending::Silent),
            Due::Unfinished => Some(Ending::Close(
                CloseCode::Policy,
                "message not completed within the peer timeout",
            )),
            Due::Expired => Some(Ending::Close(
                CloseCode::from(protocol::CLOSE_TOKEN_EXPIRED),
                "token expired: reconnect with a fresh one",
            )),
            Due::Ping => {
                let limit = self.clock.timeout();
                let ping = within(
                    limit,
                    futures_util::SinkExt::send(
                        &mut self.socket,
                        Message::Ping(Default::default()),
                    ),
                );
                ping.await.err().map(|_| Ending::Gone)
            }
        }
    }

    /// After the peer's close: let tungstenite send the reply and end the stream.
    async fn finish_close(&mut self) -> Ending {
        let limit = self.clock.timeout().min(CLOSE_WAIT);
        let _ = tokio::time::timeout(limit, async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
        Ending::Gone
    }
}
