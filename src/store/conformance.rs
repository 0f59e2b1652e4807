//! The store conformance suite: the properties every [`Store`] backend must have, each checked
//! on a fresh, empty store. A backend's tests call [`run_all`] with a function that opens one;
//! the in-memory backend is the reference that passes it.
//!
//! Every check is a `pub fn(&dyn Store) -> Result<(), String>` (listed in [`CHECKS`]): `Err`
//! says what did not hold. [`run_all`] runs them all and names every one that failed.
//!
//! Crash recovery is not checked here: it needs a backend that can be cut short and reopened.
//! For sled that is `sled_store`'s own test of its journal replay (`journal_and_write` with a
//! write limit, a copy of the files as a crash image, `SledStore::open` on the copy). A
//! backend-blind version would take a second hook next to `open`, e.g.
//! `fn crash_during(&self, txn: &Txn, writes_landed: usize) -> Box<dyn Store>` (apply the
//! journal record and the first `writes_landed` writes, then reopen from what is on disk),
//! and check that the reopened store holds every write of `txn` or none of them, and every
//! transaction committed before it. A `run_crash_checks(open_crashable)` beside [`run_all`]
//! would call it for every backend that has a disk; the in-memory backend has none to offer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Entry, Keyspace, Store, StoreError, Txn, scan_prefix};

/// One property check: `Err` says what did not hold.
pub(crate) type Check = fn(&dyn Store) -> Result<(), String>;

/// Threads of the concurrency checks.
const THREADS: usize = 4;

/// The empty byte string, as a key or a value.
const EMPTY: &[u8] = b"";

/// Returns `Err` with the formatted message unless the condition holds.
macro_rules! ensure {
    ($holds:expr, $($why:tt)+) => {
        if !$holds {
            return Err(std::fmt::format(format_args!($($why)+)));
        }
    };
}

/// Returns `Err` showing both sides unless `actual == expected`.
macro_rules! ensure_eq {
    ($actual:expr, $expected:expr, $($what:tt)+) => {{
        let (actual, expected) = (&$actual, &$expected);
        if actual != expected {
            return Err(format!(
                "{}: got {:?}, expected {:?}",
                format_args!($($what)+),
                actual,
                expected
            ));
        }
    }};
}

/// Adds what the check was doing to a store error.
trait Context<T> {
    fn context(self, doing: &str) -> Result<T, String>;
}

impl<T> Context<T> for Result<T, StoreError> {
    fn context(self, doing: &str) -> Result<T, String> {
        self.map_err(|e| format!("{doing}: {e}"))
    }
}

/// Runs every check in [`CHECKS`], each on a store `open` returns fresh and empty, and panics
/// naming every check that failed (a check that panics counts as failed).
///
/// For a backend on disk, `open` can create each store in its own directory under one
/// temporary directory that outlives the call.
pub(crate) fn run_all<S: Store>(open: impl Fn() -> S) {
    let mut failed = Vec::new();
    for &(name, check) in CHECKS {
        let store = open();
        match catch_unwind(AssertUnwindSafe(|| check(&store))) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failed.push(format!("{name}: {why}")),
            Err(panic) => failed.push(format!("{name}: panicked: {}", panic_message(&*panic))),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} store conformance checks failed:\n  {}",
        failed.len(),
        CHECKS.len(),
        failed.join("\n  ")
    );
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Declares [`CHECKS`] from the names of the check functions.
macro_rules! checks {
    ($($check:ident),+ $(,)?) => {
        /// Every check of the suite, by name, in the order [`run_all`] runs them.
        pub(crate) const CHECKS: &[(&str, Check)] = &[$((stringify!($check), $check as Check)),+];
    };
}

checks!(
    an_empty_store_holds_nothing,
    a_committed_transaction_is_visible_whole_across_keyspaces,
    a_failed_precondition_writes_nothing_of_the_transaction,
    require_absent_holds_only_while_the_key_is_absent,
    require_equals_holds_only_for_the_exact_current_value,
    every_precondition_of_a_transaction_must_hold,
    preconditions_see_the_store_as_it_was_before_the_transaction,
    later_writes_of_a_transaction_override_earlier_ones,
    deletes_remove_only_their_key_and_deleting_an_absent_key_succeeds,
    keyspaces_are_independent,
    scans_return_keys_in_byte_order_from_the_start_key,
    last_is_the_entry_with_the_greatest_key,
    prefix_scans_return_exactly_the_keys_under_the_prefix,
    counts_follow_puts_overwrites_and_deletes,
    count_below_counts_exactly_the_keys_that_sort_before_the_bound,
    large_keys_and_values_round_trip_and_compare_whole,
    many_keys_scan_in_order_and_page_without_gaps,
    flush_keeps_everything_applied_so_far,
    racing_transactions_on_one_key_have_exactly_one_winner,
    a_counter_incremented_by_compare_and_set_from_many_threads_loses_no_increment,
    readers_never_see_part_of_a_transaction,
);

// ---------------------------------------------------------------------------------------------
// Helpers.

fn value(store: &dyn Store, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    store
        .get(ks, key)
        .context(&format!("get {}/{}", ks.name(), key.escape_ascii()))
}

fn keys_of(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries.iter().map(|(key, _)| key.clone()).collect()
}

/// Keys as readable text, for failure messages.
fn shown(keys: &[Vec<u8>]) -> Vec<String> {
    keys.iter()
        .map(|key| key.escape_ascii().to_string())
        .collect()
}

/// Commits one transaction putting each key with itself as the value.
fn put_keys_as_values(store: &dyn Store, ks: Keyspace, keys: &[Vec<u8>]) -> Result<(), String> {
    let mut txn = Txn::new();
    for key in keys {
        txn.put_raw(ks, key.clone(), key.clone());
    }
    store.commit(&txn).context("commit the keys")
}

fn expect_conflict(outcome: Result<(), StoreError>, what: &str) -> Result<(), String> {
    match outcome {
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(format!("{what}: expected a conflict, got the error {e}")),
        Ok(()) => Err(format!("{what}: expected a conflict, but it committed")),
    }
}

/// Commits (`durably`) or applies `txn`: `Ok(true)` if it landed, `Ok(false)` on a conflict,
/// `Err` on any other failure, a panic included (so a racing thread always reaches the next
/// barrier instead of leaving the others waiting).
fn attempt(store: &dyn Store, txn: &Txn, durably: bool) -> Result<bool, String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if durably {
            store.commit(txn)
        } else {
            store.apply(txn)
        }
    }));
    match outcome {
        Ok(Ok(())) => Ok(true),
        Ok(Err(StoreError::Conflict(_))) => Ok(false),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("the store panicked: {}", panic_message(&*panic))),
    }
}

/// Keys whose byte order differs from most other orders: the empty key, keys that are
/// prefixes of others, bytes above 0x7f (signed order differs), upper before lower case.
fn awkward_keys() -> Vec<Vec<u8>> {
    vec![
        b"b".to_vec(),
        vec![0xff, 0xff, 0xff],
        b"a".to_vec(),
        Vec::new(),
        vec![0x80],
        b"ab".to_vec(),
        vec![0x00],
        b"a\0".to_vec(),
        vec![0x7f],
        vec![0xff],
        b"B".to_vec(),
        vec![0x00, 0x00],
        vec![0xfe, 0xff],
        vec![0xff, 0x00],
        b"A".to_vec(),
        b"aa".to_vec(),
    ]
}

/// Bounds and start keys to probe with: every awkward key, and keys between and past them.
fn probes() -> Vec<Vec<u8>> {
    let mut probes = awkward_keys();
    probes.extend([
        vec![0x01],
        b"a\0\0".to_vec(),
        b"aaa".to_vec(),
        b"c".to_vec(),
        vec![0xff, 0x01],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0xff, 0x00],
        vec![0xff; 8],
    ]);
    probes
}

/// A counter as the counter check stores it (u64 big-endian).
fn decode_counter(raw: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| format!("a counter of {} bytes", raw.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn sorted(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    keys.sort();
    keys.dedup();
    keys
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Every keyspace of a new store is empty, and an empty transaction and a flush succeed.
pub(crate) fn an_empty_store_holds_nothing(store: &dyn Store) -> Result<(), String> {
    for &ks in Keyspace::ALL {
        let name = ks.name();
        ensure_eq!(value(store, ks, b"")?, None, "{name}: the empty key");
        ensure_eq!(value(store, ks, b"a")?, None, "{name}: key a");
        let all = store.scan_from(ks, b"", usize::MAX).context("scan")?;
        ensure!(
            all.is_empty(),
            "{name}: a scan found {:?}",
            shown(&keys_of(&all))
        );
        ensure_eq!(store.last(ks).context("last")?, None, "{name}: last");
        ensure_eq!(store.count(ks).context("count")?, 0, "{name}: count");
        ensure_eq!(
            store.count_below(ks, &[0xff; 8]).context("count_below")?,
            0,
            "{name}: count below ff…"
        );
    }
    store
        .commit(&Txn::new())
        .context("commit an empty transaction")?;
    store
        .apply(&Txn::new())
        .context("apply an empty transaction")?;
    store.flush().context("flush")?;
    Ok(())
}

/// Every write of a committed transaction is visible, in every keyspace it touched; an
/// applied one is visible at once, before any flush.
pub(crate) fn a_committed_transaction_is_visible_whole_across_keyspaces(
    store: &dyn Store,
) -> Result<(), String> {
    let mut seed = Txn::new();
    seed.put_raw(Keyspace::Meta, "doomed", "x");
    store.commit(&seed).context("commit the seed")?;

    let mut txn = Txn::new();
    txn.put_raw(Keyspace::Workloads, "w", "1")
        .put_raw(Keyspace::WorkloadPins, "p", "w")
        .put_raw(Keyspace::Audit, 7u64.to_be_bytes(), "record")
        .delete(Keyspace::Meta, "doomed");
    store.commit(&txn).context("commit")?;
    ensure_eq!(
        value(store, Keyspace::Workloads, b"w")?,
        Some(b"1".to_vec()),
        "workload after commit"
    );
    ensure_eq!(
        value(store, Keyspace::WorkloadPins, b"p")?,
        Some(b"w".to_vec()),
        "pin after commit"
    );
    ensure_eq!(
        value(store, Keyspace::Audit, &7u64.to_be_bytes())?,
        Some(b"record".to_vec()),
        "audit record after commit"
    );
    ensure_eq!(
        value(store, Keyspace::Meta, b"doomed")?,
        None,
        "deleted key after commit"
    );

    let mut applied = Txn::new();
    applied
        .put_raw(Keyspace::Grants, "g", "grant")
        .put_raw(Keyspace::GrantTokens, "t", "g");
    store.apply(&applied).context("apply")?;
    for stage in ["after apply", "after flush"] {
        ensure_eq!(
            value(store, Keyspace::Grants, b"g")?,
            Some(b"grant".to_vec()),
            "grant {stage}"
        );
        ensure_eq!(
            value(store, Keyspace::GrantTokens, b"t")?,
            Some(b"g".to_vec()),
            "token {stage}"
        );
        store.flush().context("flush")?;
    }
    Ok(())
}

/// A transaction whose last precondition fails writes nothing, through `commit` and `apply`
/// alike: no put, no overwrite, no delete, in any keyspace.
pub(crate) fn a_failed_precondition_writes_nothing_of_the_transaction(
    store: &dyn Store,
) -> Result<(), String> {
    let mut seed = Txn::new();
    seed.put_raw(Keyspace::Meta, "taken", "1")
        .put_raw(Keyspace::Meta, "kept", "k")
        .put_raw(Keyspace::Workloads, "w", "old");
    store.commit(&seed).context("commit the seed")?;

    for (how, durably) in [("commit", true), ("apply", false)] {
        let mut txn = Txn::new();
        txn.require_absent(Keyspace::Requests, "free")
            .require_equals(Keyspace::Workloads, "w", "old")
            .require_absent(Keyspace::Meta, "taken")
            .put_raw(Keyspace::Workloads, "w", "new")
            .put_raw(Keyspace::Grants, "g", "1")
            .put_raw(Keyspace::Requests, "free", "now taken")
            .delete(Keyspace::Meta, "kept");
        let outcome = if durably {
            store.commit(&txn)
        } else {
            store.apply(&txn)
        };
        expect_conflict(outcome, how)?;
        ensure_eq!(
            value(store, Keyspace::Workloads, b"w")?,
            Some(b"old".to_vec()),
            "{how}: overwritten key"
        );
        ensure_eq!(
            value(store, Keyspace::Meta, b"kept")?,
            Some(b"k".to_vec()),
            "{how}: deleted key"
        );
        ensure_eq!(
            value(store, Keyspace::Meta, b"taken")?,
            Some(b"1".to_vec()),
            "{how}: the key the precondition was about"
        );
        ensure_eq!(
            store.count(Keyspace::Grants).context("count")?,
            0,
            "{how}: grants"
        );
        ensure_eq!(
            store.count(Keyspace::Requests).context("count")?,
            0,
            "{how}: requests"
        );
    }
    Ok(())
}

/// `require_absent` holds on an absent key only: a present key, even one with an empty value,
/// is a conflict; a deleted key is absent again; a key that only shares a prefix is not it.
pub(crate) fn require_absent_holds_only_while_the_key_is_absent(
    store: &dyn Store,
) -> Result<(), String> {
    let mut first = Txn::new();
    first
        .require_absent(Keyspace::Scopes, "s")
        .put_raw(Keyspace::Scopes, "s", "1");
    store.commit(&first).context("absent when absent")?;
    ensure_eq!(
        value(store, Keyspace::Scopes, b"s")?,
        Some(b"1".to_vec()),
        "after the first put"
    );

    let mut second = Txn::new();
    second
        .require_absent(Keyspace::Scopes, "s")
        .put_raw(Keyspace::Scopes, "s", "2")
        .put_raw(Keyspace::Operators, "o", "1");
    expect_conflict(store.commit(&second), "absent when present")?;
    ensure_eq!(
        value(store, Keyspace::Scopes, b"s")?,
        Some(b"1".to_vec()),
        "the contested key after the conflict"
    );
    ensure_eq!(
        value(store, Keyspace::Operators, b"o")?,
        None,
        "the other write of the conflicting transaction"
    );

    let mut empty = Txn::new();
    empty.put_raw(Keyspace::Scopes, "empty", EMPTY);
    store.commit(&empty).context("put an empty value")?;
    let mut over_empty = Txn::new();
    over_empty
        .require_absent(Keyspace::Scopes, "empty")
        .put_raw(Keyspace::Scopes, "empty", "x");
    expect_conflict(
        store.commit(&over_empty),
        "absent when present with an empty value",
    )?;

    let mut neighbours = Txn::new();
    neighbours
        .require_absent(Keyspace::Scopes, "s0")
        .require_absent(Keyspace::Scopes, EMPTY)
        .require_absent(Keyspace::Scopes, "emp")
        .put_raw(Keyspace::Scopes, "s0", "n");
    store
        .commit(&neighbours)
        .context("absent for keys that only share a prefix with present ones")?;

    let mut delete = Txn::new();
    delete.delete(Keyspace::Scopes, "s");
    store.commit(&delete).context("delete")?;
    let mut again = Txn::new();
    again
        .require_absent(Keyspace::Scopes, "s")
        .put_raw(Keyspace::Scopes, "s", "3");
    store.commit(&again).context("absent after a delete")?;
    ensure_eq!(
        value(store, Keyspace::Scopes, b"s")?,
        Some(b"3".to_vec()),
        "after the put following the delete"
    );
    Ok(())
}

/// `require_equals` holds only when the key exists with exactly the expected bytes: not a
/// prefix of them, not a longer value, not on an absent key, not with a stale value.
pub(crate) fn require_equals_holds_only_for_the_exact_current_value(
    store: &dyn Store,
) -> Result<(), String> {
    let mut seed = Txn::new();
    seed.put_raw(Keyspace::Scopes, "s", "12")
        .put_raw(Keyspace::Scopes, "empty", EMPTY);
    store.commit(&seed).context("commit the seed")?;

    let mut fresh = Txn::new();
    fresh
        .require_equals(Keyspace::Scopes, "s", "12")
        .put_raw(Keyspace::Scopes, "s", "13");
    store
        .commit(&fresh)
        .context("equals on the current value")?;
    ensure_eq!(
        value(store, Keyspace::Scopes, b"s")?,
        Some(b"13".to_vec()),
        "after the matching compare-and-set"
    );

    for (expected, why) in [
        (b"12".to_vec(), "a stale value"),
        (b"1".to_vec(), "a prefix of the value"),
        (b"134".to_vec(), "the value and more"),
        (Vec::new(), "an empty value"),
    ] {
        let mut stale = Txn::new();
        stale
            .require_equals(Keyspace::Scopes, "s", expected)
            .put_raw(Keyspace::Scopes, "s", "99")
            .put_raw(Keyspace::Operators, "o", "1");
        expect_conflict(store.commit(&stale), &format!("equals on {why}"))?;
        ensure_eq!(
            value(store, Keyspace::Scopes, b"s")?,
            Some(b"13".to_vec()),
            "after a compare on {why}"
        );
        ensure_eq!(
            value(store, Keyspace::Operators, b"o")?,
            None,
            "the other write after a compare on {why}"
        );
    }

    for expected in [Vec::new(), b"x".to_vec()] {
        let mut missing = Txn::new();
        missing
            .require_equals(Keyspace::Scopes, "missing", expected.clone())
            .put_raw(Keyspace::Scopes, "missing", "now here");
        expect_conflict(
            store.commit(&missing),
            &format!(
                "equals {:?} on an absent key",
                expected.escape_ascii().to_string()
            ),
        )?;
        ensure_eq!(
            value(store, Keyspace::Scopes, b"missing")?,
            None,
            "the absent key after the conflict"
        );
    }

    let mut on_empty = Txn::new();
    on_empty
        .require_equals(Keyspace::Scopes, "empty", EMPTY)
        .put_raw(Keyspace::Scopes, "empty", "filled");
    store
        .commit(&on_empty)
        .context("equals on a present empty value")?;
    ensure_eq!(
        value(store, Keyspace::Scopes, b"empty")?,
        Some(b"filled".to_vec()),
        "after the compare on the empty value"
    );
    Ok(())
}

/// One failed precondition among several that hold is a conflict, wherever it is in the list
/// and whichever keyspace it is about.
pub(crate) fn every_precondition_of_a_transaction_must_hold(
    store: &dyn Store,
) -> Result<(), String> {
    let mut seed = Txn::new();
    seed.put_raw(Keyspace::Meta, "a", "1")
        .put_raw(Keyspace::Changes, "b", "2");
    store.commit(&seed).context("commit the seed")?;

    let failing_first = {
        let mut txn = Txn::new();
        txn.require_equals(Keyspace::Changes, "b", "9")
            .require_equals(Keyspace::Meta, "a", "1")
            .require_absent(Keyspace::Grants, "g")
            .put_raw(Keyspace::Grants, "g", "1");
        txn
    };
    let failing_last = {
        let mut txn = Txn::new();
        txn.require_equals(Keyspace::Meta, "a", "1")
            .require_absent(Keyspace::Grants, "g")
            .require_absent(Keyspace::Changes, "b")
            .put_raw(Keyspace::Grants, "g", "1");
        txn
    };
    for (txn, which) in [(failing_first, "first"), (failing_last, "last")] {
        expect_conflict(
            store.commit(&txn),
            &format!("the {which} precondition fails"),
        )?;
        ensure_eq!(
            value(store, Keyspace::Grants, b"g")?,
            None,
            "the write after the {which} precondition failed"
        );
    }

    let mut all_hold = Txn::new();
    all_hold
        .require_equals(Keyspace::Meta, "a", "1")
        .require_equals(Keyspace::Changes, "b", "2")
        .require_absent(Keyspace::Grants, "g")
        .put_raw(Keyspace::Grants, "g", "1");
    store
        .commit(&all_hold)
        .context("commit with every precondition holding")?;
    ensure_eq!(
        value(store, Keyspace::Grants, b"g")?,
        Some(b"1".to_vec()),
        "the write once every precondition held"
    );
    Ok(())
}

/// Preconditions are checked against the store before any write of their own transaction:
/// a transaction may require a key absent and put it, or require its value and replace it.
pub(crate) fn preconditions_see_the_store_as_it_was_before_the_transaction(
    store: &dyn Store,
) -> Result<(), String> {
    let mut create = Txn::new();
    create
        .put_raw(Keyspace::Requests, "r", "1")
        .require_absent(Keyspace::Requests, "r");
    store
        .commit(&create)
        .context("put a key and require it absent")?;

    let mut replace = Txn::new();
    replace
        .put_raw(Keyspace::Requests, "r", "2")
        .require_equals(Keyspace::Requests, "r", "1");
    store
        .commit(&replace)
        .context("replace a key and require its old value")?;
    ensure_eq!(
        value(store, Keyspace::Requests, b"r")?,
        Some(b"2".to_vec()),
        "after the replace"
    );

    // Its own put does not satisfy a precondition on the new value either.
    let mut own = Txn::new();
    own.put_raw(Keyspace::Requests, "r", "3")
        .require_equals(Keyspace::Requests, "r", "3");
    expect_conflict(
        store.commit(&own),
        "a precondition met only by the transaction's own write",
    )?;
    ensure_eq!(
        value(store, Keyspace::Requests, b"r")?,
        Some(b"2".to_vec()),
        "after the conflict"
    );
    Ok(())
}

/// Writes of one transaction apply in order: the last write to a key wins.
pub(crate) fn later_writes_of_a_transaction_override_earlier_ones(
    store: &dyn Store,
) -> Result<(), String> {
    let mut seed = Txn::new();
    seed.put_raw(Keyspace::Grants, "revived", "old");
    store.commit(&seed).context("commit the seed")?;

    let mut txn = Txn::new();
    txn.put_raw(Keyspace::Grants, "twice", "1")
        .put_raw(Keyspace::Grants, "twice", "2")
        .put_raw(Keyspace::Grants, "short-lived", "x")
        .delete(Keyspace::Grants, "short-lived")
        .delete(Keyspace::Grants, "revived")
        .put_raw(Keyspace::Grants, "revived", "new");
    store.commit(&txn).context("commit")?;
    ensure_eq!(
        value(store, Keyspace::Grants, b"twice")?,
        Some(b"2".to_vec()),
        "a key put twice"
    );
    ensure_eq!(
        value(store, Keyspace::Grants, b"short-lived")?,
        None,
        "a key put then deleted"
    );
    ensure_eq!(
        value(store, Keyspace::Grants, b"revived")?,
        Some(b"new".to_vec()),
        "a key deleted then put"
    );
    ensure_eq!(
        store.count(Keyspace::Grants).context("count")?,
        2,
        "keys left"
    );
    Ok(())
}

/// A delete removes its key and nothing else; deleting an absent key succeeds and changes
/// nothing; deleting the greatest key moves `last` back; deleting everything empties the
/// keyspace.
pub(crate) fn deletes_remove_only_their_key_and_deleting_an_absent_key_succeeds(
    store: &dyn Store,
) -> Result<(), String> {
    let keys = sorted(vec![
        b"a".to_vec(),
        b"b".to_vec(),
        b"bb".to_vec(),
        b"c".to_vec(),
    ]);
    put_keys_as_values(store, Keyspace::Ceremonies, &keys)?;

    let mut middle = Txn::new();
    middle.delete(Keyspace::Ceremonies, "b");
    store.commit(&middle).context("delete b")?;
    let left = keys_of(
        &store
            .scan_from(Keyspace::Ceremonies, b"", usize::MAX)
            .context("scan")?,
    );
    ensure_eq!(shown(&left), vec!["a", "bb", "c"], "keys after deleting b");

    let mut absent = Txn::new();
    absent
        .delete(Keyspace::Ceremonies, "zz")
        .delete(Keyspace::Ceremonies, "b")
        .delete(Keyspace::Workloads, "a");
    store.commit(&absent).context("delete absent keys")?;
    ensure_eq!(
        store.count(Keyspace::Ceremonies).context("count")?,
        3,
        "keys after deleting absent ones"
    );

    let mut greatest = Txn::new();
    greatest
        .require_equals(Keyspace::Ceremonies, "c", "c")
        .delete(Keyspace::Ceremonies, "c");
    store
        .commit(&greatest)
        .context("delete c under a precondition")?;
    ensure_eq!(
        store.last(Keyspace::Ceremonies).context("last")?,
        Some((b"bb".to_vec(), b"bb".to_vec())),
        "last after deleting the greatest key"
    );

    let mut rest = Txn::new();
    rest.delete(Keyspace::Ceremonies, "a")
        .delete(Keyspace::Ceremonies, "bb");
    store.commit(&rest).context("delete the rest")?;
    ensure_eq!(
        store.count(Keyspace::Ceremonies).context("count")?,
        0,
        "count once all are deleted"
    );
    ensure_eq!(
        store.last(Keyspace::Ceremonies).context("last")?,
        None,
        "last once all are deleted"
    );
    ensure!(
        store
            .scan_from(Keyspace::Ceremonies, b"", usize::MAX)
            .context("scan")?
            .is_empty(),
        "a scan found keys once all were deleted"
    );
    Ok(())
}

/// The same key in every keyspace holds a separate value; deleting it, scanning, counting
/// and preconditions in one keyspace do not see the others.
pub(crate) fn keyspaces_are_independent(store: &dyn Store) -> Result<(), String> {
    let mut txn = Txn::new();
    for &ks in Keyspace::ALL {
        txn.put_raw(ks, "same", ks.name());
    }
    store.commit(&txn).context("put the same key everywhere")?;
    for &ks in Keyspace::ALL {
        let name = ks.name();
        ensure_eq!(
            value(store, ks, b"same")?,
            Some(name.as_bytes().to_vec()),
            "{name}: its own value"
        );
        ensure_eq!(store.count(ks).context("count")?, 1, "{name}: count");
        ensure_eq!(
            store.scan_from(ks, b"", usize::MAX).context("scan")?.len(),
            1,
            "{name}: entries a scan finds"
        );
    }

    let mut delete = Txn::new();
    delete.delete(Keyspace::Workloads, "same");
    store.commit(&delete).context("delete in one keyspace")?;
    for &ks in Keyspace::ALL {
        let expected = (ks != Keyspace::Workloads).then(|| ks.name().as_bytes().to_vec());
        ensure_eq!(
            value(store, ks, b"same")?,
            expected,
            "{}: after deleting the key from workloads",
            ks.name()
        );
    }

    // Preconditions look at their own keyspace only.
    let mut only_here = Txn::new();
    only_here
        .require_absent(Keyspace::Workloads, "same")
        .require_equals(Keyspace::Operators, "same", Keyspace::Operators.name())
        .put_raw(Keyspace::Workloads, "same", "back");
    store
        .commit(&only_here)
        .context("preconditions on the same key in two keyspaces")?;
    let mut elsewhere = Txn::new();
    elsewhere
        .require_equals(Keyspace::Scopes, "same", Keyspace::Operators.name())
        .put_raw(Keyspace::Scopes, "same", "x");
    expect_conflict(
        store.commit(&elsewhere),
        "a precondition holding the value of another keyspace",
    )?;
    Ok(())
}

/// A scan returns the keys `>= start` in byte order (lexicographic, unsigned, shorter first
/// on a shared prefix), at most `limit` of them, each with its value.
pub(crate) fn scans_return_keys_in_byte_order_from_the_start_key(
    store: &dyn Store,
) -> Result<(), String> {
    let keys = awkward_keys();
    let (first_half, second_half) = keys.split_at(keys.len() / 2);
    // Two transactions, neither in order.
    put_keys_as_values(store, Keyspace::Requests, second_half)?;
    put_keys_as_values(store, Keyspace::Requests, first_half)?;
    let ordered = sorted(keys.clone());

    let all = store
        .scan_from(Keyspace::Requests, b"", usize::MAX)
        .context("scan everything")?;
    ensure_eq!(
        shown(&keys_of(&all)),
        shown(&ordered),
        "a scan from the empty key"
    );
    ensure!(
        all.iter().all(|(key, value)| key == value),
        "a value did not travel with its key"
    );

    for start in probes() {
        let expected: Vec<Vec<u8>> = ordered.iter().filter(|k| **k >= start).cloned().collect();
        let found = store
            .scan_from(Keyspace::Requests, &start, usize::MAX)
            .context("scan")?;
        ensure_eq!(
            shown(&keys_of(&found)),
            shown(&expected),
            "a scan from {}",
            start.escape_ascii()
        );
    }

    for limit in 0..=ordered.len() + 1 {
        let found = store
            .scan_from(Keyspace::Requests, b"", limit)
            .context("scan")?;
        let expected = &ordered[..limit.min(ordered.len())];
        ensure_eq!(
            shown(&keys_of(&found)),
            shown(expected),
            "a scan limited to {limit}"
        );
    }
    let from_middle = store
        .scan_from(Keyspace::Requests, b"a", 3)
        .context("scan")?;
    ensure_eq!(
        shown(&keys_of(&from_middle)),
        vec!["a", "a\\x00", "aa"],
        "three keys from a"
    );
    Ok(())
}

/// `last` is the entry with the greatest key in byte order (not the longest, not the newest),
/// with its current value.
pub(crate) fn last_is_the_entry_with_the_greatest_key(store: &dyn Store) -> Result<(), String> {
    let keys = awkward_keys();
    put_keys_as_values(store, Keyspace::GrantExpiry, &keys)?;
    ensure_eq!(
        store.last(Keyspace::GrantExpiry).context("last")?,
        Some((vec![0xffu8, 0xff, 0xff], vec![0xffu8, 0xff, 0xff])),
        "last of the awkward keys"
    );

    let mut txn = Txn::new();
    txn.put_raw(Keyspace::GrantExpiry, vec![0xffu8, 0xff, 0xff], "new value")
        .put_raw(
            Keyspace::GrantExpiry,
            vec![0xfeu8; 20],
            "longer but smaller",
        );
    store.commit(&txn).context("overwrite the greatest key")?;
    ensure_eq!(
        store.last(Keyspace::GrantExpiry).context("last")?,
        Some((vec![0xffu8, 0xff, 0xff], b"new value".to_vec())),
        "last after overwriting it"
    );

    let mut delete = Txn::new();
    delete
        .delete(Keyspace::GrantExpiry, vec![0xffu8, 0xff, 0xff])
        .delete(Keyspace::GrantExpiry, vec![0xffu8, 0x00]);
    store.commit(&delete).context("delete the two greatest")?;
    ensure_eq!(
        store
            .last(Keyspace::GrantExpiry)
            .context("last")?
            .map(|(key, _)| key),
        Some(vec![0xffu8]),
        "last after deleting the two greatest"
    );
    Ok(())
}

/// A prefix scan ([`scan_prefix`], paging through `scan_from`) returns exactly the keys that
/// start with the prefix, in order: the prefix itself is under it, keys that share a shorter
/// or longer prefix are not, 0xff bytes and the end of the keyspace are no special case, and
/// more keys than a page holds come back whole.
pub(crate) fn prefix_scans_return_exactly_the_keys_under_the_prefix(
    store: &dyn Store,
) -> Result<(), String> {
    let mut keys: Vec<Vec<u8>> = [
        "alic/x", "alice", "alice/", "alice//", "alice0/x", "alicf/x", "b", "carl/x",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    // More than scan_prefix's largest page (256), not in byte order when numbered.
    keys.extend((0..300).map(|i| format!("alice/{i}").into_bytes()));
    keys.extend([
        vec![0x01u8, 0xfe, 0xff],
        vec![0x01, 0xff],
        vec![0x01, 0xff, 0x00],
        vec![0x01, 0xff, 0xff],
        vec![0x01, 0xff, 0xff, 0xff],
        vec![0x02],
        vec![0x02, 0x00],
        vec![0xfe],
        vec![0xff],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0x00],
    ]);
    put_keys_as_values(store, Keyspace::OperatorKeys, &keys)?;
    let ordered = sorted(keys);

    let prefixes: Vec<Vec<u8>> = vec![
        b"alice/".to_vec(),
        b"alice".to_vec(),
        b"alic".to_vec(),
        b"alice/1".to_vec(),
        b"alice/299".to_vec(),
        b"alice/2990".to_vec(),
        b"carol/".to_vec(),
        Vec::new(),
        vec![0x01],
        vec![0x01, 0xff],
        vec![0x01, 0xff, 0xff],
        vec![0xff],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0xff],
    ];
    for prefix in prefixes {
        let expected: Vec<Vec<u8>> = ordered
            .iter()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        let found = scan_prefix(store, Keyspace::OperatorKeys, &prefix).context("scan_prefix")?;
        ensure_eq!(
            shown(&keys_of(&found)),
            shown(&expected),
            "keys under {}",
            prefix.escape_ascii()
        );
        ensure!(
            found.iter().all(|(key, value)| key == value),
            "under {}: a value did not travel with its key",
            prefix.escape_ascii()
        );
    }
    Ok(())
}

/// `count` follows puts of new keys, not overwrites; deletes of present keys, not of absent
/// ones; and counts one keyspace only.
pub(crate) fn counts_follow_puts_overwrites_and_deletes(store: &dyn Store) -> Result<(), String> {
    let count = |ks| store.count(ks).context("count");
    put_keys_as_values(store, Keyspace::Operators, &awkward_keys())?;
    let n = u64::try_from(awkward_keys().len()).map_err(|e| e.to_string())?;
    ensure_eq!(count(Keyspace::Operators)?, n, "after the puts");

    let mut overwrite = Txn::new();
    overwrite
        .put_raw(Keyspace::Operators, "a", "again")
        .put_raw(Keyspace::Operators, EMPTY, "again");
    store.commit(&overwrite).context("overwrite")?;
    ensure_eq!(count(Keyspace::Operators)?, n, "after overwrites");

    let mut delete = Txn::new();
    delete
        .delete(Keyspace::Operators, "a")
        .delete(Keyspace::Operators, "not there");
    store.commit(&delete).context("delete")?;
    ensure_eq!(
        count(Keyspace::Operators)?,
        n - 1,
        "after deleting one present and one absent key"
    );
    ensure_eq!(count(Keyspace::Authenticators)?, 0, "another keyspace");

    let mut failed = Txn::new();
    failed
        .require_absent(Keyspace::Operators, "b")
        .put_raw(Keyspace::Operators, "new", "x");
    expect_conflict(store.commit(&failed), "a conflicting put")?;
    ensure_eq!(
        count(Keyspace::Operators)?,
        n - 1,
        "after a conflicting put"
    );
    Ok(())
}

/// `count_below(end)` counts the keys `< end` in byte order: a key equal to the bound is not
/// counted, a key that is a prefix of the bound is.
pub(crate) fn count_below_counts_exactly_the_keys_that_sort_before_the_bound(
    store: &dyn Store,
) -> Result<(), String> {
    let keys = awkward_keys();
    put_keys_as_values(store, Keyspace::KrlSerials, &keys)?;
    let ordered = sorted(keys);
    for end in probes() {
        let expected = ordered.iter().filter(|k| **k < end).count();
        let expected = u64::try_from(expected).map_err(|e| e.to_string())?;
        ensure_eq!(
            store
                .count_below(Keyspace::KrlSerials, &end)
                .context("count_below")?,
            expected,
            "keys below {}",
            end.escape_ascii()
        );
    }
    ensure_eq!(
        store
            .count_below(Keyspace::KrlSerials, b"")
            .context("count_below")?,
        0,
        "keys below the empty key"
    );
    ensure_eq!(
        store
            .count_below(Keyspace::KrlSerials, b"ab")
            .context("count_below")?,
        u64::try_from(
            ordered
                .iter()
                .filter(|k| k.as_slice() < b"ab".as_slice())
                .count()
        )
        .map_err(|e| e.to_string())?,
        "keys below ab (a and aa and a\\0 are, ab is not)"
    );
    Ok(())
}

/// A multi-megabyte value and a long key round-trip; compare-and-set compares the whole value
/// (a difference in its last byte is a conflict); several large values fit in one transaction.
pub(crate) fn large_keys_and_values_round_trip_and_compare_whole(
    store: &dyn Store,
) -> Result<(), String> {
    let big: Vec<u8> = (0..(2 << 20) + 17)
        .map(|i: usize| (i % 251) as u8)
        .collect();
    let mut almost = big.clone();
    if let Some(last) = almost.last_mut() {
        *last ^= 1;
    }
    let long_key: Vec<u8> = (0..4096).map(|i: usize| (i % 253) as u8 + 1).collect();

    let mut txn = Txn::new();
    txn.put_raw(Keyspace::Audit, "big", big.clone())
        .put_raw(Keyspace::Audit, long_key.clone(), "long key")
        .put_raw(Keyspace::Audit, "empty", EMPTY);
    store.commit(&txn).context("commit large entries")?;
    ensure!(
        value(store, Keyspace::Audit, b"big")?.as_ref() == Some(&big),
        "the big value did not round-trip"
    );
    ensure_eq!(
        value(store, Keyspace::Audit, &long_key)?,
        Some(b"long key".to_vec()),
        "the value under the long key"
    );
    ensure_eq!(
        value(store, Keyspace::Audit, b"empty")?,
        Some(Vec::new()),
        "an empty value"
    );
    let scanned = store
        .scan_from(Keyspace::Audit, b"big", 1)
        .context("scan")?;
    ensure!(
        scanned.first().map(|(_, value)| value) == Some(&big),
        "a scan did not return the big value whole"
    );

    let mut near_miss = Txn::new();
    near_miss
        .require_equals(Keyspace::Audit, "big", almost.clone())
        .put_raw(Keyspace::Audit, "big", "replaced");
    expect_conflict(
        store.commit(&near_miss),
        "equals on a value differing in its last byte",
    )?;
    let mut replace = Txn::new();
    replace
        .require_equals(Keyspace::Audit, "big", big.clone())
        .put_raw(Keyspace::Audit, "big", almost.clone());
    store
        .commit(&replace)
        .context("replace the big value under equals")?;
    ensure!(
        value(store, Keyspace::Audit, b"big")?.as_ref() == Some(&almost),
        "the replaced big value did not round-trip"
    );

    let mut several = Txn::new();
    for i in 0u8..8 {
        several.put_raw(Keyspace::AuditCheckpoints, vec![i], vec![i; 256 << 10]);
    }
    store
        .commit(&several)
        .context("commit several large values at once")?;
    for i in 0u8..8 {
        ensure!(
            value(store, Keyspace::AuditCheckpoints, &[i])? == Some(vec![i; 256 << 10]),
            "large value {i} of one transaction did not round-trip"
        );
    }
    Ok(())
}

/// Thousands of keys, written out of order over two transactions, count, scan whole and page
/// (resuming just past the last key of a page) without gap or repeat.
pub(crate) fn many_keys_scan_in_order_and_page_without_gaps(
    store: &dyn Store,
) -> Result<(), String> {
    const N: u32 = 5000;
    // 7919 is prime, so this visits every i below N once, out of order.
    let scrambled: Vec<u32> = (0..N).map(|i| (i * 7919) % N).collect();
    let (first, second) = scrambled.split_at(scrambled.len() / 2);
    for part in [first, second] {
        let mut txn = Txn::new();
        for i in part {
            txn.put_raw(Keyspace::Grants, i.to_be_bytes(), format!("grant {i}"));
        }
        store.commit(&txn).context("commit many keys")?;
    }
    ensure_eq!(
        store.count(Keyspace::Grants).context("count")?,
        u64::from(N),
        "count"
    );

    let decode = |entries: Vec<Entry>| -> Result<Vec<u32>, String> {
        entries
            .into_iter()
            .map(|(key, value)| -> Result<u32, String> {
                let bytes: [u8; 4] = key
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("a key of {} bytes", key.len()))?;
                let i = u32::from_be_bytes(bytes);
                ensure!(
                    value == format!("grant {i}").into_bytes(),
                    "the value of key {i}"
                );
                Ok(i)
            })
            .collect()
    };
    let whole = decode(
        store
            .scan_from(Keyspace::Grants, b"", usize::MAX)
            .context("scan")?,
    )?;
    ensure!(
        whole == (0..N).collect::<Vec<_>>(),
        "a whole scan did not return 0..{N} in order"
    );

    let mut paged: Vec<u32> = Vec::new();
    let mut start: Vec<u8> = Vec::new();
    loop {
        let page = store
            .scan_from(Keyspace::Grants, &start, 333)
            .context("scan a page")?;
        let full = page.len() == 333;
        if let Some((last, _)) = page.last() {
            start = last.clone();
            start.push(0);
        }
        paged.extend(decode(page)?);
        if !full {
            break;
        }
        ensure!(paged.len() <= N as usize, "paging did not end");
    }
    ensure!(
        paged == (0..N).collect::<Vec<_>>(),
        "paging through did not return 0..{N} in order"
    );

    for i in [0, 1, 255, 256, 2500, N - 1] {
        ensure_eq!(
            store
                .count_below(Keyspace::Grants, &i.to_be_bytes())
                .context("count_below")?,
            u64::from(i),
            "keys below {i}"
        );
    }
    Ok(())
}

/// Applied transactions stay visible across flushes, a flush with nothing new succeeds, and
/// commits after a flush work as before.
pub(crate) fn flush_keeps_everything_applied_so_far(store: &dyn Store) -> Result<(), String> {
    for i in 0u8..10 {
        let mut txn = Txn::new();
        txn.put_raw(Keyspace::Drills, vec![i], vec![i]);
        store.apply(&txn).context("apply")?;
    }
    store.flush().context("flush")?;
    store.flush().context("flush with nothing new")?;
    let mut after = Txn::new();
    after
        .require_equals(Keyspace::Drills, vec![9u8], vec![9u8])
        .put_raw(Keyspace::Drills, vec![10u8], vec![10u8]);
    store.commit(&after).context("commit after a flush")?;
    let found = store
        .scan_from(Keyspace::Drills, b"", usize::MAX)
        .context("scan")?;
    let expected: Vec<Entry> = (0u8..=10).map(|i| (vec![i], vec![i])).collect();
    ensure!(
        found == expected,
        "after the flushes: {:?}",
        shown(&keys_of(&found))
    );
    Ok(())
}

/// Several threads commit, round after round, a transaction that requires the round's key
/// absent and puts it: exactly one wins each round, the others get a conflict, and the
/// winner's writes (in two keyspaces) are the only ones that landed.
pub(crate) fn racing_transactions_on_one_key_have_exactly_one_winner(
    store: &dyn Store,
) -> Result<(), String> {
    const ROUNDS: usize = 25;
    let round_key = |round: usize| format!("round {round:03}");
    let barrier = Barrier::new(THREADS);
    let outcomes: Vec<Vec<Result<bool, String>>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let barrier = &barrier;
                scope.spawn(move || {
                    (0..ROUNDS)
                        .map(|round| {
                            let mut txn = Txn::new();
                            txn.require_absent(Keyspace::Requests, round_key(round))
                                .put_raw(
                                    Keyspace::Requests,
                                    round_key(round),
                                    format!("thread {thread}"),
                                )
                                .put_raw(Keyspace::Grants, format!("{round:03}/{thread}"), "won");
                            barrier.wait();
                            attempt(store, &txn, true)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|racer| {
                racer
                    .join()
                    .unwrap_or_else(|_| vec![Err("a racing thread panicked".to_owned())])
            })
            .collect()
    });

    for round in 0..ROUNDS {
        let mut winners = Vec::new();
        for (thread, outcome) in outcomes.iter().enumerate() {
            match outcome.get(round) {
                Some(Ok(true)) => winners.push(thread),
                Some(Ok(false)) => {}
                Some(Err(e)) => return Err(format!("round {round}, thread {thread}: {e}")),
                None => return Err(format!("round {round}, thread {thread}: no outcome")),
            }
        }
        let &[winner] = winners.as_slice() else {
            return Err(format!(
                "round {round}: {} winners ({winners:?}), expected exactly one",
                winners.len()
            ));
        };
        ensure_eq!(
            value(store, Keyspace::Requests, round_key(round).as_bytes())?,
            Some(format!("thread {winner}").into_bytes()),
            "round {round}: the contested key"
        );
        let markers = scan_prefix(store, Keyspace::Grants, format!("{round:03}/").as_bytes())
            .context("scan_prefix")?;
        ensure_eq!(
            shown(&keys_of(&markers)),
            vec![format!("{round:03}/{winner}")],
            "round {round}: the second write of each transaction"
        );
    }
    let rounds = u64::try_from(ROUNDS).map_err(|e| e.to_string())?;
    ensure_eq!(
        store.count(Keyspace::Requests).context("count")?,
        rounds,
        "contested keys"
    );
    ensure_eq!(
        store.count(Keyspace::Grants).context("count")?,
        rounds,
        "winners' second writes"
    );
    Ok(())
}

/// Several threads each add one to a shared counter many times, by reading it and applying
/// a compare-and-set (absent or equal to what they read), retrying on a conflict: the counter
/// ends at exactly threads × increments.
pub(crate) fn a_counter_incremented_by_compare_and_set_from_many_threads_loses_no_increment(
    store: &dyn Store,
) -> Result<(), String> {
    const INCREMENTS: u64 = 100;
    const RETRY_LIMIT: u64 = 100_000;
    const KEY: &[u8] = b"counter";
    let increment_many = || -> Result<u64, String> {
        let mut retries = 0u64;
        for _ in 0..INCREMENTS {
            loop {
                let current = value(store, Keyspace::Meta, KEY)?;
                let next = match &current {
                    None => 1,
                    Some(raw) => decode_counter(raw)? + 1,
                };
                let mut txn = Txn::new();
                match current {
                    None => txn.require_absent(Keyspace::Meta, KEY),
                    Some(raw) => txn.require_equals(Keyspace::Meta, KEY, raw),
                };
                txn.put_raw(Keyspace::Meta, KEY, next.to_be_bytes());
                // `apply`: the same preconditions as `commit`, without a disk flush per try.
                if attempt(store, &txn, false)? {
                    break;
                }
                retries += 1;
                ensure!(retries < RETRY_LIMIT, "{retries} conflicts: no progress");
            }
        }
        Ok(retries)
    };
    let outcomes: Vec<Result<u64, String>> = std::thread::scope(|scope| {
        let counters: Vec<_> = (0..THREADS).map(|_| scope.spawn(increment_many)).collect();
        counters
            .into_iter()
            .map(|counter| {
                counter
                    .join()
                    .unwrap_or_else(|_| Err("a counting thread panicked".to_owned()))
            })
            .collect()
    });
    for (thread, outcome) in outcomes.into_iter().enumerate() {
        outcome.map_err(|e| format!("thread {thread}: {e}"))?;
    }
    store.flush().context("flush")?;
    let threads = u64::try_from(THREADS).map_err(|e| e.to_string())?;
    let counted = value(store, Keyspace::Meta, KEY)?
        .map(|raw| decode_counter(&raw))
        .transpose()?;
    ensure_eq!(
        counted,
        Some(threads * INCREMENTS),
        "the counter after {threads} threads added {INCREMENTS} each"
    );
    Ok(())
}

/// While one thread applies transactions that set a group of keys to a new generation, a
/// scan of that group (a few entries: one page of any backend) from other threads always
/// sees every key at the same generation: all of a transaction or none of it.
pub(crate) fn readers_never_see_part_of_a_transaction(store: &dyn Store) -> Result<(), String> {
    const KEYS: u8 = 16;
    const GENERATIONS: u32 = 300;
    let write_generation = |generation: u32| -> Result<(), String> {
        let mut txn = Txn::new();
        for key in 0..KEYS {
            txn.put_raw(Keyspace::Changes, vec![key], generation.to_be_bytes());
        }
        match attempt(store, &txn, false)? {
            true => Ok(()),
            false => Err(format!("generation {generation}: unexpected conflict")),
        }
    };
    write_generation(0)?;
    store.flush().context("flush")?;

    let done = AtomicBool::new(false);
    let read_until_done = || -> Result<u64, String> {
        let mut reads = 0u64;
        loop {
            // Read once more after the writer finished, so every reader reads at least once.
            let last_round = done.load(Ordering::Acquire);
            let page = store
                .scan_from(Keyspace::Changes, b"", usize::from(KEYS))
                .context("scan")?;
            ensure_eq!(page.len(), usize::from(KEYS), "entries in a scan");
            let generations: Vec<&[u8]> = page.iter().map(|(_, value)| value.as_slice()).collect();
            ensure!(
                generations.windows(2).all(|pair| pair[0] == pair[1]),
                "a scan saw part of a transaction: {generations:?}"
            );
            reads += 1;
            if last_round {
                return Ok(reads);
            }
        }
    };
    let (written, read): (Result<(), String>, Vec<Result<u64, String>>) =
        std::thread::scope(|scope| {
            let readers: Vec<_> = (1..THREADS).map(|_| scope.spawn(read_until_done)).collect();
            let written = (1..=GENERATIONS).try_for_each(write_generation);
            done.store(true, Ordering::Release);
            let read = readers
                .into_iter()
                .map(|reader| {
                    reader
                        .join()
                        .unwrap_or_else(|_| Err("a reading thread panicked".to_owned()))
                })
                .collect();
            (written, read)
        });
    written?;
    for (reader, outcome) in read.into_iter().enumerate() {
        outcome.map_err(|e| format!("reader {reader}: {e}"))?;
    }
    ensure_eq!(
        value(store, Keyspace::Changes, &[0])?,
        Some(GENERATIONS.to_be_bytes().to_vec()),
        "the first key after the last generation"
    );
    Ok(())
}
