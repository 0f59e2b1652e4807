//! A real etcd cluster on loopback (Debian's `etcd-server`, installed by
//! `scripts/install-deps`): three members, each in its own directory, stopped when dropped.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

pub(crate) struct EtcdCluster {
    members: Vec<Option<Child>>,
    /// Each member's command line, to start it again.
    commands: Vec<Vec<String>>,
    /// The members' client URLs.
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdCluster {
    /// Starts `n` members and returns once each says it serves clients.
    pub(crate) fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut commands = Vec::new();
        let mut endpoints = Vec::new();
        let mut outputs = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let endpoint = format!("http://127.0.0.1:{client}");
            let command = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                format!("--listen-client-urls={endpoint}"),
                format!("--advertise-client-urls={endpoint}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".to_owned(),
                "--initial-cluster-token=latchkey-test".to_owned(),
                // latchkey's transactions can be larger than etcd's defaults (docs/install.md).
                "--max-txn-ops=100000".to_owned(),
                "--max-request-bytes=10485760".to_owned(),
            ];
            let mut child = spawn(&command);
            outputs.push(child.stderr.take().unwrap());
            members.push(Some(child));
            commands.push(command);
            endpoints.push(endpoint);
        }
        for stderr in outputs {
            await_serving(stderr);
        }
        Self {
            members,
            commands,
            endpoints,
            _dir: dir,
        }
    }

    /// Kills member `i` (kill -9).
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it serves clients.
    pub(crate) fn restart(&mut self, i: usize) {
        let mut child = spawn(&self.commands[i]);
        let stderr = child.stderr.take().unwrap();
        self.members[i] = Some(child);
        await_serving(stderr);
    }

    /// The `[store]` tables of a latchkeyd on this cluster.
    pub(crate) fn store_config(&self, prefix: &str) -> String {
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [{endpoints}]\nprefix = \"{prefix}\"\n"
        )
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new("etcd")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcd runs (scripts/install-deps installs Debian's etcd-server)")
}

/// Reads a member's log until it says it serves clients (a member alone waits for its peers
/// first: it says so only once a quorum formed), then keeps draining it.
fn await_serving(stderr: std::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("an etcd member exited").unwrap();
        if line.contains("serving insecure client requests")
            || line.contains("serving client traffic insecurely")
        {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
}
