#!/usr/bin/env python3
"""Run a playbook through ansible-runner-service and print its events live.

The client code is generated from ../../proto with grpcio-tools (into a
temporary folder, at start), so it always matches the server's contract.

    pip install -r requirements.txt
    python3 run_playbook.py --server 127.0.0.1:50051 hello.yml -e who=Ada

Exits 0 when the job succeeds, 2 when it fails, 1 on any other end.
"""
import argparse
import os
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def generate(into: str):
    """Compiles job_service.proto into Python modules under `into`."""
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        str(PROTO_ROOT / "ansible_runner" / "v1" / "job_service.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    for package in ("ansible_runner", "ansible_runner/v1"):
        pathlib.Path(into, package, "__init__.py").touch()
    sys.path.insert(0, into)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("playbook")
    parser.add_argument("--server", default=os.environ.get("ARS_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("ARS_TOKEN"))
    parser.add_argument("-e", "--extra-var", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    generated = tempfile.mkdtemp(prefix="ars-client-")
    generate(generated)
    from ansible_runner.v1 import job_service_pb2 as pb
    from ansible_runner.v1 import job_service_pb2_grpc as rpc
    from google.protobuf import struct_pb2

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    extra_vars = struct_pb2.Struct()
    for pair in args.extra_var:
        key, _, value = pair.partition("=")
        extra_vars[key] = value

    with grpc.insecure_channel(args.server) as channel:
        jobs = rpc.JobServiceStub(channel)
        job = jobs.SubmitJob(
            pb.SubmitJobRequest(playbook=args.playbook, extra_vars=extra_vars),
            metadata=metadata,
        ).job
        print(f"job {job.job_id} {pb.JobStatus.Name(job.status)}", flush=True)
        final = None
        for message in jobs.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=metadata):
            kind = message.WhichOneof("kind")
            if kind == "event":
                event = message.event
                where = f" [{event.host}]" if event.host else ""
                print(f"{event.sequence:>4} {event.event}{where} {event.task}".rstrip(), flush=True)
                if event.stdout.strip():
                    print("     " + event.stdout.strip().replace("\n", "\n     "), flush=True)
            elif kind == "status_change":
                final = message.status_change
        if final is None:
            sys.exit("the watch ended without a final status")
        status = pb.JobStatus.Name(final.status)
        print(f"job {final.job_id} {status} {final.error_reason}".rstrip(), flush=True)
        sys.exit({"JOB_STATUS_SUCCESSFUL": 0, "JOB_STATUS_FAILED": 2}.get(status, 1))


if __name__ == "__main__":
    main()
