//! Write transactions that carry their backend's turn to write, so the turn lasts exactly as
//! long as the transaction.

use sqlx::{Database, Transaction};
use std::ops::{Deref, DerefMut};

/// A write transaction and the turn it was started in. `Turn` is the backend's: a queue guard
/// on SQLite, nothing on PostgreSQL.
pub(crate) struct WriteTx<DB: Database, Turn> {
    // Declared before `turn` so that on drop the transaction queues its rollback before the
    // next writer is let in; the rollback still runs a moment later on the connection's worker,
    // and that next writer's `BEGIN IMMEDIATE` waits it out on the busy timeout.
    tx: Transaction<'static, DB>,
    turn: Turn,
}

impl<DB: Database, Turn> WriteTx<DB, Turn> {
    pub(crate) fn new(tx: Transaction<'static, DB>, turn: Turn) -> Self {
        Self { tx, turn }
    }

    /// The turn is given up only once the database has answered, so no writer queued behind
    /// this one ever finds the database's own lock still taken.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        let Self { tx, turn } = self;
        let done = tx.commit().await;
        drop(turn);
        done
    }

    /// As [`WriteTx::commit`]: an explicit rollback hands the next writer a released lock,
    /// where a drop would leave it to wait out the queued rollback.
    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        let Self { tx, turn } = self;
        let done = tx.rollback().await;
        drop(turn);
        done
    }
}

// Like `Transaction`, to the connection: the queries keep running on `&mut *tx` unchanged.
impl<DB: Database, Turn> Deref for WriteTx<DB, Turn> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<DB: Database, Turn> DerefMut for WriteTx<DB, Turn> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}
