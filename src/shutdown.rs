//! The shutdown signal every task holds; the drain completes when all holders are gone.

use tokio::sync::watch;

/// Held by every connection task. `changed()` fires once when shutdown starts; dropping the
/// last clone is what [`Trigger::drained`] waits for.
#[derive(Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// Held by the server: starts the shutdown and waits for the drain.
pub struct Trigger {
    sender: watch::Sender<bool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (Trigger { sender }, Shutdown { receiver })
}

impl Shutdown {
    pub fn is_signalled(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown has started (at once if it already has).
    pub async fn signalled(&mut self) {
        // An error means the trigger is gone, which is a shutdown too.
        let _ = self.receiver.wait_for(|started| *started).await;
    }
}

impl Trigger {
    pub fn start(&self) {
        self.sender.send_replace(true);
    }

    /// Resolves when every `Shutdown` clone has been dropped.
    pub async fn drained(&self) {
        self.sender.closed().await;
    }

    pub fn remaining(&self) -> usize {
        self.sender.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drained_waits_for_every_holder() {
        let (trigger, shutdown) = channel();
        let mut task_copy = shutdown.clone();
        drop(shutdown);
        let task = tokio::spawn(async move {
            task_copy.signalled().await;
        });
        assert_eq!(trigger.remaining(), 1);
        trigger.start();
        task.await.unwrap();
        trigger.drained().await;
        assert_eq!(trigger.remaining(), 0);
    }
}
