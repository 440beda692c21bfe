"""A stock Python grpcio xDS client for eds-server's interop tests.

It speaks the contract every interop client shares (see
devkit/src/interop/mod.rs): it dials xds:///<target> through grpcio's
C-core, which reads the bootstrap from GRPC_XDS_BOOTSTRAP like any proxyless
gRPC application, calls eds.echo.v1.Echo/Echo one call at a time at a fixed
rate, and prints one line of JSON per call:

    {"t_ms": <unix ms when it ended>, "lat_ms": .., "code": 0, "pod": "echo-a0", "zone": "zone-a"}
    {"t_ms": .., "lat_ms": .., "code": 14, "msg": "<status details>"}

It stops after --count calls (0: never) or on SIGTERM/SIGINT; with --hold it
stays connected after the last call until a signal. --header name=value adds
request metadata (the ring-hash key); with --key-cycle N the value gets the
suffix i%N.

The two echo messages are encoded by hand (a few lines of protobuf wire
format), so neither protoc nor generated code nor the protobuf package is
needed: the generic channel.unary_unary takes our own (de)serializers.
Balancing is entirely C-core's own. This is a test client, not a load
generator: one call in flight at a time.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

import grpc

ECHO_METHOD = "/eds.echo.v1.Echo/Echo"


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_request(message):
    """eds.echo.v1.EchoRequest{message}: field 1, length-delimited."""
    data = message.encode()
    return b"\x0a" + _varint(len(data)) + data


def _read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def decode_reply(buf):
    """eds.echo.v1.EchoReply: the string fields 1..3; everything else skipped."""
    fields = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            fields[num] = bytes(buf[i : i + n]).decode()
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
    return {"pod": fields.get(2, ""), "zone": fields.get(3, "")}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="xDS target, dialled as xds:///<target>")
    p.add_argument("--count", type=int, default=0, help="calls to make; 0: until a signal")
    p.add_argument("--rate", type=float, default=100.0, help="calls per second; 0: back to back")
    p.add_argument("--header", default="", help="request metadata name=value")
    p.add_argument("--key-cycle", type=int, default=0, help="append i%%N to the header value")
    p.add_argument("--rpc-timeout", type=float, default=5.0, help="seconds per call")
    p.add_argument("--out", default="", help="write the JSON lines here instead of stdout")
    p.add_argument("--hold", action="store_true", help="stay connected after the last call")
    args = p.parse_args()
    if not os.environ.get("GRPC_XDS_BOOTSTRAP") and not os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG"):
        sys.exit("client: set GRPC_XDS_BOOTSTRAP (a file) or GRPC_XDS_BOOTSTRAP_CONFIG (JSON)")
    h_name = h_value = None
    if args.header:
        h_name, sep, h_value = args.header.partition("=")
        if not sep or not h_name:
            sys.exit("client: --header must be name=value")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    out = open(args.out, "w") if args.out else sys.stdout
    channel = grpc.insecure_channel("xds:///" + args.target)
    echo = channel.unary_unary(
        ECHO_METHOD,
        request_serializer=encode_request,
        response_deserializer=decode_reply,
    )
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    start = time.monotonic()
    i = 0
    while not stop.is_set() and (args.count == 0 or i < args.count):
        # Paced against the start, so slow calls do not lower the rate.
        wait = start + i * interval - time.monotonic()
        if wait > 0 and stop.wait(wait):
            break
        rec = {}
        metadata = None
        if h_name:
            key = h_value + (str(i % args.key_cycle) if args.key_cycle > 0 else "")
            rec["key"] = key
            metadata = ((h_name, key),)
        began = time.monotonic()
        try:
            reply = echo("grpcio %d" % i, timeout=args.rpc_timeout, metadata=metadata)
            rec.update(code=0, pod=reply["pod"], zone=reply["zone"])
        except grpc.RpcError as e:
            if stop.is_set():
                break
            rec.update(code=e.code().value[0], msg=e.details() or "")
        ended = time.monotonic()
        rec["t_ms"] = int(time.time() * 1000)
        rec["lat_ms"] = round((ended - began) * 1000, 3)
        # One write per line, flushed, so a reader tailing the file sees
        # whole records as they happen.
        out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        out.flush()
        i += 1
    if args.hold:
        while not stop.wait(1.0):
            pass
    channel.close()


if __name__ == "__main__":
    main()
