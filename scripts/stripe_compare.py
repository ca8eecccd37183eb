#!/usr/bin/env python3
"""Per tenant and Stripe meter: what the Stripe test server accepted next to ClickHouse's
totals (whole units of value x multiplier, per usage period) and the units recorded as
unreportable (older than Stripe's 35-day window). Exit status 1 if any line differs.

    scripts/stripe_compare.py CONFIG CLICKHOUSE_URL STRIPE_TEST_SERVER_URL [DATABASE]
"""
import decimal
import json
import sys
import tomllib
import urllib.request


def clickhouse(url, sql):
    req = urllib.request.Request(url, data=(sql + " FORMAT TabSeparated").encode())
    with urllib.request.urlopen(req) as r:
        return [line.split("\t") for line in r.read().decode().splitlines() if line]


def main():
    config_path, ch_url, stripe_url = sys.argv[1:4]
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    db = sys.argv[4] if len(sys.argv) > 4 else config.get("clickhouse", {}).get("database", "callmeter")
    meters = config.get("stripe", {}).get("meters", {})
    customers = {t: s["stripe_customer_id"] for t, s in config.get("tenants", {}).items()
                 if "stripe_customer_id" in s}
    with urllib.request.urlopen(stripe_url + "/_test/summary") as r:
        summary = json.load(r)
    accepted = {(a["stripe_customer_id"], a["event_name"]): int(a["value"]) for a in summary["accepted"]}

    expected = {}
    for tenant, meter, _period, total in clickhouse(
            ch_url, f"SELECT tenant_id, meter, toUInt32(period_start), toString(sum(value)) "
                    f"FROM {db}.usage_rollups FINAL GROUP BY tenant_id, meter, period_start"):
        if tenant in customers and meter in meters:
            mult = decimal.Decimal(str(meters[meter].get("multiplier", 1)))
            units = int((decimal.Decimal(total) * mult).to_integral_value(decimal.ROUND_FLOOR))
            expected[(tenant, meter)] = expected.get((tenant, meter), 0) + max(units, 0)
    unreportable = {}
    for tenant, meter, units in clickhouse(
            ch_url, f"SELECT tenant_id, meter, sum(v) FROM (SELECT tenant_id, meter, identifier, "
                    f"argMax(status, version) AS s, any(value) AS v FROM {db}.stripe_reports "
                    f"GROUP BY tenant_id, meter, identifier) WHERE s = 'unreportable' "
                    f"GROUP BY tenant_id, meter"):
        unreportable[(tenant, meter)] = int(units)

    print(f"{'tenant':<16} {'customer':<18} {'stripe meter':<20} {'clickhouse':>12} "
          f"{'stripe':>12} {'unreportable':>12}")
    bad = 0
    for tenant, customer in sorted(customers.items()):
        for meter, m in sorted(meters.items()):
            want = expected.get((tenant, meter), 0)
            lost = unreportable.get((tenant, meter), 0)
            got = accepted.get((customer, m["event_name"]), 0)
            ok = got + lost == want
            bad += not ok
            print(f"{tenant:<16} {customer:<18} {m['event_name']:<20} {want:>12} {got:>12} "
                  f"{lost:>12}  {'ok' if ok else 'DIFFERS'}")
    dup = sum(1 for n in summary["identifiers"].values() if n > 1)
    print(f"stripe test server: {len(summary['identifiers'])} events accepted, "
          f"{summary['requests'].get('v2_stream', 0) + summary['requests'].get('v1', 0)} requests, "
          f"{summary['duplicates']} duplicates dropped, faults injected {summary['faults']}, "
          f"identifiers accepted twice: {dup}")
    sys.exit(1 if bad or dup else 0)


if __name__ == "__main__":
    main()
