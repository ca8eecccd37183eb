//! A tenant's subscription timeline read as terms: the plan, add-ons, billing cycle and
//! whether it is canceled at an instant ([`Tenant::terms_at`]), the stretches of a usage
//! period each set of terms covers ([`Tenant::segments`]), and the terms that govern a
//! period's limits, rates and add-on charges ([`Tenant::governing_terms`]). Pure.
//!
//! The timeline is the configured starting state (`plan`, `addons`, `billing_cycle`) and
//! then [`crate::pricing::PlanChange`]s in time order: configured `plan_changes` and the
//! subscription events of CONTRACT section 10 ([`crate::subscription`]).
//!
//! Rules (CONTRACT section 10: "a change applies from `effective_at` on, as a plan change
//! inside a period does"):
//!
//! - the base fee is prorated by the seconds each plan (and billing cycle) was in effect;
//!   canceled stretches have none;
//! - limits, rates and add-on prices are those of the *governing* terms: the last stretch of
//!   the period (as known at `now`) with a subscription, so that a tenant who cancels
//!   mid-period pays its last plan's usage lines and the add-ons it held at cancellation;
//!   add-ons are charged for the units held at the end of that stretch (the period's end
//!   when not canceled);
//! - a usage event later than a cancellation's instant (and before a new subscription) is
//!   `no_subscription` ([`Tenant::canceled_before`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::plan::limit_with;
use super::{Arith, BillingCycle, Plan, PricingError, Tenant};
use crate::meter::MeterId;
use crate::period::Period;

/// The subscription terms at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'a> {
    /// The plan (for a canceled subscription, the plan it left).
    pub plan: &'a Arc<Plan>,
    /// Add-on name -> units held.
    pub addons: &'a BTreeMap<String, u32>,
    pub billing_cycle: BillingCycle,
    pub canceled: bool,
}

impl Terms<'_> {
    /// Units held of add-on `name` (none when canceled).
    pub fn addon_units(&self, name: &str) -> u32 {
        if self.canceled {
            return 0;
        }
        self.addons.get(name).copied().unwrap_or(0)
    }

    /// The limit of `meter` under these terms (see [`Tenant::limit`]); never panics.
    pub fn limit(&self, meter: MeterId, first_period: bool) -> Option<Decimal> {
        self.try_limit(meter, first_period)
            .unwrap_or(Some(Decimal::MAX))
    }

    /// [`Self::limit`], checked.
    pub fn try_limit(
        &self,
        meter: MeterId,
        first_period: bool,
    ) -> Result<Option<Decimal>, PricingError> {
        let none = BTreeMap::new();
        let addons = if self.canceled { &none } else { self.addons };
        limit_with(Arith::Checked, self.plan, addons, meter, first_period)
    }
}

/// A stretch of a usage period under one set of terms.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub plan: &'a Arc<Plan>,
    /// The add-ons held at the end of the stretch.
    pub addons: &'a BTreeMap<String, u32>,
    pub billing_cycle: BillingCycle,
    pub canceled: bool,
    /// Unix seconds.
    pub start: i64,
    pub secs: i64,
}

impl<'a> Segment<'a> {
    fn terms(&self) -> Terms<'a> {
        Terms {
            plan: self.plan,
            addons: self.addons,
            billing_cycle: self.billing_cycle,
            canceled: self.canceled,
        }
    }
}

/// The last segment with a subscription, else the last one; a period without segments
/// (never: a period has at least one) falls back to the terms at the period's start.
pub(super) fn governing_segment<'a>(
    segments: &[Segment<'a>],
    t: &'a Tenant,
    period: Period,
    now: DateTime<Utc>,
) -> Terms<'a> {
    segments
        .iter()
        .rev()
        .find(|s| !s.canceled)
        .or(segments.last())
        .map(Segment::terms)
        .unwrap_or_else(|| t.terms_at(now.max(period.start_utc())))
}

impl Tenant {
    /// The terms in effect at `t`: the starting state with every change at or before `t`
    /// applied.
    pub fn terms_at(&self, t: DateTime<Utc>) -> Terms<'_> {
        let mut terms = Terms {
            plan: &self.plan,
            addons: &self.addons,
            billing_cycle: self.billing_cycle,
            canceled: false,
        };
        for c in self.plan_changes.iter().take_while(|c| c.at <= t) {
            terms.plan = &c.plan;
            if let Some(a) = &c.addons {
                terms.addons = a;
            }
            if let Some(b) = c.billing_cycle {
                terms.billing_cycle = b;
            }
            terms.canceled = c.canceled;
        }
        terms
    }

    /// The add-ons held after every change of the timeline.
    pub fn latest_addons(&self) -> &BTreeMap<String, u32> {
        self.plan_changes
            .iter()
            .rev()
            .find_map(|c| c.addons.as_ref())
            .unwrap_or(&self.addons)
    }

    /// Whether the tenant has a subscription at `t`: `Some(since)` when the last change at
    /// or before `t` is a cancellation strictly before `t` (CONTRACT section 10: usage
    /// events later than `effective_at` are `no_subscription`).
    pub fn canceled_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let last = self.plan_changes.iter().rev().find(|c| c.at <= t)?;
        (last.canceled && last.at < t).then_some(last.at)
    }

    /// The stretches of `period` under one set of terms, in time order, as known at `now`
    /// (changes after `now` are not yet in effect). Consecutive stretches with the same
    /// plan, billing cycle and cancellation are merged (an add-on change alone does not
    /// prorate the base fee); a merged stretch keeps the add-ons held at its end.
    pub fn segments(&self, period: Period, now: DateTime<Utc>) -> Vec<Segment<'_>> {
        let start = self.terms_at(period.start_utc());
        let mut cuts: Vec<(i64, Terms<'_>)> = vec![(period.start, start)];
        let known_until = now.max(period.start_utc());
        let mut cur = start;
        for c in &self.plan_changes {
            let at = c.at.timestamp();
            if c.at <= period.start_utc() {
                continue;
            }
            if at >= period.end || c.at > known_until {
                break;
            }
            cur.plan = &c.plan;
            if let Some(a) = &c.addons {
                cur.addons = a;
            }
            if let Some(b) = c.billing_cycle {
                cur.billing_cycle = b;
            }
            cur.canceled = c.canceled;
            cuts.push((at, cur));
        }
        let mut out: Vec<Segment<'_>> = Vec::new();
        for (i, (at, terms)) in cuts.iter().enumerate() {
            let until = cuts.get(i + 1).map(|c| c.0).unwrap_or(period.end);
            if let Some(last) = out.last_mut()
                && last.plan.id == terms.plan.id
                && last.billing_cycle == terms.billing_cycle
                && last.canceled == terms.canceled
            {
                last.secs += until - at;
                last.addons = terms.addons;
                continue;
            }
            out.push(Segment {
                plan: terms.plan,
                addons: terms.addons,
                billing_cycle: terms.billing_cycle,
                canceled: terms.canceled,
                start: *at,
                secs: until - at,
            });
        }
        out
    }

    /// The terms that govern `period`'s limits, rates and add-on charges as known at `now`
    /// (see the module docs).
    pub fn governing_terms(&self, period: Period, now: DateTime<Utc>) -> Terms<'_> {
        let segs = self.segments(period, now);
        governing_segment(&segs, self, period, now)
    }
}

/// The plans in effect during `period` with the seconds each was in effect (changes after
/// `now` are not yet in effect), canceled stretches included under the plan left.
/// Consecutive stretches of one plan are merged. See [`Tenant::segments`] for the whole
/// state of each stretch.
pub fn plan_segments(t: &Tenant, period: Period, now: DateTime<Utc>) -> Vec<(Arc<Plan>, i64)> {
    let mut out: Vec<(Arc<Plan>, i64)> = Vec::new();
    for s in t.segments(period, now) {
        if let Some(last) = out.last_mut()
            && last.0.id == s.plan.id
        {
            last.1 += s.secs;
            continue;
        }
        out.push((s.plan.clone(), s.secs));
    }
    out
}
