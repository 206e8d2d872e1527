//! Where a usage's provider and model names lead in the book, before a
//! time is known: the part of [`PriceBook::resolve`] that does not depend on
//! `at` (the provider's canonical names, the model's name forms and
//! aliases, every one a string built and hashed), kept so that the entry in
//! force is found for many times at the cost of a binary search each.
//! [`PriceBook::resolve`] is [`PriceBook::listing`] then [`Listing::at`], so
//! the two cannot disagree.

use chrono::{DateTime, Utc};

use super::entry::{PriceEntry, ProviderDefaults};
use super::rating::UnpricedReason;
use super::resolve::{self, MatchKind};
use super::{PriceBook, Resolution};

/// The histories a provider/model pair can be priced from, in the order
/// [`PriceBook::resolve`] tries them.
#[derive(Debug, Clone, Default)]
pub struct Listing<'b> {
    /// Provider wildcards (`openai/*`) tried first, each for a canonical
    /// provider under which no form of the model is listed: the first in
    /// force at the time prices it.
    wildcards: Vec<Candidate<'b>>,
    /// The listed form found, if any: it decides once the wildcards before
    /// it are not in force, priced or not.
    listed: Option<(Candidate<'b>, MatchKind)>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate<'b> {
    history: &'b [PriceEntry],
    defaults: Option<&'b ProviderDefaults>,
}

impl PriceBook {
    /// Where `provider`/`model` lead in the book at any time.
    pub fn listing(&self, provider: &str, model: &str) -> Listing<'_> {
        let mut listing = Listing::default();
        for canonical in resolve::list_providers(provider) {
            let defaults = self.providers.get(&canonical);
            let forms = resolve::name_forms(&canonical, model);
            for (index, form) in forms.iter().enumerate() {
                let snapshot = index > 0;
                let listed = self
                    .entries
                    .get(&(canonical.clone(), form.clone()))
                    .map(|history| {
                        (
                            history,
                            if snapshot {
                                MatchKind::Snapshot
                            } else {
                                MatchKind::Exact
                            },
                        )
                    })
                    .or_else(|| {
                        let target = self.aliases.get(&(canonical.clone(), form.clone()))?;
                        let history = self.entries.get(&(canonical.clone(), target.clone()))?;
                        Some((
                            history,
                            if snapshot {
                                MatchKind::Snapshot
                            } else {
                                MatchKind::Alias
                            },
                        ))
                    });
                if let Some((history, matched_by)) = listed {
                    listing.listed = Some((Candidate { history, defaults }, matched_by));
                    return listing;
                }
            }
            if let Some(history) = self.entries.get(&(canonical.clone(), "*".to_owned())) {
                listing.wildcards.push(Candidate { history, defaults });
            }
        }
        listing
    }
}

impl<'b> Listing<'b> {
    /// The entry that prices the pair at `at`: exactly [`PriceBook::resolve`].
    pub fn at(&self, at: DateTime<Utc>) -> Result<Resolution<'b>, UnpricedReason> {
        for wildcard in &self.wildcards {
            if let Some(entry) = in_force(wildcard.history, at) {
                return Ok(Resolution {
                    entry,
                    matched_by: MatchKind::Wildcard,
                    defaults: wildcard.defaults,
                });
            }
        }
        match &self.listed {
            Some((listed, matched_by)) => in_force(listed.history, at)
                .map(|entry| Resolution {
                    entry,
                    matched_by: *matched_by,
                    defaults: listed.defaults,
                })
                .ok_or(UnpricedReason::NoPriceInForce),
            None => Err(UnpricedReason::UnknownModel),
        }
    }
}

/// The entry of `history` (sorted by `effective.from`) in force at `at`:
/// the latest that started by then, if it has not ended.
fn in_force(history: &[PriceEntry], at: DateTime<Utc>) -> Option<&PriceEntry> {
    history
        .iter()
        .rev()
        .find(|entry| entry.effective.from <= at)
        .filter(|entry| entry.effective.contains(at))
}

/// Pairs a [`Listings`] keeps before it starts over: usage names whatever
/// models its callers send, so the cache is bounded.
const MAX_LISTINGS: usize = 1_024;

/// The book's listings of the provider/model pairs a long-running caller
/// rates, each found once ([`PriceBook::rate_event_listed`]).
#[derive(Debug)]
pub struct Listings<'b> {
    book: &'b PriceBook,
    /// By `provider` NUL `model`, for providers without a NUL (so that the
    /// first NUL ends the provider and no two pairs share a key): looked up
    /// through `key` without allocating.
    seen: std::collections::HashMap<String, Listing<'b>>,
    key: String,
    /// The listing of a pair whose provider has a NUL, found every time.
    uncached: Listing<'b>,
}

impl<'b> Listings<'b> {
    pub fn new(book: &'b PriceBook) -> Self {
        Self {
            book,
            seen: Default::default(),
            key: String::new(),
            uncached: Listing::default(),
        }
    }

    /// The book's listing of `provider`/`model`.
    pub fn of(&mut self, provider: &str, model: &str) -> &Listing<'b> {
        if provider.contains('\0') {
            self.uncached = self.book.listing(provider, model);
            return &self.uncached;
        }
        self.key.clear();
        self.key.push_str(provider);
        self.key.push('\0');
        self.key.push_str(model);
        if !self.seen.contains_key(self.key.as_str()) {
            if self.seen.len() >= MAX_LISTINGS {
                self.seen.clear();
            }
            let listing = self.book.listing(provider, model);
            self.seen.insert(self.key.clone(), listing);
        }
        &self.seen[self.key.as_str()]
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    /// One [`Listings`] kept while every listed name is rated at times on
    /// both sides of every price change in the book (and names the book
    /// prices by wildcard, alias, snapshot, or not at all): each time, what
    /// the kept listing finds is what resolving afresh finds.
    /// Pairs whose names would run together in a key (NUL in a name) are
    /// listed as themselves.
    #[test]
    fn names_with_a_nul_are_listed_as_themselves() {
        let book = PriceBook::builtin().expect("the built-in book parses");
        let mut listings = Listings::new(&book);
        let at: DateTime<Utc> = "2026-06-10T12:00:00Z".parse().expect("time");
        for (provider, model) in [
            ("openai", "x\0gpt-4o"),
            ("openai\0x", "gpt-4o"),
            ("openai", "gpt-4o"),
            ("openai\0", "gpt-4o"),
            ("openai", "\0gpt-4o"),
        ] {
            let kept = listings.of(provider, model).at(at).map(|r| r.entry);
            let fresh = book.resolve(provider, model, at).map(|r| r.entry);
            assert_eq!(kept, fresh, "{provider:?}/{model:?}");
        }
    }

    #[test]
    fn a_kept_listing_finds_what_resolving_finds_at_every_time() {
        let book = PriceBook::builtin().expect("the built-in book parses");
        let mut listings = Listings::new(&book);
        let mut names: Vec<(String, String)> = book.entries.keys().cloned().collect();
        names.extend(book.aliases.keys().cloned());
        names.sort();
        let extra = [
            ("azure", "gpt-4o"),
            ("openai", "gpt-4o-2024-08-06"),
            ("bedrock", "us.anthropic.claude-3-5-sonnet-20240620-v1:0"),
            ("openai", "no-such-model"),
            ("no-such-provider", "gpt-4o"),
        ];
        names.extend(extra.iter().map(|(p, m)| (p.to_string(), m.to_string())));
        let mut times: Vec<DateTime<Utc>> = book
            .entries
            .values()
            .flatten()
            .flat_map(|e| [Some(e.effective.from), e.effective.until])
            .flatten()
            .flat_map(|t| [t - Duration::seconds(1), t])
            .collect();
        times.sort();
        times.dedup();
        assert!(times.len() > 2);
        for (provider, model) in &names {
            for at in &times {
                let kept = listings.of(provider, model).at(*at);
                let fresh = book.resolve(provider, model, *at);
                assert_eq!(
                    kept.as_ref().map(|r| (r.entry, r.matched_by, r.defaults)),
                    fresh.as_ref().map(|r| (r.entry, r.matched_by, r.defaults)),
                    "{provider}/{model} at {at}"
                );
            }
        }
    }
}
