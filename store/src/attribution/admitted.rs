//! What the bounded upsert ([`super::add_bounded`]) knows once it is done:
//! the values each (day, tenant, key) group of its batch has rows under in
//! `usage_attribution_daily` (besides [`super::UNLABELLED`] and
//! [`super::OTHER`]), i.e. those it read under the group's lock plus those
//! it admitted itself. The group locks are held until the transaction
//! ends, so no other batch adds a value to these groups meanwhile, and a
//! later statement of the same transaction asking the table would get the
//! same answer: the optimization fold asks here instead
//! ([`crate::optimize::rollup::fold_rolled`]). A rebuild
//! ([`super::rebuild`]) takes no group lock, but the table lock the batch
//! takes before its read keeps it out until the batch commits.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::Group;

/// The values with a row, per key, tenant and day of one batch; nested so
/// that a lookup borrows the caller's strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    by_key: BTreeMap<String, ByTenant>,
}

/// One key's values with a row, per tenant and day.
type ByTenant = BTreeMap<String, BTreeMap<DateTime<Utc>, BTreeSet<String>>>;

impl Admitted {
    /// `groups` as [`super::fold`] left them: every group of the batch,
    /// with the values read and those admitted.
    pub(super) fn of(groups: BTreeMap<Group, BTreeSet<String>>) -> Self {
        let mut by_key: BTreeMap<String, ByTenant> = BTreeMap::new();
        for ((day, tenant, key), values) in groups {
            by_key
                .entry(key)
                .or_default()
                .entry(tenant)
                .or_default()
                .insert(day, values);
        }
        Self { by_key }
    }

    /// Whether `value` has a row of `key` on `tenant`'s `day`; `None` when
    /// that group was not the batch's, so only the table can tell.
    pub fn has_row(
        &self,
        day: DateTime<Utc>,
        tenant: &str,
        key: &str,
        value: &str,
    ) -> Option<bool> {
        let values = self.by_key.get(key)?.get(tenant)?.get(&day)?;
        Some(values.contains(value))
    }
}
