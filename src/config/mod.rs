//! Configuration: the TOML file of CONTRACT.md sections 2, 3 and 9, with `CALLMETER_...`
//! environment overrides (`CALLMETER_` + key path upper-cased, `__` between levels).
//!
//! Loading is two steps, without I/O beyond reading the file: [`Settings::load`] deserializes
//! (unknown keys are rejected with their path), then [`Settings::validate`] checks every
//! cross-reference and value and compiles the meter, plan and tenant tables into a
//! [`Catalog`](crate::catalog::Catalog). Every rejection is a [`ConfigError`] naming the key
//! path and the reason.
//!
//! - [`settings`]: the serde structs, as written (re-exported here);
//! - `validate`: the runtime settings' values;
//! - `compile`: meters, plans and tenants into the catalog.

use std::path::Path;
use std::sync::Arc;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

mod compile;
pub mod settings;
#[cfg(test)]
mod tests;
mod validate;

pub use settings::*;
// Transitional: modules under restructuring elsewhere still name `crate::config::Catalog`.
pub use crate::catalog::Catalog;
use crate::catalog::MetersChanged;

/// A rejected configuration: the key path (`plans.starter.currency`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration at `{key}`: {reason}")]
pub struct ConfigError {
    /// Dotted key path in the TOML file.
    pub key: String,
    /// Human-readable reason.
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<MetersChanged> for ConfigError {
    fn from(e: MetersChanged) -> Self {
        ConfigError::new("meters", e.to_string())
    }
}

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub catalog: Arc<Catalog>,
}

impl Settings {
    /// Reads `path` and applies `CALLMETER_...` environment overrides.
    ///
    /// Errors: unreadable file, TOML syntax, unknown keys or wrong types, each with its key path.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::new(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        Self::from_figment(Figment::new().merge(Toml::file_exact(path)))
    }

    /// Parses TOML text (plus environment overrides); for tests and `check-config`.
    pub fn from_toml_str(text: &str) -> Result<Settings, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(f: Figment) -> Result<Settings, ConfigError> {
        // CALLMETER_LOG_FORMAT is read before the configuration (telemetry::init_logging).
        let f = f.merge(
            Env::prefixed("CALLMETER_")
                .ignore(&["log_format"])
                .split("__"),
        );
        f.extract::<Settings>().map_err(|e| {
            let key = if e.path.is_empty() {
                "<root>".to_string()
            } else {
                e.path.join(".")
            };
            ConfigError::new(key, e.kind.to_string())
        })
    }

    /// Validates everything and compiles the catalog.
    pub fn validate(self) -> Result<Config, ConfigError> {
        validate::runtime(&self)?;
        let catalog = Arc::new(compile::catalog(&self)?);
        validate::stripe_meters(&self, &catalog)?;
        Ok(Config {
            settings: self,
            catalog,
        })
    }
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Settings::load(path)?.validate()
    }

    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Settings::from_toml_str(text)?.validate()
    }
}
