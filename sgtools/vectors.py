"""Re-capture the protocol vectors (`tests/data/vectors`) from the real restate-sdk.

    python -m sgtools.vectors --out tests/data/vectors [--source DIR] [--only NAME ...]

Plays the runtime side against `tests/services/vector_service.py`, served by hypercorn on a
free loopback port, and writes one JSON file per vector in the shape of the committed copy
(`--source`, by default `tests/data/vectors`, which also supplies every request):

* request-response invocations (HTTP/1.1): the recorded `request_hex` is sent verbatim to the
  handler of `INVOKE_PATHS`; the response fields and `decoded_response` are replaced.
* bidi invocations (`j*_bidi_*`, HTTP/2 prior knowledge): the recorded opening frames (Start and
  its `known_entries`) are sent on a stream left open; the tool then answers the SDK as a
  runtime would (`runtime_reply`: a completed timer for a sleep, the stored result for a v6 run
  proposal, an ack for a v7 proposal asking for one) and closes the request stream after the
  SDK's End, Error or Suspension. `request_hex` becomes everything written, in order.
* discovery (`discovery_http1` / `discovery_h2c`) and the manifests derived from it.
* `k_request_identity`: every signing variant is re-signed now with the vector's private key
  (the recorded tokens have expired); the accepted (`v1_good`) exchange is recorded.

Wall-clock or environment dependent fields (`wake_up_time`, `invoke_time`, JWTs, stack traces,
`server` headers) differ from one capture to the next. `--out` may be `--source`: everything is
read before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.identity import JWT_HEADER, SCHEME_V1, SIGNATURE_SCHEME_HEADER, RequestSigner
from shardgate.protocol import (
    TERMINAL_TYPES,
    Frame,
    FrameDecoder,
    MessageType,
    decode_frames,
    encode_message,
    is_notification,
    notification,
    parse_content_type,
    parse_message,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT / "tests" / "data" / "vectors"
SERVICE_APP = "tests.services.vector_service:app"
LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 30.0
EXCHANGE_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
H2_READ_BYTES = 65_536
DROPPED_RESPONSE_HEADERS = frozenset({"date"})

# mount points of the extra deployments inside the vector service (see its docstring)
RETRY_MOUNT = "/retry"
IDENTITY_MOUNT = "/identity"
IDENTITY_VECTOR = "k_request_identity"
IDENTITY_AUDIENCE = "/invoke/Greeter/greet"
WRONG_AUDIENCE = "/invoke/Greeter/other"
EXPIRED_BY_S = 3600

# scenario (file name without the `_v6`/`_v7` suffix) -> request path: the vectors do not record it
INVOKE_PATHS: dict[str, str] = {
    "a_greet": "/invoke/Greeter/greet",
    "b_object_eager_state": "/invoke/Counter/add",
    "b2_object_lazy_state_suspend": "/invoke/Counter/add",
    "b3_object_lazy_state_resume": "/invoke/Counter/add",
    "c1_sleep_suspend": "/invoke/Counter/nap",
    "c2_sleep_resume": "/invoke/Counter/nap",
    "d1_run_propose": "/invoke/Greeter/with_run",
    "d2_run_replay": "/invoke/Greeter/with_run",
    "e_terminal_failure": "/invoke/Greeter/fail_terminal",
    "f_retryable_error": "/invoke/Greeter/fail_retry",
    "g1_workflow_promise_suspend": "/invoke/Signup/run",
    "g2_workflow_promise_resume": "/invoke/Signup/run",
    "g3_workflow_resolve_promise": "/invoke/Signup/approve",
    "g4_workflow_resolve_promise_resume": "/invoke/Signup/approve",
    "h_cancel_signal": "/invoke/Counter/nap",
    "i_journal_mismatch": "/invoke/Counter/nap",
    "l1_call_suspend": "/invoke/Extra/call_other",
    "l2_call_resume": "/invoke/Extra/call_other",
    "m_one_way_call": "/invoke/Extra/send_other",
    "n1_awakeable_suspend": "/invoke/Extra/awk",
    "n2_awakeable_resume": "/invoke/Extra/awk",
    "o_complete_awakeable": "/invoke/Extra/resolve_awk",
    "p_cancel_other": "/invoke/Extra/cancel_other",
    "q_state_keys_eager": "/invoke/Counter/keys",
    "q2_state_keys_lazy": "/invoke/Counter/keys",
    "r_random_seed": "/invoke/Extra/rnd",
    "s_run_retry_rc0": RETRY_MOUNT + "/invoke/Extra/flaky",
    "s_run_retry_replayed_rc1": RETRY_MOUNT + "/invoke/Extra/flaky",
    "s_run_retry_replayed_rc2": RETRY_MOUNT + "/invoke/Extra/flaky",
    "s_run_retry_replayed_rc3": RETRY_MOUNT + "/invoke/Extra/flaky",
    "unknown_handler": "/invoke/Greeter/no_such_handler",
}

Vector = dict[str, Any]
Headers = dict[str, str]
Reply = Callable[[Frame], bytes]
M = TypeVar("M", bound=Message)


class CaptureError(RuntimeError):
    """The deployment did not start, an exchange failed or timed out, or a vector is unknown."""


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange as the runtime saw it."""

    status: int
    headers: Headers
    body: bytes
    sent: bytes


# ---- decoded views -------------------------------------------------------------------------------


def frame_name(msg_type: int) -> str:
    """`SleepCompletionNotification`-style name of a frame type; raises ValueError if unknown."""
    name = "".join(part.capitalize() for part in MessageType(msg_type).name.split("_"))
    if is_notification(msg_type) and name.endswith("Completion"):
        name += "Notification"
    return name


def frame_view(frame: Frame) -> dict[str, Any]:
    """The committed `decoded_*` entry of one frame; raises ProtocolError/ValueError if unknown."""
    payload = MessageToDict(parse_message(frame), preserving_proto_field_name=True)
    if frame.type == MessageType.SIGNAL_NOTIFICATION:  # the captures call the signal id `idx`
        payload = {("idx" if k == "signal_id" else k): v for k, v in payload.items()}
    return {"type": f"0x{frame.type:04X}", "name": frame_name(frame.type), "flags": f"0x{frame.flags:04X}",
            "payload": payload}


def decoded(body: bytes, headers: Headers) -> list[dict[str, Any]] | None:
    """Decoded frames of a body whose content type is an invocation protocol, else None."""
    if parse_content_type(headers.get("content-type")) is None:
        return None
    return [frame_view(f) for f in decode_frames(body)]


# ---- the runtime's side of a bidi stream ---------------------------------------------------------


def _parsed(frame: Frame, cls: type[M]) -> M:
    """`frame`'s message, which must be a `cls`; raises CaptureError otherwise."""
    msg = parse_message(frame)
    if not isinstance(msg, cls):
        raise CaptureError(f"frame 0x{frame.type:04X} is a {type(msg).__name__}, expected {cls.__name__}")
    return msg


def runtime_reply(frame: Frame) -> bytes:
    """Frames the runtime writes back for one SDK frame on an open stream (b"" for none).

    A SleepCommand gets its timer completed at once; a ProposeRunCompletion gets an ack when it
    asks for one (v7, REQUESTED_ACK), else the stored result echoed as RunCompletionNotification.
    """
    if frame.type == MessageType.SLEEP_COMMAND:
        sleep = _parsed(frame, pb.SleepCommandMessage)
        return notification(MessageType.SLEEP_COMPLETION, completion_id=sleep.result_completion_id, void=True)
    if frame.type != MessageType.PROPOSE_RUN_COMPLETION:
        return b""
    proposal = _parsed(frame, pb.ProposeRunCompletionMessage)
    completion_id = proposal.result_completion_id
    if frame.requested_ack:
        ack = pb.ProposeRunCompletionAckMessage(completion_id=completion_id)
        return encode_message(MessageType.PROPOSE_RUN_COMPLETION_ACK, ack)
    if proposal.HasField("failure"):
        return notification(MessageType.RUN_COMPLETION, completion_id=completion_id, failure=proposal.failure)
    return notification(MessageType.RUN_COMPLETION, completion_id=completion_id, value=proposal.value)


def opening_frames(request: bytes) -> bytes:
    """The frames a runtime sends before hearing from the SDK: Start and its `known_entries`."""
    frames = decode_frames(request)
    if not frames:
        raise CaptureError("empty request: no Start message")
    start = _parsed(frames[0], pb.StartMessage)
    return b"".join(f.encode() for f in frames[: 1 + start.known_entries])


# ---- transports ----------------------------------------------------------------------------------


def _response_headers(pairs: list[tuple[str, str]]) -> Headers:
    return {k.lower(): v for k, v in pairs if k.lower() not in DROPPED_RESPONSE_HEADERS}


def http1_exchange(port: int, method: str, path: str, headers: Headers, body: bytes) -> Exchange:
    """One HTTP/1.1 request; raises CaptureError on a connection failure or timeout."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=EXCHANGE_TIMEOUT_S)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return Exchange(resp.status, _response_headers(resp.getheaders()), resp.read(), body)
    except (OSError, http.client.HTTPException) as exc:
        raise CaptureError(f"{method} {path}: {exc!r}") from None
    finally:
        conn.close()


class _H2Stream:
    """A client HTTP/2 connection carrying one request stream, driven synchronously."""

    def __init__(self, port: int) -> None:
        """Connect and queue the connection preface; raises CaptureError if the port refuses."""
        try:
            self.sock = socket.create_connection((LOOPBACK, port), timeout=EXCHANGE_TIMEOUT_S)
        except OSError as exc:
            raise CaptureError(f"HTTP/2 connect to port {port}: {exc!r}") from None
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.stream_id = self.conn.get_next_available_stream_id()
        self.authority = f"{LOOPBACK}:{port}"

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def events(self, deadline: float) -> list[h2.events.Event]:
        """Events from the next read; raises CaptureError when the peer closes or time runs out."""
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = self.sock.recv(H2_READ_BYTES)
        except OSError as exc:
            raise CaptureError(f"HTTP/2 read failed: {exc!r}") from None
        if not data:
            raise CaptureError("HTTP/2 connection closed before the response ended")
        return self.conn.receive_data(data)

    def close(self) -> None:
        self.sock.close()


def _h2_request_headers(stream: _H2Stream, method: str, path: str, headers: Headers) -> list[tuple[str, str]]:
    pseudo = [(":method", method), (":scheme", "http"), (":authority", stream.authority), (":path", path)]
    return pseudo + [(k, v) for k, v in headers.items() if not k.startswith(":")]


def h2_exchange(port: int, method: str, path: str, headers: Headers, body: bytes,
                reply: Reply | None = None) -> Exchange:
    """One HTTP/2 (prior knowledge) exchange; raises CaptureError on failure or timeout.

    Without `reply` the request ends with `body`. With it the request stream stays open: every
    response frame is passed to `reply`, whose bytes are written on the stream, and the request
    ends after the SDK's terminal frame (End, Error, Suspension).
    """
    stream = _H2Stream(port)
    sent, received = bytearray(body), bytearray()
    status, resp_headers = 0, {}
    decoder = FrameDecoder()
    deadline = time.monotonic() + EXCHANGE_TIMEOUT_S
    try:
        stream.conn.send_headers(stream.stream_id, _h2_request_headers(stream, method, path, headers),
                                 end_stream=not body and reply is None)
        if body:
            stream.conn.send_data(stream.stream_id, body, end_stream=reply is None)
        stream.flush()
        while True:
            for event in stream.events(deadline):
                if isinstance(event, h2.events.ResponseReceived):
                    pairs = [(str(k), str(v)) for k, v in event.headers]
                    resp_headers = _response_headers(pairs)
                    status = int(resp_headers.get(":status", "0"))
                elif isinstance(event, h2.events.DataReceived):
                    received += event.data
                    stream.conn.acknowledge_received_data(event.flow_controlled_length, stream.stream_id)
                    if reply is not None:
                        sent += _react(stream, decoder.feed(event.data), reply)
                elif isinstance(event, h2.events.StreamEnded):
                    return Exchange(status, resp_headers, bytes(received), bytes(sent))
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise CaptureError(f"HTTP/2 {path}: {event!r}")
            stream.flush()
    finally:
        stream.close()


def _react(stream: _H2Stream, frames: list[Frame], reply: Reply) -> bytes:
    """Write the runtime's replies to `frames`; end the request after a terminal frame."""
    written = b""
    for frame in frames:
        out = reply(frame)
        if out:
            stream.conn.send_data(stream.stream_id, out)
            written += out
        if frame.type in TERMINAL_TYPES:
            stream.conn.end_stream(stream.stream_id)
    return written


# ---- the deployment ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        return http1_exchange(port, "GET", "/health", {}, b"").status == 200
    except CaptureError:
        return False


@contextlib.contextmanager
def serve(identity_key: str, log_path: Path) -> Iterator[int]:
    """Serve the vector service under hypercorn; yields its port. Raises CaptureError if it won't start."""
    port = _free_port()
    env = {**os.environ, "IDENTITY_KEYS": identity_key}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", SERVICE_APP, "--bind", f"{LOOPBACK}:{port}"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise CaptureError(f"{SERVICE_APP} did not start on port {port}:\n{tail}")
            time.sleep(POLL_INTERVAL_S)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- one vector ----------------------------------------------------------------------------------


def _with_response(old: Vector, ex: Exchange) -> Vector:
    return {**old, "response_status": ex.status, "response_headers": ex.headers,
            "response_hex": ex.body.hex()}


def capture_invocation(name: str, old: Vector, port: int) -> Vector:
    """A request-response invocation: the recorded request, sent verbatim over HTTP/1.1."""
    path = INVOKE_PATHS.get(name.rsplit("_v", 1)[0] if name[-3:] in ("_v6", "_v7") else name)
    if path is None:
        raise CaptureError(f"{name}: no request path known; add the scenario to INVOKE_PATHS")
    request = bytes.fromhex(old["request_hex"])
    ex = http1_exchange(port, "POST", path, dict(old["request_headers"]), request)
    new = _with_response(old, ex)
    return {**new, "decoded_request": decoded(request, old["request_headers"]),
            "decoded_response": decoded(ex.body, ex.headers)}


def capture_bidi(name: str, old: Vector, port: int) -> Vector:
    """An HTTP/2 bidi invocation: opening frames, then `runtime_reply` until the SDK ends."""
    headers: Headers = dict(old["request_headers"])
    opening = opening_frames(bytes.fromhex(old["request_hex"]))
    ex = h2_exchange(port, headers.get(":method", "POST"), headers[":path"], headers, opening, runtime_reply)
    new = _with_response(old, ex)
    return {**new, "request_hex": ex.sent.hex(), "decoded_request": decoded(ex.sent, headers),
            "decoded_response": decoded(ex.body, ex.headers)}


def capture_discovery(name: str, old: Vector, port: int) -> Vector:
    """GET /discover over HTTP/1.1 or, for `*_h2c`, HTTP/2 prior knowledge."""
    exchange = h2_exchange if name.endswith("h2c") else http1_exchange
    ex = exchange(port, old["request_method"], old["request_path"], dict(old["request_headers"]), b"")
    try:
        manifest = json.loads(ex.body)
    except ValueError:
        raise CaptureError(f"{name}: discovery answered {ex.status} with no JSON manifest") from None
    plain = {k: v for k, v in ex.headers.items() if not k.startswith(":")}  # as captured: no `:status`
    return {**_with_response(old, Exchange(ex.status, plain, ex.body, ex.sent)), "response_json": manifest}


def capture_manifest(name: str, vectors: dict[str, Vector], port: int) -> Vector:
    """`manifest_X`: the manifest of a fresh `discovery_X` exchange."""
    discovery = "discovery_" + name.removeprefix("manifest_")
    if discovery not in vectors:
        raise CaptureError(f"{name} needs {discovery}.json in the source folder")
    manifest: Vector = capture_discovery(discovery, vectors[discovery], port)["response_json"]
    return manifest


def identity_variants(signer: RequestSigner, now_s: float) -> dict[str, Headers]:
    """The identity headers of each signing variant of `k_request_identity`, signed at `now_s`."""
    def v1(audience: str, at_s: float) -> Headers:
        return {SIGNATURE_SCHEME_HEADER: SCHEME_V1, JWT_HEADER: signer.token(audience, at_s)}

    return {
        "no_headers": {},
        "unsigned": {SIGNATURE_SCHEME_HEADER: "unsigned"},
        "v1_good": v1(IDENTITY_AUDIENCE, now_s),
        "v1_wrong_aud": v1(WRONG_AUDIENCE, now_s),
        "v1_expired": v1(IDENTITY_AUDIENCE, now_s - EXPIRED_BY_S),
    }


def capture_identity(old: Vector, port: int) -> Vector:
    """Every signing variant against the identity-checking Greeter; the accepted one is recorded."""
    signer = RequestSigner.from_pem(old["private_key_pem_pkcs8"])
    base = {k: v for k, v in old["request_headers"].items() if k not in (SIGNATURE_SCHEME_HEADER, JWT_HEADER)}
    request = bytes.fromhex(old["request_hex"])
    path = IDENTITY_MOUNT + IDENTITY_AUDIENCE
    results: dict[str, int] = {}
    good: Exchange | None = None
    variants = identity_variants(signer, time.time())
    for variant, identity in variants.items():
        ex = http1_exchange(port, "POST", path, {**base, **identity}, request)
        results[variant] = ex.status
        good = ex if variant == "v1_good" else good
    assert good is not None
    return {**_with_response(old, good), "results_http_status": results,
            "example_headers": variants["v1_good"], "request_headers": {**base, **variants["v1_good"]}}


def capture_one(name: str, vectors: dict[str, Vector], port: int) -> Vector:
    """A fresh copy of vector `name` (file stem); raises CaptureError."""
    old = vectors[name]
    if name.startswith("manifest_"):
        return capture_manifest(name, vectors, port)
    if name.startswith("discovery_"):
        return capture_discovery(name, old, port)
    if name == IDENTITY_VECTOR:
        return capture_identity(old, port)
    if ":path" in old.get("request_headers", {}):
        return capture_bidi(name, old, port)
    return capture_invocation(name, old, port)


# ---- the folder ----------------------------------------------------------------------------------


def load_vectors(source: Path) -> dict[str, Vector]:
    """Every `*.json` of `source` by file stem; raises CaptureError if there is none."""
    vectors = {p.stem: json.loads(p.read_text()) for p in sorted(source.glob("*.json"))}
    if not vectors:
        raise CaptureError(f"no vectors (*.json) in {source}")
    return vectors


def capture(source: Path, out: Path, only: Collection[str] = ()) -> list[str]:
    """Re-capture the vectors of `source` (or just `only`, file stems) into `out`; returns the stems.

    Raises CaptureError (unknown names, deployment or exchange failures); nothing is written then.
    """
    vectors = load_vectors(source)
    names = [n.removesuffix(".json") for n in only] or list(vectors)
    unknown = sorted(set(names) - set(vectors))
    if unknown:
        raise CaptureError(f"not in {source}: {', '.join(unknown)}")
    identity_key = str(vectors.get(IDENTITY_VECTOR, {}).get("identity_key", ""))
    with (tempfile.TemporaryDirectory(prefix="sg-vectors-") as tmp,
          serve(identity_key, Path(tmp) / "hypercorn.log") as port):
        fresh = {name: capture_one(name, vectors, port) for name in names}
    out.mkdir(parents=True, exist_ok=True)
    for name, vector in fresh.items():
        (out / f"{name}.json").write_text(json.dumps(vector, indent=2))
    readme = source / "README.md"
    if readme.is_file() and out.resolve() != source.resolve():
        shutil.copyfile(readme, out / "README.md")
    return list(fresh)


def _same_response(old: Vector, new: Vector) -> bool:
    if "response_hex" not in old:  # a manifest
        return old == new
    return bool(old["response_hex"] == new["response_hex"]
                and old["response_status"] == new["response_status"])


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with a one-line reason on CaptureError)."""
    parser = argparse.ArgumentParser(prog="python -m sgtools.vectors", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the vectors into")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="committed vectors (requests)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="vector file stems to capture")
    args = parser.parse_args(argv)
    try:
        before = load_vectors(args.source)
        names = capture(args.source, args.out, args.only)
    except CaptureError as exc:
        print(f"vectors: {exc}", file=sys.stderr)
        return 1
    for name in names:
        new = json.loads((args.out / f"{name}.json").read_text())
        print(f"{name}: {'same response' if _same_response(before[name], new) else 'response changed'}")
    print(f"captured {len(names)} vectors into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
