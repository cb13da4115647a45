"""A gRPC client from another stack (Python grpcio) for the end-to-end tests.

It compiles the demo's Catalog proto at run time (grpc_tools, no checked-in
stubs), makes the calls a test asks for through the proxy, and prints one JSON
document with what came back, so the Rust test can assert on it.

    grpc_client.py ADDR unary KEY
    grpc_client.py ADDR multiplex KEY [KEY ...]   # concurrent calls, one channel
    grpc_client.py ADDR server-stream KEY N
    grpc_client.py ADDR client-stream KEY N
    grpc_client.py ADDR bidi KEY N
    grpc_client.py ADDR status KEY                # a call the server fails

KEY "-" sends no baggage.
"""

import importlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto", "proto")
PROTO = "demo/v1/movies.proto"


def load_stubs():
    out = tempfile.mkdtemp(prefix="divert-grpc-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
    )
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    try:
        return importlib.import_module("demo.v1.movies_pb2"), importlib.import_module("demo.v1.movies_pb2_grpc")
    finally:
        # Both modules are loaded: the generated files are no longer needed.
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)


def metadata(key):
    return () if key == "-" else (("baggage", f"okteto-divert={key}"),)


def served(s):
    return {"service": s.service, "namespace": s.namespace, "baggage": s.baggage}


def main():
    addr, what, *args = sys.argv[1:]
    pb, pb_grpc = load_stubs()
    # One channel is one HTTP/2 connection: every call below shares it.
    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = pb_grpc.CatalogStub(channel)
        if what == "unary":
            r = stub.ListMovies(pb.ListMoviesRequest(limit=2), metadata=metadata(args[0]), timeout=10)
            out = {"served_by": served(r.served_by), "movies": len(r.movies)}
        elif what == "multiplex":
            def call(key):
                r = stub.ListMovies(pb.ListMoviesRequest(limit=1), metadata=metadata(key), timeout=10)
                return {"key": key, "served_by": served(r.served_by)}

            # Start every call before any finishes, so they are concurrent streams.
            futures = [stub.ListMovies.future(pb.ListMoviesRequest(limit=1), metadata=metadata(k), timeout=10) for k in args]
            out = [{"key": k, "served_by": served(f.result().served_by)} for k, f in zip(args, futures)]
            with ThreadPoolExecutor(max_workers=len(args)) as ex:
                out += list(ex.map(call, args))
        elif what == "server-stream":
            n = int(args[1])
            items = list(stub.StreamMovies(pb.ListMoviesRequest(limit=n), metadata=metadata(args[0]), timeout=10))
            out = {"count": len(items), "namespaces": sorted({m.served_by.namespace for m in items})}
        elif what == "client-stream":
            n = int(args[1])
            notes = (pb.Note(text=f"n{i}") for i in range(n))
            r = stub.CollectNotes(notes, metadata=metadata(args[0]), timeout=10)
            out = {"text": r.text, "served_by": served(r.served_by)}
        elif what == "bidi":
            n = int(args[1])
            notes = (pb.Note(text=f"n{i}") for i in range(n))
            echoes = list(stub.Chat(notes, metadata=metadata(args[0]), timeout=10))
            out = {"texts": [e.text for e in echoes], "namespaces": sorted({e.served_by.namespace for e in echoes})}
        elif what == "status":
            try:
                stub.ListMovies(pb.ListMoviesRequest(limit=999), metadata=metadata(args[0]), timeout=10)
                out = {"code": "OK"}
            except grpc.RpcError as e:
                out = {"code": e.code().name, "details": e.details()}
        else:
            sys.exit(f"unknown call {what}")
    print(json.dumps(out))


def unavailable():
    """Outside the channel_ready wait: a call whose upstream is down."""
    addr, key = sys.argv[2], sys.argv[3]
    pb, pb_grpc = load_stubs()
    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.CatalogStub(channel)
        try:
            stub.ListMovies(pb.ListMoviesRequest(limit=1), metadata=metadata(key), timeout=10)
            out = {"code": "OK"}
        except grpc.RpcError as e:
            out = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "unavailable":
        unavailable()
    else:
        main()
