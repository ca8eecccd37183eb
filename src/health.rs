//! Why the process is not ready, besides partitions still restoring: named problems (for
//! example a permanent ClickHouse error) that turn `/readyz` to 503 with their messages until
//! they are cleared.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Named problems in effect; `/readyz` answers 503 while any is set.
#[derive(Default)]
pub struct Health {
    problems: Mutex<BTreeMap<&'static str, String>>,
}

impl Health {
    /// Sets (or replaces) the problem `name`.
    pub fn set(&self, name: &'static str, message: impl Into<String>) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.insert(name, message.into());
    }

    /// Clears the problem `name`, if set.
    pub fn clear(&self, name: &'static str) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(name);
    }

    /// The problems in effect, as `name: message` lines (empty when healthy).
    pub fn problems(&self) -> Vec<String> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.iter().map(|(k, v)| format!("{k}: {v}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_clear() {
        let h = Health::default();
        assert!(h.problems().is_empty());
        h.set("clickhouse", "Code: 516");
        h.set("clickhouse", "Code: 60");
        assert_eq!(h.problems(), vec!["clickhouse: Code: 60".to_string()]);
        h.clear("clickhouse");
        assert!(h.problems().is_empty());
    }
}
