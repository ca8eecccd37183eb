//! Rebalances with both members alive, on Apache Kafka with static membership
//! (`group.instance.id`): one instance is killed with -9 and restarted under the same id, then
//! a third joins, so partitions move between live members (revoke, flush, commit, restore).
//! Totals stay exact under the cooperative-sticky assignor of the classic protocol and under
//! the KIP-848 consumer protocol (`group.protocol = "consumer"`). Each run prints the group
//! recovery time: from the kill to the restarted instance consuming again.

use std::time::{Duration, Instant};

use callmeter::cli::loadgen::{Generated, generate};

use crate::common::{Flavor, Pipeline, World, flavor};
use crate::faults::{PRICING, differences, spec, stream, tail, truth, wait_exact};

/// How many times `needle` occurs in the instance's log.
fn count(p: &Pipeline, needle: &str) -> usize {
    p.log_text().matches(needle).count()
}

/// Waits until the instance's log holds more than `before` lines with `needle`.
async fn wait_log(p: &Pipeline, needle: &str, before: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if count(p, needle) > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn static_members_rebalance(label: &str, properties: &str) {
    if flavor() != Flavor::Kafka {
        eprintln!("{label}: skipped (Apache Kafka only)");
        return;
    }
    let w = World::new(label, 6)
        .extra(PRICING)
        .extra(&format!("[kafka.properties]\n{properties}"))
        .section("pipeline", "flush_interval = \"1s\"");
    let msgs: Vec<Generated> = generate(&spec(36_000, 30, 29)).collect();
    let truth = truth(&msgs);
    let producer = {
        let w2 = w.clone();
        let msgs = msgs.clone();
        tokio::spawn(async move { stream(&w2, msgs, 1_500).await })
    };
    let mut a = w.run("a");
    let mut b = w.run("b");
    assert!(
        wait_log(&b, "partition consuming", 0, Duration::from_secs(60)).await,
        "b consumes; log:\n{}",
        tail(&b.log_text())
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    // kill -9 and restart under the same group.instance.id.
    let before = count(&b, "partition consuming");
    b.kill9();
    let killed = Instant::now();
    let mut b = w.run("b");
    assert!(
        wait_log(&b, "partition consuming", before, Duration::from_secs(90)).await,
        "the restarted b consumes again; log:\n{}",
        tail(&b.log_text())
    );
    let recovery = killed.elapsed();
    eprintln!(
        "{label}: group recovery after kill -9 (static member restarted): {:.1} s",
        recovery.as_secs_f64()
    );

    // A third member joins while both are alive: partitions move between live members.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let revoked_before = count(&a, "partitions revoked") + count(&b, "partitions revoked");
    let mut c = w.run("c");
    assert!(
        wait_log(&c, "partition consuming", 0, Duration::from_secs(60)).await,
        "c gets partitions; log:\n{}",
        tail(&c.log_text())
    );
    let revoked = count(&a, "partitions revoked") + count(&b, "partitions revoked");
    assert!(
        revoked > revoked_before,
        "a live member handed partitions over to c; a log:\n{}\nb log:\n{}",
        tail(&a.log_text()),
        tail(&b.log_text())
    );
    assert!(
        count(&a, "flushed before revocation") + count(&b, "flushed before revocation") > 0,
        "the member flushed before the hand-over"
    );

    producer.await.unwrap();
    let waited = Instant::now();
    let bad = wait_exact(&w, &truth, Duration::from_secs(120)).await;
    eprintln!(
        "{label}: events={} exact after {:?}, mismatches={bad}",
        msgs.len(),
        waited.elapsed()
    );
    if bad != 0 {
        panic!(
            "totals differ from the ground truth:\n{}\na log:\n{}\nb log:\n{}\nc log:\n{}",
            differences(&w, &truth).await,
            tail(&a.log_text()),
            tail(&b.log_text()),
            tail(&c.log_text())
        );
    }
    for (name, p) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        assert_eq!(
            p.terminate(Duration::from_secs(60)),
            Some(0),
            "{name} exits"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn static_members_cooperative_sticky_kill9_restart_and_join_keep_totals_exact() {
    static_members_rebalance(
        "coop",
        "\"partition.assignment.strategy\" = \"cooperative-sticky\"",
    )
    .await;
}

// Under the consumer protocol the restarted static member, joining before the killed one's
// session expired, gets UNRELEASED_INSTANCE_ID, which librdkafka raises as a fatal error:
// callmeter drops that consumer and joins again with a new one after a backoff.
#[tokio::test(flavor = "multi_thread")]
async fn static_members_kip848_consumer_protocol_kill9_restart_and_join_keep_totals_exact() {
    static_members_rebalance("kip848", "\"group.protocol\" = \"consumer\"").await;
}
