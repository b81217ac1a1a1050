//! The changes a handler run may ask for: [`Effect`], and [`CustomEffect`] for a handler with a
//! table of its own. Handlers name them through `crate::handlers` (their API); they are defined
//! here, beside the writer that applies them (`writer::apply`), because `db` must not depend
//! on `handlers`.

use crate::db::DbConnection;
use crate::db::tables::{
    keyword_alerts::AlertRecord,
    messages::{MessageEdit, MessageRow},
    user_activity::ActivityDelta,
};

/// A change a handler asks for; written with the run's event-log row.
#[derive(Debug)]
pub enum Effect {
    StoreMessage(Box<MessageRow>),
    EditMessage(Box<MessageEdit>),
    DeleteMessages(Vec<i64>),
    Activity(ActivityDelta),
    AlertSent(AlertRecord),
    /// A write to a handler's own table, defined in the handler's module.
    Custom(Box<dyn CustomEffect>),
}

impl Effect {
    /// Whether the effect records something already done outside (an alert delivered): such
    /// effects are kept when the run fails, so that a retry does not do it again. The others
    /// are applied only with a successful run (a retry produces them again).
    pub fn records_delivery(&self) -> bool {
        match self {
            Effect::AlertSent(_) => true,
            Effect::Custom(custom) => custom.records_delivery(),
            _ => false,
        }
    }
}

/// A handler's own kind of write, so that a handler with a table of its own needs no variant
/// here. Applied in the writer's transaction together with the run's other effects, its
/// event-log row and the inbox status. Make it idempotent (insert-or-ignore): two runs can
/// record the same thing (an event delivered twice, two processes).
pub trait CustomEffect: Send + Sync + std::fmt::Debug {
    fn apply(&self, conn: &mut DbConnection) -> Result<(), diesel::result::Error>;
    /// See [`Effect::records_delivery`].
    fn records_delivery(&self) -> bool {
        false
    }
}
