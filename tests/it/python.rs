//! A second language: Python's grpcio (the grpc-core stack that C++ and Ruby share), with
//! stubs generated from `proto/` by grpcio-tools, calls latchkeyd over its Unix socket the
//! way grpc-core dials `unix:PATH` (its default `:authority` is the percent-encoded path).
//! `scripts/install-deps` makes the venv and exports `LATCHKEY_PYTHON`. The workload example
//! in `examples/python/` is run here too, over mutual TLS, as a vault plugin would run it.

const CLIENT: &str = r#"
import sys, grpc
sys.path.insert(0, sys.argv[1])
from latchkey.v1 import system_pb2, system_pb2_grpc, access_pb2, access_pb2_grpc

channel = grpc.insecure_channel("unix:" + sys.argv[2])
status = system_pb2_grpc.SystemServiceStub(channel).Status(system_pb2.StatusRequest(), timeout=30)
print("version", status.version)
print("caller", status.caller.WhichOneof("identity"))
try:
    access_pb2_grpc.AccessServiceStub(channel).ShowRequest(
        access_pb2.ShowRequestRequest(id="no-such-request"), timeout=30)
    print("show unexpectedly succeeded")
except grpc.RpcError as e:
    code = dict(e.trailing_metadata() or ()).get("latchkey-error-code")
    print("show", e.code().name, code)
"#;

#[tokio::test]
async fn a_stock_grpcio_client_is_served_over_the_unix_socket_with_its_default_authority() {
    let python = std::env::var("LATCHKEY_PYTHON").expect(
        "LATCHKEY_PYTHON is not set: run the suite through scripts/test (scripts/install-deps \
         makes the grpcio venv)",
    );
    let bg = crate::support::world::Bg::start().await;
    let work = tempfile::tempdir().unwrap();
    let stubs = work.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut protoc = std::process::Command::new(&python);
    protoc
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()));
    for name in ["system", "access", "audit", "operator", "trust", "workload"] {
        protoc.arg(proto.join(format!("latchkey/v1/{name}.proto")));
    }
    let generated = protoc.output().unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let script = work.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let socket = bg.dir.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(&script)
            .arg(&stubs)
            .arg(&socket)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("version {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(stdout.contains("caller local"), "{stdout}");
    assert!(
        stdout.contains("show NOT_FOUND request.unknown"),
        "{stdout}"
    );
    bg.stop().await;
}

/// Runs `examples/python/latchkey_workload.py` as `cert` against the world's TLS port.
fn workload_example(
    w: &crate::support::world::World,
    cert: &crate::support::ClientCert,
) -> std::process::Command {
    let python = std::env::var("LATCHKEY_PYTHON").expect("LATCHKEY_PYTHON (scripts/install-deps)");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(python);
    cmd.arg(root.join("examples/python/latchkey_workload.py"))
        .arg("--address")
        .arg(w.bg.running().tls_addr().unwrap().to_string())
        .arg("--server-cert")
        .arg(w.bg.dir.data.join("tls-cert.pem"))
        .arg("--cert")
        .arg(&cert.cert)
        .arg("--key")
        .arg(&cert.key);
    cmd
}

async fn output(mut cmd: std::process::Command) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn the_python_workload_example_introspects_and_acknowledges_revocations_over_mutual_tls() {
    use std::io::BufRead as _;

    use crate::support::grants::{issue, revoke_early};
    use crate::support::world::{db_root, world_with};

    let mut scope = db_root(600);
    scope.revocation_consumers = vec!["vault-plugin".into()];
    let mut w = world_with(scope).await;
    let credential = issue(&mut w, None, 600).await;
    let grant = credential.grant_id.clone();

    let (code, said) = output({
        let mut c = workload_example(&w, &w.plugin);
        c.arg("status");
        c
    })
    .await;
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(r#""caller": "workload", "workload": "vault-plugin""#),
        "{said}"
    );

    let (code, said) = output({
        let mut c = workload_example(&w, &w.plugin);
        c.args(["introspect", &credential.bearer_token]);
        c
    })
    .await;
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!(r#""grant_id": "{grant}""#)),
        "{said}"
    );
    assert!(said.contains(r#""scope": "db-root""#), "{said}");

    // A workload that may not introspect is refused with the stable code.
    let (code, said) = output({
        let mut c = workload_example(&w, &w.vault_db);
        c.args(["introspect", &credential.bearer_token]);
        c
    })
    .await;
    assert_eq!(code, Some(4), "{said}");
    assert!(
        said.contains("PERMISSION_DENIED introspect.not_allowed"),
        "{said}"
    );

    // The consumer watches; once the daemon has its stream, the grant is revoked early, and
    // the revocation completes only through the example's acknowledgement.
    let mut watcher = workload_example(&w, &w.plugin)
        .args(["watch-revocations", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let first = lines.next().unwrap().unwrap();
        (first, lines)
    })
    .await
    .unwrap();
    assert_eq!(first.0, "watching");
    let mut lines = first.1;
    let revoked = revoke_early(&mut w, &grant, "incident over").await;
    assert_eq!(revoked.id, grant);
    let (acknowledged, status) = tokio::task::spawn_blocking(move || {
        let line = lines.next().unwrap().unwrap();
        (line, watcher.wait().unwrap())
    })
    .await
    .unwrap();
    assert!(status.success());
    assert!(
        acknowledged.contains(&format!(r#""acknowledged": "{grant}""#)),
        "{acknowledged}"
    );
    let shown = crate::support::grants::show(&w.bg, &grant).await;
    assert_eq!(shown.state(), latchkey::pb::GrantState::Revoked);
    assert!(
        shown
            .sinks
            .iter()
            .any(|s| s.sink == "consumer/vault-plugin" && s.confirmed),
        "{shown:?}"
    );

    let (code, said) = output({
        let mut c = workload_example(&w, &w.plugin);
        c.args(["introspect", &credential.bearer_token]);
        c
    })
    .await;
    assert_eq!(code, Some(1), "inactive after revocation: {said}");
    assert!(said.contains(r#"{"active": false}"#), "{said}");
    w.bg.stop().await;
}
