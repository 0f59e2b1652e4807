//! The etcd backend: the trust store in an etcd cluster (co-located on the bastions), under a
//! key prefix. A latchkey transaction is one etcd `Txn`: each `require_absent` compares the
//! key's version with 0, each `require_equals` its value, then the puts and deletes. etcd
//! commits through Raft and fsyncs before it answers, so `apply` is as durable as `commit` and
//! `flush` has nothing left to do. Keys are `PREFIX` ‖ keyspace name ‖ `/` ‖ key, so a
//! keyspace is one contiguous range and etcd's byte order is the store's key order.
//!
//! `Store` is synchronous; etcd-client is async. The store owns a small runtime of its own and
//! every call waits on a channel for its answer, so it may be called from any thread (also a
//! tokio worker) and never nests runtimes. Every call has a deadline: without an etcd quorum
//! calls fail with `store.backend` after [`ETCD_CALL_TIMEOUT`] instead of hanging.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, KvClient, SortOrder,
    SortTarget, Txn as EtcdTxn, TxnOp,
};

use super::{Compare, Entry, Keyspace, Store, StoreError, Txn, Write};

/// How long one etcd call may take before it fails (quorum lost, members unreachable).
pub const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members (`https://10.0.0.1:2379`, …).
    pub endpoints: Vec<String>,
    /// The prefix every latchkey key lives under (one trust store per prefix).
    pub prefix: String,
    /// Client TLS: the CA that signed the members' certificates, and this node's client
    /// certificate and key (PEM files; the key file must be private).
    pub tls: Option<EtcdTls>,
}

/// Client TLS files for etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate(s) of the etcd members.
    pub ca: PathBuf,
    /// This node's client certificate.
    pub certificate: PathBuf,
    /// Its private key (mode 0600).
    pub private_key: PathBuf,
}

/// The trust store in etcd.
pub struct EtcdStore {
    client: Client,
    prefix: Vec<u8>,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropped anywhere, also inside another runtime: never block on it.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd {what}: {e}"))
}

/// The first key after every key that starts with `prefix` (etcd's "range end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (never, with a keyspace name in it): to the end of the keyspace of etcd.
    vec![0]
}

impl EtcdStore {
    /// Connects to etcd (the members in `config`, with its TLS files).
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("latchkey-etcd")
            .enable_all()
            .build()
            .map_err(|e| backend("runtime", e))?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(ETCD_CALL_TIMEOUT)
            .with_timeout(ETCD_CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &config.tls {
            crate::base::fsperm::check_private(&tls.private_key)
                .map_err(|e| backend("client key", e))?;
            let read =
                |p: &PathBuf| std::fs::read(p).map_err(|e| backend(&format!("{}", p.display()), e));
            let ca = read(&tls.ca)?;
            let cert = read(&tls.certificate)?;
            let key = read(&tls.private_key)?;
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(ca))
                    .identity(etcd_client::Identity::from_pem(cert, key)),
            );
        }
        let endpoints = config.endpoints.clone();
        let handle = runtime.handle().clone();
        let client = wait(&handle, async move {
            Client::connect(endpoints, Some(options))
                .await
                .map_err(|e| backend("connect", e))
        })??;
        let store = Self {
            client,
            prefix: config.prefix.as_bytes().to_vec(),
            runtime: Some(runtime),
            handle,
        };
        // Fail now if no quorum answers, not on the first call.
        store.count(Keyspace::Meta)?;
        Ok(store)
    }

    fn keyspace_prefix(&self, ks: Keyspace) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(ks.name().as_bytes());
        k.push(b'/');
        k
    }

    fn full_key(&self, ks: Keyspace, key: &[u8]) -> Vec<u8> {
        let mut k = self.keyspace_prefix(ks);
        k.extend_from_slice(key);
        k
    }

    /// Runs `op` against etcd until it answers, a lasting error, or [`ETCD_CALL_TIMEOUT`]:
    /// a member going away or a leader election (`leader changed`, unavailable) is waited out.
    /// A write retried this way may have applied the first time; its preconditions make the
    /// retry a conflict then (every latchkey change compares the state it changes).
    fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(KvClient) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let kv = self.client.kv_client();
        wait(&self.handle, async move {
            let deadline = tokio::time::Instant::now() + ETCD_CALL_TIMEOUT;
            let mut pause = Duration::from_millis(20);
            loop {
                match tokio::time::timeout_at(deadline, op(kv.clone())).await {
                    Err(_) => return Err(backend(what, "no answer from a quorum in time")),
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(e))
                        if transient(&e) && tokio::time::Instant::now() + pause < deadline =>
                    {
                        tracing::debug!("etcd {what}: {e}; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    Ok(Err(e)) => return Err(backend(what, e)),
                }
            }
        })?
    }

    /// A range read: entries of `[start, end)` (keys without the keyspace prefix).
    fn range(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Vec<u8>,
        limit: i64,
        order: SortOrder,
    ) -> Result<Vec<Entry>, StoreError> {
        let strip = self.keyspace_prefix(ks).len();
        let from = self.full_key(ks, start);
        self.run("range", move |mut kv| {
            let (from, end) = (from.clone(), end.clone());
            async move {
                let options = GetOptions::new()
                    .with_range(end)
                    .with_limit(limit)
                    .with_sort(SortTarget::Key, order);
                let answer = kv.get(from, Some(options)).await?;
                Ok(answer
                    .kvs()
                    .iter()
                    .map(|kv| (kv.key()[strip..].to_vec(), kv.value().to_vec()))
                    .collect())
            }
        })
    }

    fn count_range(&self, from: Vec<u8>, end: Vec<u8>) -> Result<u64, StoreError> {
        let count = self.run("count", move |mut kv| {
            let (from, end) = (from.clone(), end.clone());
            async move {
                let options = GetOptions::new().with_range(end).with_count_only();
                Ok(kv.get(from, Some(options)).await?.count())
            }
        })?;
        u64::try_from(count).map_err(|e| backend("count", e))
    }

    /// The etcd transaction of `txn`: its comparisons, then its writes with later writes of a
    /// key replacing earlier ones (etcd refuses a key twice in one transaction).
    fn etcd_txn(&self, txn: &Txn) -> EtcdTxn {
        let compares: Vec<EtcdCompare> = txn
            .compares()
            .iter()
            .map(|c| match c {
                Compare::Absent(ks, key) => {
                    EtcdCompare::version(self.full_key(*ks, key), CompareOp::Equal, 0)
                }
                Compare::Equals(ks, key, value) => {
                    EtcdCompare::value(self.full_key(*ks, key), CompareOp::Equal, value.clone())
                }
            })
            .collect();
        let mut last: BTreeMap<Vec<u8>, Option<&[u8]>> = BTreeMap::new();
        for w in txn.writes() {
            match w {
                Write::Put(ks, key, value) => {
                    last.insert(self.full_key(*ks, key), Some(value));
                }
                Write::Delete(ks, key) => {
                    last.insert(self.full_key(*ks, key), None);
                }
            }
        }
        let ops: Vec<TxnOp> = last
            .into_iter()
            .map(|(key, value)| match value {
                Some(v) => TxnOp::put(key, v.to_vec(), None),
                None => TxnOp::delete(key, None),
            })
            .collect();
        EtcdTxn::new().when(compares).and_then(ops)
    }
}

/// An error that may pass: the member is down or restarting, a leader is being elected.
fn transient(e: &etcd_client::Error) -> bool {
    /// gRPC's UNAVAILABLE.
    const UNAVAILABLE: i32 = 14;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            i32::from(status.code()) == UNAVAILABLE || status.message().contains("leader changed")
        }
        _ => false,
    }
}

/// Runs `fut` on `handle` and waits for it from this (any) thread.
fn wait<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        // The waiter may be gone (its thread ended): nothing to tell then.
        let _gone = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| backend("runtime", "the etcd client's runtime stopped"))
}

impl Store for EtcdStore {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.full_key(ks, key);
        self.run("get", move |mut kv| {
            let key = key.clone();
            async move {
                let answer = kv.get(key, None).await?;
                Ok(answer.kvs().first().map(|kv| kv.value().to_vec()))
            }
        })
    }

    fn scan_from(
        &self,
        ks: Keyspace,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let end = prefix_end(&self.keyspace_prefix(ks));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.range(ks, start, end, limit, SortOrder::Ascend)
    }

    fn last(&self, ks: Keyspace) -> Result<Option<Entry>, StoreError> {
        let end = prefix_end(&self.keyspace_prefix(ks));
        Ok(self
            .range(ks, b"", end, 1, SortOrder::Descend)?
            .into_iter()
            .next())
    }

    fn count(&self, ks: Keyspace) -> Result<u64, StoreError> {
        let from = self.keyspace_prefix(ks);
        let end = prefix_end(&from);
        self.count_range(from, end)
    }

    fn count_below(&self, ks: Keyspace, end: &[u8]) -> Result<u64, StoreError> {
        let from = self.keyspace_prefix(ks);
        let end = self.full_key(ks, end);
        if end <= from {
            return Ok(0);
        }
        self.count_range(from, end)
    }

    fn commit(&self, txn: &Txn) -> Result<(), StoreError> {
        if txn.writes().is_empty() && txn.compares().is_empty() {
            return Ok(());
        }
        let request = self.etcd_txn(txn);
        let succeeded = self.run("txn", move |mut kv| {
            let request = request.clone();
            async move { Ok(kv.txn(request).await?.succeeded()) }
        })?;
        if succeeded {
            Ok(())
        } else {
            Err(StoreError::Conflict(
                "a precondition did not hold in etcd".to_owned(),
            ))
        }
    }

    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        // etcd answers only after its quorum made the write durable.
        self.commit(txn)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<(Keyspace, Vec<Entry>)>, StoreError> {
        // Every range read at the revision of the first: one moment, while nodes write on.
        let first = self.keyspace_prefix(Keyspace::ALL[0]);
        let revision = self.run("snapshot", move |mut kv| {
            let first = first.clone();
            async move {
                let answer = kv
                    .get(first, Some(GetOptions::new().with_count_only()))
                    .await?;
                Ok(answer.header().map_or(0, |h| h.revision()))
            }
        })?;
        let mut out = Vec::new();
        for ks in Keyspace::ALL {
            let strip = self.keyspace_prefix(*ks).len();
            let end = prefix_end(&self.keyspace_prefix(*ks));
            let mut entries: Vec<Entry> = Vec::new();
            let mut from = self.keyspace_prefix(*ks);
            loop {
                let (start, stop) = (from.clone(), end.clone());
                let page: Vec<(Vec<u8>, Vec<u8>)> = self.run("snapshot", move |mut kv| {
                    let (start, stop) = (start.clone(), stop.clone());
                    async move {
                        let options = GetOptions::new()
                            .with_range(stop)
                            .with_limit(SNAPSHOT_PAGE)
                            .with_revision(revision)
                            .with_sort(SortTarget::Key, SortOrder::Ascend);
                        let answer = kv.get(start, Some(options)).await?;
                        Ok(answer
                            .kvs()
                            .iter()
                            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                            .collect())
                    }
                })?;
                let full = page.len() == usize::try_from(SNAPSHOT_PAGE).unwrap_or(usize::MAX);
                if let Some((last, _)) = page.last() {
                    from = last.clone();
                    from.push(0);
                }
                entries.extend(page.into_iter().map(|(k, v)| (k[strip..].to_vec(), v)));
                if !full {
                    break;
                }
            }
            out.push((*ks, entries));
        }
        Ok(out)
    }
}

/// Keys read per range of a snapshot.
const SNAPSHOT_PAGE: i64 = 1000;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_keys_end() {
        assert_eq!(prefix_end(b"lk/audit/"), b"lk/audit0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }

    /// A single etcd member on loopback for the duration of a test.
    pub(crate) struct Etcd {
        child: std::process::Child,
        pub(crate) endpoint: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Etcd {
        /// Starts `etcd` (Debian's etcd-server) and waits until it says it serves clients.
        pub(crate) fn start() -> Self {
            use std::io::BufRead as _;
            let dir = tempfile::tempdir().unwrap();
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("http://127.0.0.1:{client}");
            let mut child = std::process::Command::new("etcd")
                .arg("--name=conformance")
                .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
                .arg(format!("--listen-client-urls={endpoint}"))
                .arg(format!("--advertise-client-urls={endpoint}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!(
                    "--initial-cluster=conformance=http://127.0.0.1:{peer}"
                ))
                .arg("--max-txn-ops=100000")
                .arg("--max-request-bytes=10485760")
                .arg("--log-outputs=stderr")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("etcd runs (scripts/install-deps installs Debian's etcd-server)");
            let stderr = child.stderr.take().unwrap();
            let mut lines = std::io::BufReader::new(stderr).lines();
            loop {
                let line = lines.next().expect("etcd exited before serving").unwrap();
                if line.contains("serving insecure client requests")
                    || line.contains("serving client traffic insecurely")
                {
                    break;
                }
            }
            std::thread::spawn(move || for _ in lines {});
            Self {
                child,
                endpoint,
                _dir: dir,
            }
        }
    }

    #[test]
    fn the_etcd_backend_passes_the_conformance_suite() {
        let etcd = Etcd::start();
        let n = std::sync::atomic::AtomicU64::new(0);
        crate::store::conformance::run_all(|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            EtcdStore::connect(&EtcdConfig {
                endpoints: vec![etcd.endpoint.clone()],
                prefix: format!("conformance/{i}/"),
                tls: None,
            })
            .unwrap()
        });
    }
}
