#!/usr/bin/env python3
"""Runs callmeter's ClickHouse DDL (schemas/clickhouse/*.sql) and the contract's queries on a
current ClickHouse engine: chDB (PyPI `chdb-core`, ClickHouse 26.x in-process; scripts/setup.sh
installs it). The test server is Debian's ClickHouse 18.16; this shows the same DDL and
queries also run, with the same answers, on a current release.

Checks: every DDL file runs (twice: `migrate` must be idempotent); the usage query of the
contract (`SELECT sum(value) FROM callmeter.usage_rollups FINAL WHERE ...`) returns the newest
row version per (tenant, meter, period, partition) summed over partitions; alerts collapse by
alert_id under FINAL; stripe_reports read by identifier with argMax(status, version); every
view in the schema directory answers a SELECT, and the statement views give the same answers
as on 18.16 for a few statements (one of them written twice).

Exit status 0 when all hold, 1 otherwise (the failing check is printed).
"""

import glob
import os
import re
import sys
import tempfile

from chdb import session


def statements(sql):
    """The statements of a DDL file (';'-separated, '--' comments dropped)."""
    text = "\n".join(re.sub(r"--.*$", "", line) for line in sql.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    files = sorted(glob.glob(os.path.join(root, "schemas", "clickhouse", "*.sql")))
    if not files:
        print("check_ddl_current: no DDL files found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        s = session.Session(tmp)

        def q(sql):
            return str(s.query(sql, "TSV")).strip()

        version = q("SELECT version()")
        q("CREATE DATABASE IF NOT EXISTS callmeter")
        views = []
        for _ in range(2):
            for f in files:
                for stmt in statements(open(f, encoding="utf-8").read()):
                    try:
                        q(stmt)
                    except Exception as e:  # noqa: BLE001 (chdb raises its own types)
                        print(f"check_ddl_current: {os.path.basename(f)} fails on ClickHouse {version}: {e}")
                        return 1
                    m = re.match(r"CREATE\s+(?:MATERIALIZED\s+)?VIEW\s+(?:IF NOT EXISTS\s+)?(\S+)", stmt, re.I)
                    if m and m.group(1) not in views:
                        views.append(m.group(1))

        failures = []

        def expect(name, sql, want):
            got = q(sql)
            if got != want:
                failures.append(f"{name}: want {want!r}, got {got!r}")

        # Two versions of one partition's row (through_offset 10, then 25) and a second
        # partition: FINAL keeps the newest version of each, the usage query sums them.
        q("""INSERT INTO callmeter.usage_rollups VALUES
            ('acme', 'call_minutes', '2026-11-01 00:00:00', '2026-12-01 00:00:00', 12.5, 3, 'call-events', 0, 10, now()),
            ('acme', 'call_minutes', '2026-11-01 00:00:00', '2026-12-01 00:00:00', 20.25, 5, 'call-events', 0, 25, now()),
            ('acme', 'call_minutes', '2026-11-01 00:00:00', '2026-12-01 00:00:00', 1.000000001, 1, 'call-events', 1, 7, now()),
            ('other', 'call_minutes', '2026-11-01 00:00:00', '2026-12-01 00:00:00', 99, 9, 'call-events', 0, 3, now())""")
        expect(
            "usage query (FINAL, newest through_offset per partition)",
            "SELECT sum(value) FROM callmeter.usage_rollups FINAL WHERE tenant_id = 'acme' "
            "AND meter = 'call_minutes' AND period_start = toDateTime('2026-11-01 00:00:00', 'UTC')",
            "21.250000001",
        )
        expect(
            "event counts under FINAL",
            "SELECT sum(event_count) FROM callmeter.usage_rollups FINAL WHERE tenant_id = 'acme'",
            "6",
        )
        q("""INSERT INTO callmeter.usage_alerts VALUES
            ('a1', 'acme', 'call_minutes', '80%', '2026-11-01 00:00:00', '2026-12-01 00:00:00', 96, 120, 'starter', 'e1', now()),
            ('a1', 'acme', 'call_minutes', '80%', '2026-11-01 00:00:00', '2026-12-01 00:00:00', 96, 120, 'starter', 'e1', now())""")
        expect("alerts collapse by alert_id", "SELECT count() FROM callmeter.usage_alerts FINAL", "1")
        q("""INSERT INTO callmeter.stripe_reports VALUES
            ('acme', 'call_minutes', '2026-11-01 00:00:00', '2026-12-01 00:00:00', 'id1', 'cus_1', 'minutes', 0, 20, 20, now(), 'pending', '', 1, now(), now()),
            ('acme', 'call_minutes', '2026-11-01 00:00:00', '2026-12-01 00:00:00', 'id1', 'cus_1', 'minutes', 0, 20, 20, now(), 'sent', '', 2, now(), now())""")
        expect(
            "stripe_reports by identifier, argMax(status, version)",
            "SELECT identifier, argMax(status, version), argMax(value, version) "
            "FROM callmeter.stripe_reports GROUP BY identifier",
            "id1\tsent\t20",
        )
        q("""INSERT INTO callmeter.usage_statements VALUES
            ('s1', 'a', 'starter', 'USD', '2026-10-31 23:00:00', '2026-11-30 23:00:00', 'base_fee', '', '', 1, 79, 109, '2026-12-02 23:00:00'),
            ('s1', 'a', 'starter', 'USD', '2026-10-31 23:00:00', '2026-11-30 23:00:00', 'addon', 'call_minutes', 'extra', 2, 30, 109, '2026-12-02 23:00:00'),
            ('s1', 'a', 'starter', 'USD', '2026-10-31 23:00:00', '2026-11-30 23:00:00', 'addon', 'call_minutes', 'extra', 2, 30, 109, '2026-12-02 23:00:00'),
            ('s2', 'b', 'free', 'USD', '2026-11-01 00:00:00', '2026-12-01 00:00:00', '', '', '', 0, 0, 0, '2026-12-03 00:00:00'),
            ('s3', 'a', 'starter', 'USD', '2026-11-30 23:00:00', '2026-12-31 23:00:00', 'base_fee', '', '', 1, 79, 79, '2027-01-02 23:00:00')""")
        expect(
            "mrr_monthly",
            "SELECT month, currency, toString(mrr), tenants FROM callmeter.mrr_monthly ORDER BY month",
            "2026-11-01\tUSD\t109\t1\n2026-12-01\tUSD\t79\t1",
        )
        expect(
            "revenue_by_plan_kind",
            "SELECT month, plan, line_kind, toString(revenue) FROM callmeter.revenue_by_plan_kind "
            "ORDER BY month, line_kind",
            "2026-11-01\tstarter\taddon\t30\n2026-11-01\tstarter\tbase_fee\t79\n2026-12-01\tstarter\tbase_fee\t79",
        )
        expect(
            "arpu_monthly",
            "SELECT month, toString(revenue), tenants, toString(arpu) FROM callmeter.arpu_monthly ORDER BY month",
            "2026-11-01\t109\t2\t54.5\n2026-12-01\t79\t1\t79",
        )
        expect(
            "tenants_gained_lost",
            "SELECT month, gained, lost FROM callmeter.tenants_gained_lost ORDER BY month",
            "2026-11-01\t2\t0\n2026-12-01\t0\t1",
        )
        for v in views:
            try:
                q(f"SELECT * FROM {v} LIMIT 1")
            except Exception as e:  # noqa: BLE001
                failures.append(f"view {v}: {e}")

        if failures:
            for f in failures:
                print(f"check_ddl_current: {f}")
            return 1
        print(
            f"check_ddl_current: {len(files)} DDL files, the contract's queries and {len(views)} views "
            f"run on ClickHouse {version} (chDB)"
        )
        return 0


if __name__ == "__main__":
    sys.exit(main())
