//! [`Effects`]: the changes one handler run asks for, collected while it runs and written by
//! the writer in the same transaction as the run's event-log row (and, for forwarded events,
//! the inbox status), so they take effect exactly once.

use super::Effect;

/// The changes a handler run asks for.
#[derive(Debug, Default)]
pub struct Effects(Vec<Effect>);

impl Effects {
    pub fn push(&mut self, effect: Effect) {
        self.0.push(effect);
    }

    pub fn into_inner(self) -> Vec<Effect> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
