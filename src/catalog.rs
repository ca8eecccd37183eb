//! The compiled catalog: meters (built-in first, indexed by [`MeterId`]), the meters each
//! event type feeds, plans and tenants, as [`crate::config`] builds them from the settings.
//! It is what the running pipeline prices and meters against, shared behind an `ArcSwap`
//! and replaced whole on reload ([`Catalog::reloadable_to`] says whether it can be).
//!
//! This module depends on [`crate::meter`], [`crate::pricing`] and [`crate::features`] only, so that pricing
//! never depends on the configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;

use crate::features::FeatureValue;
use crate::meter::{MeterDef, MeterId};
use crate::pricing::{MeterUsage, Plan, Tenant};

/// A reload that would change meter definitions, which needs a restart: the meters added,
/// changed or removed, and the running ones (names, comma-separated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "meter definitions changed ({changed}; running: {running}): restart callmeter to apply them"
)]
pub struct MetersChanged {
    pub changed: String,
    pub running: String,
}

/// The validated, compiled pricing catalog: meters, plans and tenants.
#[derive(Debug)]
pub struct Catalog {
    /// All meters, built-in first; a [`MeterId`] indexes this.
    pub meters: Vec<MeterDef>,
    /// Meters fed by each event type.
    pub by_event_type: BTreeMap<String, Vec<MeterId>>,
    pub plans: BTreeMap<String, Arc<Plan>>,
    /// Every feature a plan or add-on names, with the value nothing grants
    /// ([`crate::features::vocabulary`]).
    pub features: BTreeMap<String, FeatureValue>,
    pub tenants: BTreeMap<String, Arc<Tenant>>,
    pub default_plan: Option<Arc<Plan>>,
}

impl Catalog {
    pub fn meter_id(&self, name: &str) -> Option<MeterId> {
        self.meters
            .iter()
            .position(|m| &*m.name == name)
            .map(|i| MeterId(i as u16))
    }

    pub fn meter(&self, id: MeterId) -> &MeterDef {
        &self.meters[id.0 as usize]
    }

    /// Whether a running pipeline can switch from `self` to `next` without a restart: the
    /// meters must be the same (rows in memory are keyed by meter index). Errors name what
    /// differs (as a configuration error at key `meters`, through `From`).
    pub fn reloadable_to(&self, next: &Catalog) -> Result<(), MetersChanged> {
        if self.meters == next.meters {
            return Ok(());
        }
        let names = |c: &Catalog| {
            c.meters
                .iter()
                .map(|m| m.name.to_string())
                .collect::<Vec<_>>()
        };
        let changed = next
            .meters
            .iter()
            .filter(|m| !self.meters.contains(m))
            .map(|m| m.name.to_string())
            .chain(
                self.meters
                    .iter()
                    .filter(|m| !next.meters.iter().any(|n| n.name == m.name))
                    .map(|m| m.name.to_string()),
            )
            .collect::<Vec<_>>();
        Err(MetersChanged {
            changed: changed.join(", "),
            running: names(self).join(", "),
        })
    }

    /// The tenant as configured, or a tenant on the default plan (UTC, anchor day 1).
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        if let Some(t) = self.tenants.get(id) {
            return Some(t.clone());
        }
        self.default_plan
            .as_ref()
            .map(|p| Arc::new(Tenant::on_default_plan(id, p.clone())))
    }
}

impl MeterUsage {
    /// Usage records for meter values keyed by id, named from the catalog.
    pub fn from_values<'a>(
        catalog: &Catalog,
        values: impl IntoIterator<Item = (&'a MeterId, &'a Decimal)>,
    ) -> Vec<MeterUsage> {
        values
            .into_iter()
            .map(|(m, v)| MeterUsage {
                meter: *m,
                name: catalog.meter(*m).name.to_string(),
                usage: *v,
            })
            .collect()
    }
}
