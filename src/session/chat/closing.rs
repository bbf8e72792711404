//! How a chat session ends: a restart delivers what was published and still takes the peer's
//! in-flight messages; a close on the peer's account costs nothing more than its close.

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::ChatSession;
use crate::protocol::{self, ChatParts, Inbound};
use crate::session::Ending;
use crate::session::outbound::{CLOSE_WAIT, send_close};

impl ChatSession<'_> {
    pub(super) async fn close(mut self, ending: Ending) {
        let limit = self.clock.timeout();
        // A message the client sent is not dropped because its session ends.
        if let Some(publish) = self.publishing.take() {
            let _ = publish.await;
        }
        if !matches!(ending, Ending::Shutdown) {
            self.membership.feed.stop();
        }
        if let Some(address) = self.address {
            address.publish_end(self.rate);
        }
        match ending {
            Ending::Gone => {}
            Ending::Silent => {
                let _ = send_close(&mut self.socket, limit, None).await;
            }
            Ending::Shutdown => {
                // Deliver what was published before the close, then keep taking the peer's
                // in-flight messages until it answers the close.
                while let Some(delivery) = self.membership.feed.try_recv() {
                    if self.deliver(delivery).await.is_some() {
                        return;
                    }
                }
                self.close_for_restart().await;
            }
            Ending::Close(code, reason) => self.close_and_discard(code, reason).await,
        }
    }

    /// Closes on the peer's account (a breach of the rules, a bad frame): says why, ends our
    /// side of the stream, and takes what the peer still sends unread and only up to a
    /// bound, so a flooder costs nothing more while it reads the close.
    async fn close_and_discard(&mut self, code: CloseCode, reason: &'static str) {
        /// Bytes taken unread after the close, at most.
        const DISCARD_MAX: usize = 64 * 1024;
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let limit = self.clock.timeout();
        if send_close(&mut self.socket, limit, Some(frame))
            .await
            .is_err()
        {
            return;
        }
        let raw = self.socket.get_mut();
        let _ = tokio::time::timeout(limit.min(CLOSE_WAIT), async {
            raw.shutdown().await?;
            let mut scratch = [0; 4096];
            let mut taken = 0;
            while taken < DISCARD_MAX {
                match raw.read(&mut scratch).await? {
                    0 => break,
                    read => taken += read,
                }
            }
            std::io::Result::Ok(())
        })
        .await;
    }

    /// Sends close 1012 and waits for the peer's. Chat messages the peer sent before it saw
    /// our close are still published (within its rate), so a deploy loses none of them.
    async fn close_for_restart(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::Restart,
            reason: "server restart".into(),
        };
        let limit = self.clock.timeout();
        if send_close(&mut self.socket, limit, Some(frame))
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(limit.min(CLOSE_WAIT), async {
            while let Some(Ok(message)) = self.socket.next().await {
                if let Message::Text(text) = message
                    && let Ok(Inbound::Chat(chat)) =
                        protocol::parse_inbound(text.as_str(), self.extended)
                    && self
                        .identity
                        .as_ref()
                        .is_none_or(|identity| identity.publish.allows(&self.room))
                    && self.shared.publish_rate.check(&mut self.rate).is_ok()
                {
                    self.shared.metrics.message_received();
                    let user = self.identity.as_ref().map(|identity| &*identity.user_json);
                    let chat = ChatParts::new(&chat, user, protocol::now_ms());
                    let _ = self.membership.publish(chat).outcome().await;
                }
            }
        })
        .await;
    }
}
