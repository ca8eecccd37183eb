//! Prepaid wallets (seed 001): balances per tenant, credited by `wallet.topped_up` events and
//! plan grants, debited by usage charges as they accrue.

use dashmap::DashMap;
use rust_decimal::Decimal;

/// Current wallet balances, by tenant id.
#[derive(Debug, Default)]
pub struct Wallets {
    balances: DashMap<String, Decimal>,
}

impl Wallets {
    /// The tenant's balance, if it has a wallet.
    pub fn balance(&self, tenant: &str) -> Option<Decimal> {
        self.balances.get(tenant).map(|b| *b)
    }

    /// Sets a tenant's balance.
    pub fn set(&self, tenant: &str, balance: Decimal) {
        self.balances.insert(tenant.to_string(), balance);
    }
}
