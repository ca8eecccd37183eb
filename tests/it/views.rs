//! The analysts' views over `usage_statements` (schemas/clickhouse/README.md) on the test
//! ClickHouse (18.16): statements written by hand, one of them twice, and each view's answer
//! computed by hand.

use rust_decimal::Decimal;

use crate::common::World;

#[tokio::test(flavor = "multi_thread")]
async fn views_answer_hand_computed_expectations() {
    let w = World::new("stmt_views", 1);
    let out = w.cli(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ch = w.ch();
    let db = &w.database;
    // November 2026: a (Paris, starter: base + add-on + overage, its rows written twice),
    // b (UTC, free: a statement without charges), c (EUR, pro). December: a again, and d
    // new. January 2027: d only. So a, b, c are gained in November, d in December; b and c
    // are lost in December, a in January; d is not lost (January is the last month).
    let row = |id: &str,
               t: &str,
               plan: &str,
               cur: &str,
               ps: &str,
               pe: &str,
               kind: &str,
               meter: &str,
               item: &str,
               q: &str,
               amount: &str,
               total: &str| {
        format!(
            "('{id}','{t}','{plan}','{cur}','{ps}','{pe}','{kind}','{meter}','{item}',{q},{amount},{total},'{pe}')"
        )
    };
    let a_nov = (
        "sa1",
        "a",
        "starter",
        "USD",
        "2026-10-31 23:00:00",
        "2026-11-30 23:00:00",
    );
    let mut rows = vec![];
    for _ in 0..2 {
        rows.push(row(
            a_nov.0, a_nov.1, a_nov.2, a_nov.3, a_nov.4, a_nov.5, "base_fee", "", "", "1", "79",
            "148.71",
        ));
        rows.push(row(
            a_nov.0,
            a_nov.1,
            a_nov.2,
            a_nov.3,
            a_nov.4,
            a_nov.5,
            "overage",
            "call_minutes",
            "",
            "180.5",
            "39.71",
            "148.71",
        ));
        rows.push(row(
            a_nov.0,
            a_nov.1,
            a_nov.2,
            a_nov.3,
            a_nov.4,
            a_nov.5,
            "addon",
            "call_minutes",
            "extra",
            "2",
            "30",
            "148.71",
        ));
    }
    rows.push(row(
        "sb1",
        "b",
        "free",
        "USD",
        "2026-11-01 00:00:00",
        "2026-12-01 00:00:00",
        "",
        "",
        "",
        "0",
        "0",
        "0",
    ));
    rows.push(row(
        "sc1",
        "c",
        "pro",
        "EUR",
        "2026-11-01 00:00:00",
        "2026-12-01 00:00:00",
        "base_fee",
        "",
        "",
        "1",
        "299",
        "299",
    ));
    rows.push(row(
        "sa2",
        "a",
        "starter",
        "USD",
        "2026-11-30 23:00:00",
        "2026-12-31 23:00:00",
        "base_fee",
        "",
        "",
        "1",
        "79",
        "79",
    ));
    rows.push(row(
        "sd1",
        "d",
        "starter",
        "USD",
        "2026-12-01 00:00:00",
        "2027-01-01 00:00:00",
        "base_fee",
        "",
        "",
        "0.5",
        "39.50",
        "40.50",
    ));
    rows.push(row(
        "sd1",
        "d",
        "starter",
        "USD",
        "2026-12-01 00:00:00",
        "2027-01-01 00:00:00",
        "overage",
        "call_minutes",
        "",
        "10",
        "1",
        "40.50",
    ));
    rows.push(row(
        "sd2",
        "d",
        "starter",
        "USD",
        "2027-01-01 00:00:00",
        "2027-02-01 00:00:00",
        "base_fee",
        "",
        "",
        "1",
        "79",
        "79",
    ));
    ch.exec(&format!(
        "INSERT INTO {db}.usage_statements VALUES {}",
        rows.join(",")
    ))
    .await
    .unwrap();
    let q = |sql: String| {
        let ch = ch.clone();
        async move { ch.query(&sql).await.unwrap() }
    };
    let norm = |rows: Vec<Vec<String>>| -> Vec<Vec<String>> {
        rows.into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|c| match c.parse::<Decimal>() {
                        Ok(v) if c.contains('.') => v.normalize().to_string(),
                        _ => c,
                    })
                    .collect()
            })
            .collect()
    };
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        norm(q(format!("SELECT month, currency, mrr, tenants FROM {db}.mrr_monthly ORDER BY month, currency")).await),
        [
            v(&["2026-11-01", "EUR", "299", "1"]),
            v(&["2026-11-01", "USD", "109", "1"]),
            v(&["2026-12-01", "USD", "118.5", "2"]),
            v(&["2027-01-01", "USD", "79", "1"]),
        ]
    );
    assert_eq!(
        norm(q(format!(
            "SELECT month, currency, plan, line_kind, revenue, tenants FROM {db}.revenue_by_plan_kind \
             ORDER BY month, currency, plan, line_kind"
        ))
        .await),
        [
            v(&["2026-11-01", "EUR", "pro", "base_fee", "299", "1"]),
            v(&["2026-11-01", "USD", "starter", "addon", "30", "1"]),
            v(&["2026-11-01", "USD", "starter", "base_fee", "79", "1"]),
            v(&["2026-11-01", "USD", "starter", "overage", "39.71", "1"]),
            v(&["2026-12-01", "USD", "starter", "base_fee", "118.5", "2"]),
            v(&["2026-12-01", "USD", "starter", "overage", "1", "1"]),
            v(&["2027-01-01", "USD", "starter", "base_fee", "79", "1"]),
        ]
    );
    // ARPU: November USD (148.71 + 0) / 2; December USD (79 + 40.50) / 2.
    assert_eq!(
        norm(q(format!("SELECT month, currency, revenue, tenants, arpu FROM {db}.arpu_monthly ORDER BY month, currency")).await),
        [
            v(&["2026-11-01", "EUR", "299", "1", "299"]),
            v(&["2026-11-01", "USD", "148.71", "2", "74.355"]),
            v(&["2026-12-01", "USD", "119.5", "2", "59.75"]),
            v(&["2027-01-01", "USD", "79", "1", "79"]),
        ]
    );
    assert_eq!(
        q(format!(
            "SELECT month, gained, lost FROM {db}.tenants_gained_lost ORDER BY month"
        ))
        .await,
        [
            v(&["2026-11-01", "3", "0"]),
            v(&["2026-12-01", "1", "2"]),
            v(&["2027-01-01", "0", "1"]),
        ]
    );
}
