#!/usr/bin/env python3
"""A latchkey workload in Python (grpcio), the way a vault plugin or automation uses latchkeyd.

It talks to latchkeyd's TLS port with its own client certificate (the key latchkey pinned when
the workload was admitted: `latchkey workload put --name NAME --cert CERT.pem ...`) and pins the
daemon by its certificate (`/var/lib/latchkey/tls-cert.pem`; `latchkey status` shows its
fingerprint). Stubs are generated from latchkey's `proto/` at start (grpcio-tools).

    latchkey_workload.py --address bastion:7443 --server-cert tls-cert.pem \\
        --cert plugin.crt --key plugin.key COMMAND

Commands:
    status                  who latchkeyd says this workload is
    introspect TOKEN        is a break-glass bearer token active? JSON; exit 0 active, 1 not
                            (the workload must be admitted with --introspect)
    watch-revocations [-n N]
                            wait for revocations of grants whose scope names this workload as
                            a consumer; end what the grant opened, then acknowledge it (the
                            revocation is complete only when every consumer acknowledged)

Refusals print latchkey's stable error code (docs/errors.md) and exit 4.

Requires: pip install "grpcio>=1.85" "grpcio-tools>=1.85".
"""

import argparse
import atexit
import importlib
import json
import os
import shutil
import sys
import tempfile

import grpc

PROTOS = ["system", "access", "audit", "operator", "trust", "workload"]


def load_stubs(proto_dir):
    """Generates the Python stubs for latchkey/v1 into a temporary directory and imports them."""
    from grpc_tools import protoc  # noqa: PLC0415 (only needed at start)

    out = tempfile.mkdtemp(prefix="latchkey-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    args += [os.path.join(proto_dir, "latchkey", "v1", f"{name}.proto") for name in PROTOS]
    if protoc.main(args) != 0:
        sys.exit(f"cannot compile the protos in {proto_dir}")
    sys.path.insert(0, out)
    return {
        name: importlib.import_module(f"latchkey.v1.{name}_pb2")
        for name in ("system", "access")
    } | {
        f"{name}_grpc": importlib.import_module(f"latchkey.v1.{name}_pb2_grpc")
        for name in ("system", "access")
    }


def channel(args):
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        # The daemon's own certificate as the only root: it is pinned, no CA is trusted.
        root_certificates=read(args.server_cert),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    options = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(args.address, credentials, options=options)


def error_code(error):
    """latchkey's stable code for a refusal (also in a google.rpc.ErrorInfo detail)."""
    return dict(error.trailing_metadata() or ()).get("latchkey-error-code", "")


def status(stubs, chan, _args):
    answer = stubs["system_grpc"].SystemServiceStub(chan).Status(stubs["system"].StatusRequest(), timeout=30)
    caller = answer.caller
    print(json.dumps({
        "version": answer.version,
        "caller": caller.WhichOneof("identity"),
        "workload": caller.workload.name if caller.HasField("workload") else None,
    }))
    return 0


def introspect(stubs, chan, args):
    access = stubs["access"]
    answer = stubs["access_grpc"].AccessServiceStub(chan).Introspect(
        access.IntrospectRequest(token=args.token), timeout=30)
    if not answer.active:
        print(json.dumps({"active": False}))
        return 1
    print(json.dumps({
        "active": True,
        "scope": answer.scope,
        "grant_id": answer.grant_id,
        "expires_at": answer.expires_at.ToJsonString(),
    }))
    return 0


def watch_revocations(stubs, chan, args):
    access = stubs["access"]
    stub = stubs["access_grpc"].AccessServiceStub(chan)
    stream = stub.WatchRevocations(access.WatchRevocationsRequest())
    stream.initial_metadata()  # the daemon has the watch from here on
    print("watching", flush=True)
    seen = 0
    for message in stream:
        grant = message.grant
        # Here a vault plugin would revoke the leases it created for grant.id.
        answer = stub.AcknowledgeRevocation(access.AcknowledgeRevocationRequest(grant_id=grant.id), timeout=30)
        print(json.dumps({
            "acknowledged": grant.id,
            "scope": grant.scope,
            "state": access.GrantState.Name(answer.state),
        }), flush=True)
        seen += 1
        if args.n and seen >= args.n:
            stream.cancel()
            break
    return 0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="latchkeyd's TLS HOST:PORT")
    parser.add_argument("--server-cert", required=True, help="the daemon's tls-cert.pem, pinned")
    parser.add_argument("--server-name", help="name to check in the daemon's certificate, if not the address's host")
    parser.add_argument("--cert", required=True, help="this workload's client certificate (PEM)")
    parser.add_argument("--key", required=True, help="this workload's private key (PEM)")
    parser.add_argument("--proto", default=os.path.join(here, "..", "..", "proto"), help="latchkey's proto/ directory")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status")
    p = commands.add_parser("introspect")
    p.add_argument("token")
    p = commands.add_parser("watch-revocations")
    p.add_argument("-n", type=int, default=0, help="stop after N revocations (default: never)")
    args = parser.parse_args()

    stubs = load_stubs(os.path.abspath(args.proto))
    run = {"status": status, "introspect": introspect, "watch-revocations": watch_revocations}[args.command]
    with channel(args) as chan:
        try:
            return run(stubs, chan, args)
        except grpc.RpcError as e:
            print(f"latchkeyd refused: {e.code().name} {error_code(e)}: {e.details()}", file=sys.stderr)
            return 4


if __name__ == "__main__":
    sys.exit(main())
