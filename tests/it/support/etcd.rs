//! A real etcd cluster on loopback (Debian's `etcd-server`, installed by
//! `scripts/install-deps`): three members, each in its own directory, stopped when dropped.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

pub(crate) struct EtcdCluster {
    members: Vec<Child>,
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
        let mut endpoints = Vec::new();
        let mut outputs = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let endpoint = format!("http://127.0.0.1:{client}");
            let mut child = Command::new("etcd")
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls={endpoint}"))
                .arg(format!("--advertise-client-urls={endpoint}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=latchkey-test")
                // latchkey's transactions can be larger than etcd's defaults (docs/install.md).
                .arg("--max-txn-ops=100000")
                .arg("--max-request-bytes=10485760")
                .stderr(Stdio::piped())
                .spawn()
                .expect("etcd runs (scripts/install-deps installs Debian's etcd-server)");
            outputs.push(child.stderr.take().unwrap());
            members.push(child);
            endpoints.push(endpoint);
        }
        for stderr in outputs {
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
        Self {
            members,
            endpoints,
            _dir: dir,
        }
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
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
