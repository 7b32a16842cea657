//! PostgreSQL's writes: a transaction, or one statement on a connection of the pool
//! (autocommit), behind one type so the shared queries run on `&mut *tx` either way.

use sqlx::pool::PoolConnection;
use sqlx::{Database, Transaction};
use std::ops::{Deref, DerefMut};

/// A write transaction, or a connection for one statement.
pub(crate) enum WriteTx<DB: Database> {
    Tx(Transaction<'static, DB>),
    Single(PoolConnection<DB>),
}

impl<DB: Database> WriteTx<DB> {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Tx(tx) => tx.commit().await,
            Self::Single(_) => Ok(()),
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Tx(tx) => tx.rollback().await,
            Self::Single(_) => Ok(()),
        }
    }
}

// Like `Transaction`, to the connection: the queries keep running on `&mut *tx` unchanged.
impl<DB: Database> Deref for WriteTx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Tx(tx) => tx,
            Self::Single(c) => c,
        }
    }
}

impl<DB: Database> DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Self::Tx(tx) => tx,
            Self::Single(c) => c,
        }
    }
}
