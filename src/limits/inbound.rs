//! The inbound budget: bytes of large messages being received, over every connection.
//!
//! A message may hold a little on its own (the gate's allowance); what it holds beyond that
//! is taken from here as it arrives and given back when it is complete. A connection whose
//! message would overdraw the budget is refused (close 1013).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of large messages being received by every connection together.
#[derive(Debug)]
pub struct InboundBudget {
    used: AtomicUsize,
    max: usize,
}

impl InboundBudget {
    pub fn new(max: usize) -> InboundBudget {
        InboundBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub fn take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.max {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_budget_and_gets_it_back() {
        let budget = InboundBudget::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(50));
        assert!(budget.take(40));
        budget.give_back(100);
        assert_eq!(budget.used(), 0);
    }
}
