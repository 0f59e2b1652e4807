//! Introspection, memory, expiry lateness and restart with many grants.

use super::*;

/// One introspection call, which must find the token active.
pub(crate) async fn introspect_live(channel: Channel, token: String) {
    let answer = pb::access_service_client::AccessServiceClient::new(channel)
        .introspect(pb::IntrospectRequest { token })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
}

pub(crate) async fn introspection(profile: &Profile, live: usize) {
    let (dir, data, cert, key) = prepare(live, 0);
    let daemon = start(dir);
    let server_cert = latchkey::client::read_certificate(&data.join("tls-cert.pem")).unwrap();
    for transport in ["unix", "tls"] {
        let channel: Channel = match transport {
            "unix" => latchkey::client::connect_unix(&daemon.socket)
                .await
                .unwrap(),
            _ => latchkey::client::connect_tls(
                daemon.tls,
                server_cert.clone(),
                latchkey::client::ClientIdentity::from_pem_files(&cert, &key).unwrap(),
            )
            .await
            .unwrap(),
        };
        let echo_channel = channel.clone();
        let echo_call = move |_| {
            let mut client =
                tonic_health::pb::health_client::HealthClient::new(echo_channel.clone());
            async move {
                client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap();
            }
        };
        let intro_channel = channel.clone();
        let intro_call = move |i| introspect_live(intro_channel.clone(), token(i % live));
        let echo = measure(profile, echo_call.clone()).await;
        let intro = measure(profile, intro_call.clone()).await;
        let row = |callers: String, intro: &Figures, echo: &Figures| {
            println!(
                "| introspection | {transport}, {callers} | {live} | {:.0}/s | {:.0} µs | {:.0} µs | echo {:.0}/s, p99 {:.0} µs | {:.2} |",
                intro.throughput,
                intro.p50_us,
                intro.p99_us,
                echo.throughput,
                echo.p99_us,
                intro.throughput / echo.throughput
            );
        };
        row(format!("{} callers", profile.concurrency), &intro, &echo);

        // Saturation is reached well before 32 callers: past the knee, more callers only
        // queue. Find the fewest callers whose introspection rate is within 10% of the best
        // (one short run each), and measure echo and introspection there.
        let mut rates = vec![(profile.concurrency, intro.throughput)];
        let mut callers = 1;
        while callers < profile.concurrency {
            let probe = Profile {
                runs: 1,
                duration: (profile.duration / 2).max(Duration::from_millis(200)),
                concurrency: callers,
                sizes: Vec::new(),
                ..*profile
            };
            rates.push((
                callers,
                measure(&probe, intro_call.clone()).await.throughput,
            ));
            callers *= 2;
        }
        let best = rates.iter().map(|r| r.1).fold(0.0, f64::max);
        let knee = rates
            .iter()
            .filter(|r| r.1 >= 0.9 * best)
            .map(|r| r.0)
            .min()
            .unwrap_or(profile.concurrency);
        let at_knee = Profile {
            concurrency: knee,
            sizes: Vec::new(),
            ..*profile
        };
        let echo = measure(&at_knee, echo_call).await;
        let intro = measure(&at_knee, intro_call).await;
        rates.sort_by_key(|r| r.0);
        let sweep = rates
            .iter()
            .map(|(c, t)| format!("{c}: {t:.0}/s"))
            .collect::<Vec<_>>()
            .join(", ");
        row(format!("{knee} callers (saturation)"), &intro, &echo);
        println!(
            "  saturation sweep, {transport}, {live} grants (introspections/s by callers): {sweep}"
        );
    }
    drop(daemon);
}

/// Figure 6: the daemon's resident memory with `live` live grants, at READY and after serving
/// introspections of every token for one run's duration; `runs` daemons on fresh stores.
pub(crate) async fn memory(profile: &Profile, live: usize) {
    let (mut at_ready, mut serving) = (Vec::new(), Vec::new());
    for _ in 0..profile.runs {
        let (dir, _, _, _) = prepare(live, 0);
        let daemon = start(dir);
        at_ready.push(daemon.rss_mib());
        let channel = latchkey::client::connect_unix(&daemon.socket)
            .await
            .unwrap();
        let one_run = Profile {
            runs: 1,
            sizes: Vec::new(),
            ..*profile
        };
        measure(&one_run, move |i| {
            introspect_live(channel.clone(), token(i % live))
        })
        .await;
        serving.push(daemon.rss_mib());
    }
    let runs = |v: &[f64]| {
        v.iter()
            .map(|m| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| resident memory at READY | - | {live} | {:.1} MiB | runs {} MiB | | target 150 MB | {:.2} |",
        median(at_ready.clone()),
        runs(&at_ready),
        150e6 / 1048576.0 / median(at_ready.clone())
    );
    println!(
        "| resident memory after serving introspections | - | {live} | {:.1} MiB | runs {} MiB | | target 150 MB | {:.2} |",
        median(serving.clone()),
        runs(&serving),
        150e6 / 1048576.0 / median(serving.clone())
    );
}

/// Revocation lateness: `n` live grants expiring evenly over `window`, starting `lead` after
/// seeding; the delay from each grant's expiry to the `grants.expired` record listing it (internal sink).
pub(crate) async fn lateness(n: usize, lead: Duration, window: Duration, runs: usize) {
    let mut figures = Vec::new();
    for _ in 0..runs {
        figures.push(lateness_once(n, lead, window).await);
    }
    let column = |k: usize| median(figures.iter().map(|f: &[f64; 3]| f[k]).collect());
    let p99s: Vec<String> = figures.iter().map(|f| format!("{}", f[1])).collect();
    println!(
        "| revocation lateness (expiry → revoked) | - | {n} over {}s | p50 {} ms | p99 {} ms (runs {} ms) | max {} ms | target p99 50 ms | {:.2} |",
        window.as_secs(),
        column(0),
        column(1),
        p99s.join(", "),
        column(2),
        50.0 / column(1).max(1.0)
    );
}

/// One lateness run: p50, p99 and max in ms.
pub(crate) async fn lateness_once(n: usize, lead: Duration, window: Duration) -> [f64; 3] {
    let (dir, data, _, _) = prepare(0, 0);
    let base = SystemClock.now().plus(lead);
    // Grant i expires i/n of the way through the window (several per millisecond when n is
    // larger than the window in ms: no integer step that rounds to zero).
    let window_ms = window.as_millis() as i64;
    let expiry_of = move |i: usize| base.unix_millis() + window_ms * i as i64 / n as i64;
    seed_with(&data, n, |i| Timestamp::from_unix_millis(expiry_of(i)));
    let daemon = start(dir);
    assert!(
        SystemClock.now() < base,
        "seeding took longer than the lead: raise it"
    );
    // Waiting for the expiries is the figure, not a readiness wait.
    let end = base.plus(window).plus(Duration::from_secs(2));
    let left = end.unix_millis() - SystemClock.now().unix_millis();
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
    let channel = latchkey::client::connect_unix(&daemon.socket)
        .await
        .unwrap();
    let mut audit = pb::audit_service_client::AuditServiceClient::new(channel);
    let mut late = Vec::new();
    let mut from = 1;
    loop {
        let page = audit
            .read_records(pb::ReadRecordsRequest {
                from_seq: from,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let Some(last) = page.records.last() else {
            break;
        };
        from = last.seq + 1;
        // Expiries with nothing outside latchkey to confirm are audited a batch per record.
        for r in page.records.iter().filter(|r| r.event == "grants.expired") {
            let t = r.time.unwrap();
            let at = t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
            let record: serde_json::Value = serde_json::from_str(&r.json).unwrap();
            for grant in record["details"]["grants"].as_array().unwrap() {
                let i: usize = grant["grant"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("bench-")
                    .parse()
                    .unwrap();
                late.push(at - expiry_of(i));
            }
        }
    }
    assert_eq!(late.len(), n, "every grant revoked");
    late.sort_unstable();
    [late[n / 2], late[n * 99 / 100], late[n - 1]].map(|ms| ms as f64)
}

/// Figure 5: spawn → READY with half the grants expired while the daemon was down, `runs`
/// times on fresh stores; median, worst, and the ratio of the target (5 s) to the median.
/// Then, from READY, until the scheduler has rewritten every expired grant (the last
/// `grants.expired` record listing one) — work done while serving, not before.
pub(crate) async fn restart(grants: usize, runs: usize) {
    let expired = grants / 2;
    let mut times = Vec::new();
    let (mut memory, mut memory_after) = (Vec::new(), Vec::new());
    let mut rewrites = Vec::new();
    for _ in 0..runs {
        let (dir, _, _, _) = prepare(grants - expired, expired);
        let daemon = start(dir);
        let ready = Instant::now();
        times.push(daemon.ready_after.as_secs_f64());
        memory.push(daemon.rss_mib());
        let channel = latchkey::client::connect_unix(&daemon.socket)
            .await
            .unwrap();
        // The seeded store holds more than `grants` records (one `grant.issued` per grant
        // after init's): the records from there on include everything since the restart,
        // without streaming the million before.
        let mut stream = pb::audit_service_client::AuditServiceClient::new(channel)
            .follow_records(pb::FollowRecordsRequest {
                from_seq: grants as u64,
            })
            .await
            .unwrap()
            .into_inner();
        let (mut listed, mut at_start) = (0, 0);
        while listed < expired {
            let record = stream.message().await.unwrap().unwrap().record.unwrap();
            let json: serde_json::Value = serde_json::from_str(&record.json).unwrap();
            match record.event.as_str() {
                "grants.expired_while_down" => {
                    at_start += json["details"]["grants"].as_u64().unwrap() as usize;
                }
                "grants.expired" => {
                    listed += json["details"]["grants"].as_array().unwrap().len();
                }
                _ => {}
            }
        }
        assert_eq!(listed, expired, "each expired grant rewritten once");
        assert_eq!(at_start, expired, "all revoked by the record before READY");
        rewrites.push(ready.elapsed().as_secs_f64());
        memory_after.push(daemon.rss_mib());
    }
    let worst = times.iter().copied().fold(0.0, f64::max);
    let each: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    let ready = median(times);
    println!(
        "| restart: spawn → READY, {expired} expired revoked first | - | {grants} | {ready:.2} s | runs {} s | max {worst:.2} s | target 5 s | {:.2} |",
        each.join(", "),
        5.0 / ready
    );
    let each: Vec<String> = rewrites.iter().map(|t| format!("{t:.2}")).collect();
    println!(
        "| restart: READY → every expired grant rewritten (while serving) | - | {grants} | {:.2} s | runs {} s | | | |",
        median(rewrites.clone()),
        each.join(", ")
    );
    for (when, values) in [("at READY", memory), ("after the rewrites", memory_after)] {
        println!(
            "| resident memory after restart, {when} | - | {grants} | {:.1} MiB | | max {:.1} MiB | | |",
            median(values.clone()),
            values.iter().copied().fold(0.0, f64::max)
        );
    }
}
