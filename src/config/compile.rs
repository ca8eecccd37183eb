//! Compilation of the `[meters]`, `[plans]` and `[tenants]` tables into the [`Catalog`]:
//! every cross-reference resolved (meter names to [`MeterId`]s, plan ids to shared plans),
//! every amount checked (non-negative, fractions in range, tiers increasing), every rejection
//! a [`ConfigError`] with the key path.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::ConfigError;
use super::settings::{
    AddonSettings, Dec, FeatureSetting, MeterSettings, PlanMeterSettings, PlanSettings,
    PlanWalletSettings, Quantity, Settings, TenantSettings, TierSettings,
};
use super::validate::valid_currency;
use crate::catalog::Catalog;
use crate::features::FeatureValue;
use crate::meter::{Aggregation, FieldPath, MeterDef, MeterId, Rounding, WhereValue};
use crate::pricing::{
    Addon, BillingCycle, Included, Plan, PlanChange, PlanMeter, Tenant, Threshold, Tier, TiersMode,
    WalletPolicy,
};

/// Compiles meters, plans and tenants (in that order: each refers to the ones before).
pub(super) fn catalog(s: &Settings) -> Result<Catalog, ConfigError> {
    let mut meters = MeterDef::builtins();
    for (name, m) in &s.meters {
        let def = build_meter(name, m, &meters)?;
        meters.push(def);
    }
    if meters.len() > u16::MAX as usize {
        return Err(ConfigError::new("meters", "too many meters"));
    }
    let mut by_event_type: BTreeMap<String, Vec<MeterId>> = BTreeMap::new();
    for (i, m) in meters.iter().enumerate() {
        for t in &m.event_types {
            by_event_type
                .entry(t.clone())
                .or_default()
                .push(MeterId(i as u16));
        }
    }
    let meter_id = |name: &str| {
        meters
            .iter()
            .position(|m| &*m.name == name)
            .map(|i| MeterId(i as u16))
    };

    let mut plans = BTreeMap::new();
    for (id, p) in &s.plans {
        plans.insert(id.clone(), Arc::new(build_plan(id, p, &meter_id)?));
    }
    check_feature_kinds(&plans)?;

    let default_plan = match &s.pricing.default_plan {
        None => None,
        Some(name) => {
            let p = plans.get(name).cloned().ok_or_else(|| {
                ConfigError::new("pricing.default_plan", format!("no plan named `{name}`"))
            })?;
            if p.legacy {
                return Err(ConfigError::new(
                    "pricing.default_plan",
                    format!(
                        "plan `{name}` is legacy (grandfathered): it is not offered to new tenants"
                    ),
                ));
            }
            Some(p)
        }
    };

    let mut tenants = BTreeMap::new();
    for (id, t) in &s.tenants {
        tenants.insert(id.clone(), Arc::new(build_tenant(id, t, &plans)?));
    }

    let features = crate::features::vocabulary(plans.values().map(|p| p.as_ref()));
    Ok(Catalog {
        meters,
        by_event_type,
        features,
        plans,
        tenants,
        default_plan,
    })
}

/// `[meters.<name>]`, given the meters defined so far (the built-ins first).
fn build_meter(
    name: &str,
    m: &MeterSettings,
    defined: &[MeterDef],
) -> Result<MeterDef, ConfigError> {
    let key = format!("meters.{name}");
    if defined.iter().any(|b| &*b.name == name) {
        return Err(ConfigError::new(
            key,
            "is a built-in meter and cannot be redefined",
        ));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(ConfigError::new(key, "meter names use [A-Za-z0-9_.-]"));
    }
    if m.event_type.trim().is_empty() {
        return Err(ConfigError::new(
            format!("{key}.event_type"),
            "must not be empty",
        ));
    }
    let aggregation = match m.aggregation.as_str() {
        "sum" => Aggregation::Sum,
        "count" => Aggregation::Count,
        other => {
            return Err(ConfigError::new(
                format!("{key}.aggregation"),
                format!("`{other}` is not one of \"sum\", \"count\""),
            ));
        }
    };
    let rounding = match m.rounding.as_str() {
        "none" => Rounding::None,
        "ceil" => Rounding::Ceil,
        other => {
            return Err(ConfigError::new(
                format!("{key}.rounding"),
                format!("`{other}` is not one of \"none\", \"ceil\""),
            ));
        }
    };
    let value = match (aggregation, &m.value) {
        (Aggregation::Sum, None) => {
            return Err(ConfigError::new(
                format!("{key}.value"),
                "a sum meter needs the data field to sum",
            ));
        }
        (Aggregation::Sum, Some(v)) => Some(
            FieldPath::parse(v)
                .ok_or_else(|| ConfigError::new(format!("{key}.value"), "empty field path"))?,
        ),
        (Aggregation::Count, Some(_)) => {
            return Err(ConfigError::new(
                format!("{key}.value"),
                "a count meter takes no value field",
            ));
        }
        (Aggregation::Count, None) => None,
    };
    let divisor = m.divisor.map(|d| d.0).unwrap_or(Decimal::ONE);
    if divisor <= Decimal::ZERO {
        return Err(ConfigError::new(
            format!("{key}.divisor"),
            "must be positive",
        ));
    }
    if aggregation == Aggregation::Count && (divisor != Decimal::ONE || rounding != Rounding::None)
    {
        return Err(ConfigError::new(
            format!("{key}.divisor"),
            "a count meter takes no divisor or rounding",
        ));
    }
    Ok(MeterDef {
        name: name.into(),
        event_types: vec![m.event_type.clone()],
        aggregation,
        value,
        divisor,
        rounding,
        filters: where_filters(&key, &m.filter)?,
        builtin: None,
    })
}

/// `[meters.<name>.where]`: field paths compared with a string, number or boolean.
fn where_filters(
    key: &str,
    filter: &BTreeMap<String, toml::Value>,
) -> Result<Vec<(FieldPath, WhereValue)>, ConfigError> {
    let mut filters = Vec::new();
    for (field, v) in filter {
        let path = FieldPath::parse(field)
            .ok_or_else(|| ConfigError::new(format!("{key}.where"), "empty field name"))?;
        let wv = match v {
            toml::Value::String(s) => WhereValue::Str(s.clone()),
            toml::Value::Integer(i) => WhereValue::Num(Decimal::from(*i)),
            toml::Value::Float(f) => WhereValue::Num(
                Decimal::from_str(&f.to_string())
                    .map_err(|_| ConfigError::new(format!("{key}.where.{field}"), "bad number"))?,
            ),
            toml::Value::Boolean(b) => WhereValue::Bool(*b),
            _ => {
                return Err(ConfigError::new(
                    format!("{key}.where.{field}"),
                    "filters compare with a string, number or boolean",
                ));
            }
        };
        filters.push((path, wv));
    }
    Ok(filters)
}

fn nonneg(key: &str, d: Option<Dec>) -> Result<Option<Decimal>, ConfigError> {
    match d {
        Some(Dec(v)) if v < Decimal::ZERO => Err(ConfigError::new(key, "must not be negative")),
        Some(Dec(v)) => Ok(Some(v)),
        None => Ok(None),
    }
}

/// A fraction in [0, 1], if given.
fn fraction(key: &str, d: Option<Dec>) -> Result<Option<Decimal>, ConfigError> {
    let v = nonneg(key, d)?;
    if v.is_some_and(|r| r > Decimal::ONE) {
        return Err(ConfigError::new(key, "is a fraction between 0 and 1"));
    }
    Ok(v)
}

/// `[plans.<id>]`: its terms, then its meters, add-ons and wallet, each checked in turn.
fn build_plan(
    id: &str,
    p: &PlanSettings,
    meter_id: &dyn Fn(&str) -> Option<MeterId>,
) -> Result<Plan, ConfigError> {
    let key = format!("plans.{id}");
    let currency = p
        .currency
        .clone()
        .ok_or_else(|| ConfigError::new(format!("{key}.currency"), "is required (ISO 4217)"))?;
    if !valid_currency(&currency) {
        return Err(ConfigError::new(
            format!("{key}.currency"),
            format!("`{currency}` is not an ISO 4217 code of 3 upper-case letters"),
        ));
    }
    let base_fee = nonneg(&format!("{key}.base_fee"), p.base_fee)?.unwrap_or_default();
    let yearly_discount =
        fraction(&format!("{key}.yearly_discount"), p.yearly_discount)?.unwrap_or_default();
    let revenue_share = fraction(&format!("{key}.revenue_share"), p.revenue_share)?;
    let thresholds = thresholds(&key, p.alert_thresholds.as_deref())?;

    let mut meters = BTreeMap::new();
    for (mname, m) in &p.meters {
        let mkey = format!("{key}.meters.{mname}");
        let mid = meter_id(mname)
            .ok_or_else(|| ConfigError::new(&mkey, format!("no meter named `{mname}`")))?;
        meters.insert(mid, plan_meter(&mkey, mname, m)?);
    }

    let mut addons = BTreeMap::new();
    for (aname, a) in &p.addons {
        let akey = format!("{key}.addons.{aname}");
        addons.insert(aname.clone(), addon(&akey, a, meter_id)?);
    }

    let wallet = match &p.wallet {
        None => None,
        Some(w) => Some(wallet(&key, w)?),
    };
    let features = features(&format!("{key}.features"), &p.features, meter_id)?;

    Ok(Plan {
        id: id.to_string(),
        display_name: p.display_name.clone().unwrap_or_else(|| id.to_string()),
        currency,
        base_fee,
        yearly_discount,
        legacy: p.legacy,
        revenue_share,
        thresholds,
        meters,
        addons,
        wallet,
        features,
    })
}

/// `features` tables (`key` is the table's path): each value a boolean or a whole number
/// `0..=i64::MAX`, no name shared with a meter.
fn features(
    key: &str,
    f: &BTreeMap<String, FeatureSetting>,
    meter_id: &dyn Fn(&str) -> Option<MeterId>,
) -> Result<BTreeMap<String, FeatureValue>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, v) in f {
        let fkey = format!("{key}.{name}");
        if meter_id(name).is_some() {
            return Err(ConfigError::new(
                fkey,
                "a feature cannot share its name with a meter (entitlements look names up in both)",
            ));
        }
        let bad = || ConfigError::new(&fkey, "must be true, false or a whole number >= 0");
        let value = match v {
            FeatureSetting::Bool(b) => FeatureValue::Bool(*b),
            FeatureSetting::Int(n) if *n >= 0 => FeatureValue::Number(*n),
            FeatureSetting::Text(t) => match (t.parse::<bool>(), t.parse::<i64>()) {
                (Ok(b), _) => FeatureValue::Bool(b),
                (_, Ok(n)) if n >= 0 => FeatureValue::Number(n),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// Every feature keeps one kind (boolean or number) across the catalog's plans and add-ons.
fn check_feature_kinds(plans: &BTreeMap<String, Arc<Plan>>) -> Result<(), ConfigError> {
    let mut kinds: BTreeMap<&str, (FeatureValue, String)> = BTreeMap::new();
    for (id, p) in plans {
        let named = p
            .features
            .iter()
            .map(|(n, v)| (format!("plans.{id}.features.{n}"), n, v))
            .chain(p.addons.iter().flat_map(|(a, ad)| {
                ad.features
                    .iter()
                    .map(move |(n, v)| (format!("plans.{id}.addons.{a}.features.{n}"), n, v))
            }));
        for (key, name, v) in named {
            match kinds.get(name.as_str()) {
                Some((k, at)) if std::mem::discriminant(k) != std::mem::discriminant(v) => {
                    return Err(ConfigError::new(
                        key,
                        format!(
                            "is {} but {at} is {}: a feature keeps one kind",
                            v.kind(),
                            k.kind()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    kinds.insert(name, (*v, key));
                }
            }
        }
    }
    Ok(())
}

/// `plans.<id>.alert_thresholds`: strictly increasing fractions in (0, 1]; 80 % and 100 %
/// when not given.
fn thresholds(key: &str, list: Option<&[Dec]>) -> Result<Vec<Threshold>, ConfigError> {
    let Some(list) = list else {
        return Ok(vec![
            Threshold::new(Decimal::new(8, 1)),
            Threshold::new(Decimal::ONE),
        ]);
    };
    let mut out: Vec<Threshold> = Vec::new();
    for (i, d) in list.iter().enumerate() {
        if d.0 <= Decimal::ZERO || d.0 > Decimal::ONE {
            return Err(ConfigError::new(
                format!("{key}.alert_thresholds[{i}]"),
                "thresholds are fractions in (0, 1]",
            ));
        }
        if out.last().is_some_and(|l| l.ratio >= d.0) {
            return Err(ConfigError::new(
                format!("{key}.alert_thresholds"),
                "must be strictly increasing",
            ));
        }
        out.push(Threshold::new(d.0));
    }
    Ok(out)
}

/// `[plans.<id>.meters.<meter>]` (`mkey`): included usage, overage, rate or tiers, hard
/// limit.
fn plan_meter(mkey: &str, mname: &str, m: &PlanMeterSettings) -> Result<PlanMeter, ConfigError> {
    let included = match m.included {
        None => Included::None,
        Some(Quantity::Unlimited) => Included::Unlimited,
        Some(Quantity::Finite(d)) if d < Decimal::ZERO => {
            return Err(ConfigError::new(
                format!("{mkey}.included"),
                "must not be negative",
            ));
        }
        Some(Quantity::Finite(d)) => Included::Finite(d),
    };
    let included_once = nonneg(&format!("{mkey}.included_once"), m.included_once)?;
    let overage_rate = nonneg(&format!("{mkey}.overage_rate"), m.overage_rate)?;
    let overage_cap = nonneg(&format!("{mkey}.overage_cap"), m.overage_cap)?;
    let rate = nonneg(&format!("{mkey}.rate"), m.rate)?;
    if overage_cap.is_some() && overage_rate.is_none() {
        return Err(ConfigError::new(
            format!("{mkey}.overage_cap"),
            "needs an overage_rate",
        ));
    }
    let finite = matches!(included, Included::Finite(_)) || included_once.is_some();
    if overage_rate.is_some() && !finite {
        return Err(ConfigError::new(
            format!("{mkey}.overage_rate"),
            "needs a finite `included` quantity to charge above",
        ));
    }
    if m.hard_limit && !finite {
        return Err(ConfigError::new(
            format!("{mkey}.hard_limit"),
            "needs a finite `included` quantity",
        ));
    }
    let tiers = match (&m.tiers, &m.tiers_mode) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ConfigError::new(
                format!("{mkey}.tiers"),
                "tiers_mode is set but no tiers are",
            ));
        }
        (Some(list), mode) => Some(tiers(mkey, list, mode.as_deref())?),
    };
    if tiers.is_some() && (rate.is_some() || overage_rate.is_some()) {
        return Err(ConfigError::new(
            mkey,
            "tiers cannot be combined with rate or overage_rate",
        ));
    }
    Ok(PlanMeter {
        name: mname.into(),
        included,
        included_once,
        overage_rate,
        overage_cap,
        hard_limit: m.hard_limit,
        rate,
        tiers,
    })
}

/// `[[plans.<id>.meters.<meter>.tiers]]`: bounds positive and strictly increasing, the last
/// one `"inf"`; prices not negative.
fn tiers(
    mkey: &str,
    list: &[TierSettings],
    mode: Option<&str>,
) -> Result<(TiersMode, Vec<Tier>), ConfigError> {
    let mode = match mode.unwrap_or("graduated") {
        "graduated" => TiersMode::Graduated,
        "volume" => TiersMode::Volume,
        other => {
            return Err(ConfigError::new(
                format!("{mkey}.tiers_mode"),
                format!("`{other}` is not one of \"graduated\", \"volume\""),
            ));
        }
    };
    if list.is_empty() {
        return Err(ConfigError::new(format!("{mkey}.tiers"), "is empty"));
    }
    let mut tiers = Vec::new();
    let mut prev = Decimal::ZERO;
    for (i, t) in list.iter().enumerate() {
        let tkey = format!("{mkey}.tiers[{i}]");
        let last = i + 1 == list.len();
        let up_to = match t.up_to {
            Quantity::Unlimited if last => None,
            Quantity::Unlimited => {
                return Err(ConfigError::new(
                    format!("{tkey}.up_to"),
                    "only the last tier may be \"inf\"",
                ));
            }
            Quantity::Finite(_) if last => {
                return Err(ConfigError::new(
                    format!("{tkey}.up_to"),
                    "the last tier must be up_to = \"inf\"",
                ));
            }
            Quantity::Finite(d) if d <= prev => {
                return Err(ConfigError::new(
                    format!("{tkey}.up_to"),
                    "tier bounds must be positive and strictly increasing",
                ));
            }
            Quantity::Finite(d) => {
                prev = d;
                Some(d)
            }
        };
        if t.unit_price.0 < Decimal::ZERO {
            return Err(ConfigError::new(
                format!("{tkey}.unit_price"),
                "must not be negative",
            ));
        }
        let flat_fee = nonneg(&format!("{tkey}.flat_fee"), t.flat_fee)?;
        tiers.push(Tier {
            up_to,
            unit_price: t.unit_price.0,
            flat_fee: flat_fee.unwrap_or_default(),
        });
    }
    Ok((mode, tiers))
}

/// `[plans.<id>.addons.<name>]` (`akey`): a price, and optionally included usage of a meter.
fn addon(
    akey: &str,
    a: &AddonSettings,
    meter_id: &dyn Fn(&str) -> Option<MeterId>,
) -> Result<Addon, ConfigError> {
    let meter = match &a.meter {
        None => None,
        Some(m) => Some(meter_id(m).ok_or_else(|| {
            ConfigError::new(format!("{akey}.meter"), format!("no meter named `{m}`"))
        })?),
    };
    let included = nonneg(&format!("{akey}.included"), a.included)?;
    if included.is_some() && meter.is_none() {
        return Err(ConfigError::new(
            format!("{akey}.included"),
            "an add-on with included usage needs a `meter`",
        ));
    }
    if a.price.0 < Decimal::ZERO {
        return Err(ConfigError::new(
            format!("{akey}.price"),
            "must not be negative",
        ));
    }
    Ok(Addon {
        meter,
        meter_name: a.meter.as_deref().map(Arc::from),
        included: included.unwrap_or_default(),
        price: a.price.0,
        features: features(&format!("{akey}.features"), &a.features, meter_id)?,
    })
}

/// `[plans.<id>.wallet]` (`key` is the plan's): prepaid or not, grant and low-balance mark.
fn wallet(key: &str, w: &PlanWalletSettings) -> Result<WalletPolicy, ConfigError> {
    Ok(WalletPolicy {
        prepaid: w.prepaid,
        monthly_grant: nonneg(&format!("{key}.wallet.monthly_grant"), w.monthly_grant)?
            .unwrap_or_default(),
        low_balance: nonneg(&format!("{key}.wallet.low_balance"), w.low_balance)?,
    })
}

/// `[tenants.<id>]`: plan, time zone, anchor day, billing cycle, add-ons, plan changes.
fn build_tenant(
    id: &str,
    t: &TenantSettings,
    plans: &BTreeMap<String, Arc<Plan>>,
) -> Result<Tenant, ConfigError> {
    let key = format!("tenants.{id}");
    if !crate::event::valid_subject(id) {
        return Err(ConfigError::new(
            &key,
            "tenant ids are 1..128 characters of [A-Za-z0-9._:-]",
        ));
    }
    let plan_name = t
        .plan
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{key}.plan"), "is required"))?;
    let plan = plans.get(plan_name).cloned().ok_or_else(|| {
        ConfigError::new(
            format!("{key}.plan"),
            format!("no plan named `{plan_name}`"),
        )
    })?;
    let tz_name = t.timezone.clone().unwrap_or_else(|| "UTC".into());
    let tz: chrono_tz::Tz = tz_name.parse().map_err(|_| {
        ConfigError::new(
            format!("{key}.timezone"),
            format!("`{tz_name}` is not an IANA time zone name"),
        )
    })?;
    let anchor_day = t.anchor_day.unwrap_or(1);
    if !(1..=31).contains(&anchor_day) {
        return Err(ConfigError::new(
            format!("{key}.anchor_day"),
            "must be 1..=31",
        ));
    }
    let billing_cycle = match t.billing_cycle.as_deref().unwrap_or("monthly") {
        "monthly" => BillingCycle::Monthly,
        "yearly" => BillingCycle::Yearly,
        other => {
            return Err(ConfigError::new(
                format!("{key}.billing_cycle"),
                format!("`{other}` is not one of \"monthly\", \"yearly\""),
            ));
        }
    };
    let mut addons = BTreeMap::new();
    for (a, n) in &t.addons {
        if !plan.addons.contains_key(a) {
            return Err(ConfigError::new(
                format!("{key}.addons.{a}"),
                format!("plan `{plan_name}` has no add-on `{a}`"),
            ));
        }
        if *n < 0 || *n > u32::MAX as i64 {
            return Err(ConfigError::new(
                format!("{key}.addons.{a}"),
                "must be a non-negative count",
            ));
        }
        addons.insert(a.clone(), *n as u32);
    }
    let mut changes = Vec::new();
    for (i, c) in t.plan_changes.iter().enumerate() {
        let ckey = format!("{key}.plan_changes[{i}]");
        let at: DateTime<Utc> = DateTime::parse_from_rfc3339(&c.at)
            .map_err(|e| ConfigError::new(format!("{ckey}.at"), format!("not RFC 3339: {e}")))?
            .with_timezone(&Utc);
        let p = plans.get(&c.plan).cloned().ok_or_else(|| {
            ConfigError::new(
                format!("{ckey}.plan"),
                format!("no plan named `{}`", c.plan),
            )
        })?;
        if p.currency != plan.currency {
            return Err(ConfigError::new(
                format!("{ckey}.plan"),
                "a plan change cannot change the currency",
            ));
        }
        if p.legacy {
            return Err(ConfigError::new(
                format!("{ckey}.plan"),
                format!(
                    "plan `{}` is legacy (grandfathered): tenants can leave it but not move onto it",
                    c.plan
                ),
            ));
        }
        if let Some(a) = addons.keys().find(|a| !p.addons.contains_key(*a)) {
            return Err(ConfigError::new(
                format!("{ckey}.plan"),
                format!(
                    "plan `{}` has no add-on `{a}`, which the tenant holds (add-ons carry over plan changes)",
                    c.plan
                ),
            ));
        }
        if changes.last().is_some_and(|l: &PlanChange| l.at >= at) {
            return Err(ConfigError::new(
                format!("{ckey}.at"),
                "plan changes must be in increasing time order",
            ));
        }
        changes.push(PlanChange::to(at, p));
    }
    if let Some(s) = &t.stripe_customer_id
        && s.trim().is_empty()
    {
        return Err(ConfigError::new(
            format!("{key}.stripe_customer_id"),
            "must not be empty",
        ));
    }
    Ok(Tenant {
        id: id.into(),
        plan,
        plan_changes: changes,
        tz,
        anchor_day: anchor_day as u32,
        billing_cycle,
        addons,
        stripe_customer_id: t.stripe_customer_id.clone(),
        wallet_low_balance: nonneg(&format!("{key}.wallet_low_balance"), t.wallet_low_balance)?,
        configured: true,
    })
}
