//! The book's list price of one request split by token kind, each part
//! priced under the card the whole request was priced with.
//!
//! Every part is the difference of two list prices: the request as it was,
//! and the request with the part's tokens taken out of the charge. Prompt
//! tokens are taken out of the charge but kept in the prompt's length (it
//! picks the long-context tier), as the rating treats an unpriced prompt
//! component; output tokens do not pick a tier and are simply dropped. So
//! tiers, service tiers and provider defaults apply exactly as they do to
//! real usage, and no rate is looked up here.

use ledger::pricebook::event_usage::quantities;
use ledger::pricebook::{ListPricer, Listing, Tokens};
use ledger::{PriceBook, UsageEvent};
use rust_decimal::Decimal;

/// The parts of one request's list price.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts {
    pub list_cost: Decimal,
    /// Uncached input, cache reads and cache writes.
    pub input: Decimal,
    /// Output and reasoning.
    pub output: Decimal,
    pub cache_read: Decimal,
    /// The cache reads at the uncached input rate.
    pub cache_read_at_input: Decimal,
    /// 5-minute and 1-hour cache writes.
    pub cache_write: Decimal,
    /// The cache writes at the uncached input rate.
    pub cache_write_at_input: Decimal,
}

/// The list price of `event`'s usage at its own model and time, split;
/// `None` when the book has no list price for it.
pub fn parts(book: &PriceBook, event: &UsageEvent) -> Option<Parts> {
    split(book, event).map(|(parts, _)| parts)
}

/// [`parts`], and whether the model's price in force has a rate of its own
/// for cache reads (see [`supports_caching`]), from one resolution.
///
/// Every variant keeps the request's prompt length (tokens taken out of the
/// charge stay in the prompt as unpriced tokens would), so every variant is
/// priced on the card the request was: the [`ListPricer`] prices each on
/// that card with the rating's own arithmetic, which gives exactly what
/// [`PriceBook::rate`] gives the variant (the unit test below holds the two
/// side by side).
pub fn split(book: &PriceBook, event: &UsageEvent) -> Option<(Parts, bool)> {
    split_listed(&book.listing(&event.provider, &event.model), event)
}

/// [`split`] with the book's [`Listing`] of `event`'s provider and model
/// already found: a rollup finds it once per pair
/// ([`ledger::pricebook::Listings`]), not once per event.
pub fn split_listed(listing: &Listing<'_>, event: &UsageEvent) -> Option<(Parts, bool)> {
    let q = quantities(event);
    let resolution = listing.at(event.created_at).ok()?;
    let pricer = ListPricer::new(
        resolution,
        event.service_tier.unwrap_or_default(),
        q.prompt_tokens(),
    )?;
    let tokens = Tokens::of(&q);
    let list = |t: &Tokens| pricer.list_cost(t, &q.calls);
    let full = list(&tokens)?;
    // the cost of the request less the cost of the variant, skipped (0) when
    // the variant changes nothing
    let without = |moved: u64, edit: fn(&mut Tokens)| -> Option<Decimal> {
        if moved == 0 {
            return Some(Decimal::ZERO);
        }
        let mut edited = tokens;
        edit(&mut edited);
        Some(full - list(&edited)?)
    };
    let read = tokens.cache_read;
    let writes = tokens.cache_write_5m + tokens.cache_write_1h;
    let prompt = tokens.input_uncached + read + writes;
    let output = without(tokens.output + tokens.reasoning, |t| {
        (t.output, t.reasoning) = (0, 0)
    })?;
    // without per-call charges the input is all that is left once the output
    // is out: one pricing fewer for nearly every request
    let input = if q.calls.values().all(|n| *n == 0) {
        full - output
    } else {
        without(prompt, |t| {
            (
                t.input_uncached,
                t.cache_read,
                t.cache_write_5m,
                t.cache_write_1h,
            ) = (0, 0, 0, 0)
        })?
    };
    let cache_read = without(read, |t| t.cache_read = 0)?;
    let cache_write = without(writes, |t| (t.cache_write_5m, t.cache_write_1h) = (0, 0))?;
    // the same tokens back in the charge as uncached input
    let at_input = |moved: u64, edit: fn(&mut Tokens)| -> Option<Decimal> {
        if moved == 0 {
            return Some(Decimal::ZERO);
        }
        let mut edited = tokens;
        edit(&mut edited);
        edited.input_uncached += moved;
        Some(list(&edited)? - full)
    };
    let cache_read_at_input = at_input(read, |t| t.cache_read = 0)? + cache_read;
    let cache_write_at_input =
        at_input(writes, |t| (t.cache_write_5m, t.cache_write_1h) = (0, 0))? + cache_write;
    let caching = pricer.entry().tariff.standard.base.cache_read.is_some();
    Some((
        Parts {
            list_cost: full,
            input,
            output,
            cache_read,
            cache_read_at_input,
            cache_write,
            cache_write_at_input,
        },
        caching,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use chrono::{DateTime, Utc};
    use ledger::pricebook::rating::UNPRICED_INPUT;
    use ledger::pricebook::{RatingRequest, ServiceTier, UsageQuantities};
    use ledger::ValidationLimits;
    use proptest::prelude::*;

    use super::*;

    /// The split as the difference of whole ratings by [`PriceBook::rate`],
    /// prompt tokens taken out of the charge by moving them to an unpriced
    /// prompt component: the definition [`split`] must equal exactly.
    fn parts_by_rating(book: &PriceBook, event: &UsageEvent) -> Option<Parts> {
        let q = quantities(event);
        let list = |q: &UsageQuantities| {
            book.rate(&RatingRequest {
                tenant: &event.tenant_id,
                provider: &event.provider,
                model: &event.model,
                at: event.created_at,
                service_tier: event.service_tier.unwrap_or_default(),
                quantities: q,
                supplied_cost: None,
            })
            .list_cost
        };
        let uncharge = |e: &mut UsageQuantities, tokens: u64| {
            *e.unpriced.entry(UNPRICED_INPUT[0].to_owned()).or_default() += tokens;
        };
        let full = list(&q)?;
        let without = |tokens: u64, edit: &dyn Fn(&mut UsageQuantities)| -> Option<Decimal> {
            if tokens == 0 {
                return Some(Decimal::ZERO);
            }
            let mut edited = q.clone();
            edit(&mut edited);
            Some(full - list(&edited)?)
        };
        let read = q.cache_read;
        let writes = q.cache_write_5m + q.cache_write_1h;
        let prompt = q.input_uncached + read + writes;
        let output = without(q.output + q.reasoning, &|e| {
            (e.output, e.reasoning) = (0, 0)
        })?;
        let input = if q.calls.values().all(|n| *n == 0) {
            full - output
        } else {
            without(prompt, &|e| {
                let n = e.input_uncached + e.cache_read + e.cache_write_5m + e.cache_write_1h;
                uncharge(e, n);
                (
                    e.input_uncached,
                    e.cache_read,
                    e.cache_write_5m,
                    e.cache_write_1h,
                ) = (0, 0, 0, 0);
            })?
        };
        let cache_read = without(read, &|e| {
            uncharge(e, e.cache_read);
            e.cache_read = 0;
        })?;
        let cache_write = without(writes, &|e| {
            uncharge(e, e.cache_write_5m + e.cache_write_1h);
            (e.cache_write_5m, e.cache_write_1h) = (0, 0);
        })?;
        let at_input = |tokens: u64, edit: &dyn Fn(&mut UsageQuantities)| -> Option<Decimal> {
            if tokens == 0 {
                return Some(Decimal::ZERO);
            }
            let mut moved = q.clone();
            edit(&mut moved);
            moved.input_uncached += tokens;
            Some(list(&moved)? - full)
        };
        Some(Parts {
            list_cost: full,
            input,
            output,
            cache_read,
            cache_read_at_input: at_input(read, &|e| e.cache_read = 0)? + cache_read,
            cache_write,
            cache_write_at_input: at_input(writes, &|e| {
                (e.cache_write_5m, e.cache_write_1h) = (0, 0)
            })? + cache_write,
        })
    }

    /// Models with long-context tiers, service tiers by multiplier and by
    /// rates of their own, per-call charges, cache rates or none, and one
    /// the book does not know.
    const MODELS: &[(&str, &str)] = &[
        ("openai", "gpt-5.5"),
        ("openai", "gpt-5.4"),
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "o4-mini"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-opus-4-1"),
        ("google", "gemini-2.5-pro"),
        ("bedrock", "anthropic.claude-3-5-sonnet"),
        ("deepseek", "deepseek-chat"),
        ("openai", "no-such-model"),
    ];

    #[allow(clippy::too_many_arguments)]
    fn event(
        model: usize,
        prompt: u32,
        cached: u32,
        writes: (u32, u32),
        completion: u32,
        reasoning: u32,
        tier: usize,
        extras: (u32, u32, u32),
    ) -> UsageEvent {
        let (provider, model) = MODELS[model % MODELS.len()];
        let (write_5m, write_1h) = writes;
        let (web_search, audio_in, audio_out) = extras;
        let now: DateTime<Utc> = "2026-06-10T12:00:00Z".parse().unwrap_or_default();
        let mut event = UsageEvent::from_request_value(
            &serde_json::json!({
                "tenant_id": "acme",
                "provider": provider,
                "model": model,
                "prompt_tokens": prompt + cached + write_5m + write_1h + audio_in,
                "cached_prompt_tokens": cached,
                "cache_write_tokens": write_5m,
                "completion_tokens": completion + reasoning + audio_out,
                "reasoning_tokens": reasoning,
                "created_at": "2026-06-10T11:00:00Z",
            }),
            now,
            &ValidationLimits::default(),
        )
        .unwrap_or_else(|error| panic!("test event invalid: {error}"));
        event.cache_write_1h_tokens = write_1h;
        event.service_tier = [
            None,
            Some(ServiceTier::Standard),
            Some(ServiceTier::Batch),
            Some(ServiceTier::Flex),
            Some(ServiceTier::Priority),
        ][tier % 5];
        if web_search > 0 {
            event.calls.insert("web_search".into(), web_search);
        }
        if audio_in > 0 {
            event.unpriced_tokens.insert("input_audio".into(), audio_in);
        }
        if audio_out > 0 {
            event
                .unpriced_tokens
                .insert("output_audio".into(), audio_out);
        }
        event
    }

    static BOOK: LazyLock<PriceBook> =
        LazyLock::new(|| PriceBook::builtin().expect("the built-in book parses"));

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn the_split_equals_the_difference_of_whole_ratings(
            model in 0..MODELS.len(),
            prompt in prop_oneof![0..5_000_u32, 150_000..400_000_u32],
            cached in prop_oneof![Just(0_u32), 0..300_000_u32],
            write_5m in prop_oneof![Just(0_u32), 0..50_000_u32],
            write_1h in prop_oneof![Just(0_u32), 0..50_000_u32],
            completion in 0..20_000_u32,
            reasoning in prop_oneof![Just(0_u32), 0..20_000_u32],
            tier in 0..5_usize,
            web_search in prop_oneof![Just(0_u32), 0..5_u32],
            audio_in in prop_oneof![Just(0_u32), 0..2_000_u32],
            audio_out in prop_oneof![Just(0_u32), 0..2_000_u32],
        ) {
            let book = &*BOOK;
            let event = event(
                model,
                prompt,
                cached,
                (write_5m, write_1h),
                completion,
                reasoning,
                tier,
                (web_search, audio_in, audio_out),
            );
            let expected = parts_by_rating(book, &event);
            let split = split(book, &event);
            prop_assert_eq!(split.as_ref().map(|s| &s.0), expected.as_ref());
            // a rollup's kept listing, found for another event of the pair first
            let mut listings = ledger::pricebook::Listings::new(book);
            let earlier = UsageEvent {
                created_at: event.created_at - chrono::Duration::days(400),
                ..event.clone()
            };
            split_listed(listings.of(&earlier.provider, &earlier.model), &earlier);
            let kept = split_listed(listings.of(&event.provider, &event.model), &event);
            prop_assert_eq!(&kept, &split);
            let caching = book
                .resolve(&event.provider, &event.model, event.created_at)
                .is_ok_and(|r| r.entry.tariff.standard.base.cache_read.is_some());
            if let Some((_, supports)) = split {
                prop_assert_eq!(supports, caching);
            }
        }
    }

    #[test]
    fn the_generated_requests_reach_every_kind_of_card() {
        let book = PriceBook::builtin().expect("the built-in book parses");
        // long context on a priority card with its own rates, a batch
        // multiplier, a per-call charge: each priced, so the property above
        // compares figures rather than two Nones
        for event in [
            event(0, 300_000, 1_000, (0, 0), 10, 0, 4, (0, 0, 0)),
            event(5, 250_000, 1_000, (500, 500), 10, 0, 2, (2, 0, 0)),
            event(2, 1_000, 0, (0, 0), 10, 0, 0, (3, 100, 0)),
        ] {
            let (parts, _) = split(&book, &event)
                .unwrap_or_else(|| panic!("not listed: {:?}", book.rate_event(&event).provenance));
            assert!(parts.list_cost > Decimal::ZERO, "{event:?}");
            assert_eq!(Some(parts), parts_by_rating(&book, &event));
        }
    }
}
