//! The load tool: starts a real `latchkeyd` on a temp store, drives it over its gRPC API from
//! this separate process, and prints each figure with its median and p99 over several runs and
//! its ratio to a reference measured in the same run.
//!
//! ```sh
//! cargo bench --bench load            # the figures in BENCHMARKS.md (a few minutes)
//! cargo bench --bench load -- --smoke # seconds; `cargo test --all-targets` (CI) runs this too
//! cargo bench --bench load -- approvals   # one figure: introspection, approvals, cycles, lateness, restart
//! cargo bench --bench load -- restart --restart-grants=1000000   # figure 5 at its full size
//! ```
//!
//! Reference for introspection: the daemon's own `grpc.health.v1.Health/Check`, a bare tonic
//! unary service on the same listener, transport and TLS session setup.

// A benchmark harness: a failure is a panic with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cycles;
mod harness;
mod restart;

use cycles::*;
use harness::*;
use restart::*;
use std::os::unix::net::UnixDatagram;

use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};

use std::sync::Arc;

use std::time::{Duration, Instant};

use latchkey::audit::{Actor, AuditLog, CheckpointPolicy, Event};

use latchkey::base::clock::{Clock as _, SystemClock, Timestamp};

use latchkey::domain::grant::{ExpiryEntry, Grant, GrantState, expiry_key, token_hash};

use latchkey::pb;

use latchkey::store::{Keyspace, SledStore, Store, Txn};

use tonic::transport::Channel;

/// Callers per measurement (operators in the approval figure).
static CONCURRENCY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

fn profile_concurrency() -> usize {
    CONCURRENCY.load(std::sync::atomic::Ordering::Relaxed)
}

struct Profile {
    pub(crate) sizes: Vec<usize>,
    pub(crate) duration: Duration,
    pub(crate) runs: usize,
    pub(crate) concurrency: usize,
    pub(crate) restart_grants: usize,
}

struct Figures {
    pub(crate) throughput: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `concurrency` callers for `duration`, `runs` times; medians of throughput and p99.
async fn measure<F, Fut>(profile: &Profile, make: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut throughputs = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..profile.runs {
        let deadline = Instant::now() + profile.duration;
        let mut tasks = Vec::new();
        for worker in 0..profile.concurrency {
            let make = make.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                // Call `k` of worker `w` is `w * 1_000_000 + k`: a worker can own a key.
                let mut i = worker * 1_000_000;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    make(i).await;
                    latencies.push(t0.elapsed());
                    i += 1;
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        throughputs.push(all.len() as f64 / profile.duration.as_secs_f64());
        p50s.push(all[all.len() / 2].as_secs_f64() * 1e6);
        p99s.push(all[all.len() * 99 / 100].as_secs_f64() * 1e6);
    }
    Figures {
        throughput: median(throughputs),
        p50_us: median(p50s),
        p99_us: median(p99s),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` (the test suite, CI) runs this
    // without it: then it is the smoke run, so the tool cannot rot.
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let profile = if smoke {
        Profile {
            sizes: vec![1_000],
            duration: Duration::from_millis(500),
            runs: 1,
            concurrency: 8,
            restart_grants: 2_000,
        }
    } else {
        Profile {
            sizes: vec![1_000, 100_000],
            duration: Duration::from_secs(5),
            runs: 3,
            concurrency: 32,
            restart_grants: 200_000,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| figure | transport | grants | value (median) | p50 | p99 | reference (same run) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // Optional figure names after the flags run only those: introspection, memory, approvals,
    // cycles, lateness, restart.
    let only: Vec<&str> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let wanted = |name: &str| only.is_empty() || only.contains(&name);
    if wanted("introspection") {
        for &live in &profile.sizes {
            runtime.block_on(introspection(&profile, live));
        }
    }
    if wanted("memory") {
        for &live in &profile.sizes {
            runtime.block_on(memory(&profile, live));
        }
    }
    CONCURRENCY.store(profile.concurrency, std::sync::atomic::Ordering::Relaxed);
    if wanted("approvals") {
        runtime.block_on(approvals(&profile));
    }
    if wanted("cycles") {
        runtime.block_on(cycles(&profile));
    }
    if wanted("lateness") {
        let (n, lead, window) = if smoke {
            (500, Duration::from_secs(3), Duration::from_secs(1))
        } else {
            (100_000, Duration::from_secs(120), Duration::from_secs(20))
        };
        runtime.block_on(lateness(n, lead, window, profile.runs));
    }
    if !wanted("restart") {
        return;
    }
    // `--restart-grants=N` overrides the profile's size (the issue's figure is 1,000,000).
    let grants = args
        .iter()
        .find_map(|a| a.strip_prefix("--restart-grants="))
        .map(|n| n.parse().expect("--restart-grants=N takes a number"))
        .unwrap_or(profile.restart_grants);
    runtime.block_on(restart(grants, profile.runs));
}
