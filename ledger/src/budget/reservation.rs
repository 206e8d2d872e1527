//! Which budgets a reservation holds against: the call a caller is about
//! to make, described before its usage is known, and the rule that says
//! whether a budget's scope could count that call's cost.
//!
//! A reservation must hold against every budget the call's event could
//! count toward, or a hard limit would not be exact. So a narrowing the
//! caller leaves open is taken to apply: a reservation that names no
//! provider holds against a budget on `openai`, and one without the label a
//! budget narrows to holds against it too. What the caller does name must
//! match, by the same rules as the spend ([`Scope::matches_model`] for the
//! model).

use std::collections::BTreeMap;

use super::{Scope, UserScope};
use crate::PriceBook;

/// The call a reservation is made for, as far as the caller knows it.
#[derive(Debug, Clone, Copy)]
pub struct PlannedCall<'a> {
    pub tenant_id: &'a str,
    pub user_id: Option<&'a str>,
    /// The name of the API key reserving (the key that will append the
    /// call's usage).
    pub api_key: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
}

impl Scope {
    /// Whether the cost of `call` could count toward a budget with this
    /// scope (see the module docs).
    pub fn may_count(&self, call: &PlannedCall<'_>, book: &PriceBook) -> bool {
        let provider_ok = match (&self.provider, call.provider) {
            (Some(wanted), Some(provider)) => wanted == provider,
            _ => true,
        };
        let model_ok = match call.model {
            Some(model) => self.matches_model(call.provider.unwrap_or_default(), model, book),
            None => true,
        };
        let label_ok = self.label.as_ref().is_none_or(|label| {
            call.labels
                .get(&label.key)
                .is_none_or(|value| *value == label.value)
        });
        let user_ok = match (&self.user, call.user_id) {
            (UserScope::One(wanted), Some(user)) => wanted == user,
            _ => true,
        };
        // A per-key budget counts only its key's usage; the reservation is
        // made with the key that will report it.
        let key_ok = self
            .api_key
            .as_ref()
            .is_none_or(|wanted| call.api_key == Some(wanted.as_str()));
        self.tenant.covers(call.tenant_id)
            && user_ok
            && key_ok
            && provider_ok
            && model_ok
            && label_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{LabelMatch, TenantScope};

    fn book() -> PriceBook {
        PriceBook::builtin().expect("the built-in book parses")
    }

    fn call<'a>(
        provider: Option<&'a str>,
        model: Option<&'a str>,
        labels: &'a BTreeMap<String, String>,
    ) -> PlannedCall<'a> {
        PlannedCall {
            tenant_id: "acme",
            user_id: None,
            api_key: None,
            provider,
            model,
            labels,
        }
    }

    #[test]
    fn what_the_caller_leaves_open_is_held_and_what_it_names_must_match() {
        let scope = Scope {
            tenant: TenantScope::Every,
            user: UserScope::All,
            api_key: None,
            provider: Some("openai".into()),
            model: Some("gpt-4o".into()),
            label: Some(LabelMatch {
                key: "team".into(),
                value: "support".into(),
            }),
        };
        let none = BTreeMap::new();
        let support = BTreeMap::from([("team".to_owned(), "support".to_owned())]);
        let sales = BTreeMap::from([("team".to_owned(), "sales".to_owned())]);
        let book = book();
        assert!(scope.may_count(&call(None, None, &none), &book));
        assert!(scope.may_count(
            &call(Some("openai"), Some("gpt-4o-2024-08-06"), &support),
            &book
        ));
        assert!(!scope.may_count(&call(Some("anthropic"), None, &none), &book));
        assert!(!scope.may_count(&call(Some("openai"), Some("gpt-4.1"), &none), &book));
        assert!(!scope.may_count(&call(None, None, &sales), &book));
        let other_tenant = Scope {
            tenant: TenantScope::One("globex".into()),
            user: UserScope::All,
            api_key: None,
            provider: None,
            model: None,
            label: None,
        };
        assert!(!other_tenant.may_count(&call(None, None, &none), &book));
    }

    #[test]
    fn a_user_budget_holds_for_its_user_and_for_calls_that_name_none() {
        let alice = Scope {
            tenant: TenantScope::One("acme".into()),
            user: UserScope::One("alice".into()),
            api_key: None,
            provider: None,
            model: None,
            label: None,
        };
        let none = BTreeMap::new();
        let book = book();
        let as_user = |user_id| PlannedCall {
            user_id,
            ..call(None, None, &none)
        };
        assert!(alice.may_count(&as_user(Some("alice")), &book));
        assert!(alice.may_count(&as_user(None), &book));
        assert!(!alice.may_count(&as_user(Some("bob")), &book));
    }
}
