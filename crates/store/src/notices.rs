//! Which expiry and revocation notices went out today (table `notices_sent`, migration 0005):
//! the domain's notice walk (`domain::notices`) claims a notice before it sends it, so each
//! certificate's notice goes out once a day, across restarts and across the instances sharing a
//! PostgreSQL database. [`domain::store::Store`]'s `notice_claim` and `notice_release` are these.

use crate::Db;
use domain::Result;
use time::Date;

impl Db {
    /// Claims the notices `keys` for `day` (a Taipei date): for each key, whether this call
    /// claimed it (false: already sent or being sent that day). Claims of earlier days are
    /// deleted.
    pub async fn notice_claim(&self, day: Date, keys: &[String]) -> Result<Vec<bool>> {
        let day = day.to_string();
        dispatch!(self, ops, p => ops::notice_claim(p, &day, keys).await)
    }

    /// Gives back claims whose mail could not be sent, so that the next walk tries again.
    pub async fn notice_release(&self, day: Date, keys: &[String]) -> Result<()> {
        let day = day.to_string();
        dispatch!(self, ops, p => ops::notice_release(p, &day, keys).await)
    }
}
