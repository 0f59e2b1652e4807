//! A second language: Python's grpcio (the grpc-core stack that C++ and Ruby share), with
//! stubs generated from `proto/` by grpcio-tools, calls latchkeyd over its Unix socket the
//! way grpc-core dials `unix:PATH` (its default `:authority` is the percent-encoded path).
//! `scripts/install-deps` makes the venv and exports `LATCHKEY_PYTHON`.

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
