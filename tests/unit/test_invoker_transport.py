"""Which client the invoker takes for an attempt (decision 39), against real loopback servers.

A raw h2c-only server (an `h2` server connection on asyncio streams, which answers anything
else with its SETTINGS frame and a closed connection) stands for a deployment like the
TypeScript SDK's `endpoint().listen()`; it answers every POST with an Output and an End.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from prometheus_client import REGISTRY

from partition.errors import DeploymentError
from partition.invoker import AttemptInput, Invoker
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import MessageType as T
from shardgate.schema import Deployment
from shardgate.sharding import new_invocation_id

pytestmark = pytest.mark.timeout(30)

VERSION = 6
ANSWER = (protocol.encode_message(T.OUTPUT_COMMAND, pb.OutputCommandMessage(value=pb.Value(content=b'"hi"')))
          + protocol.encode_message(T.END, pb.EndMessage()))


async def _h2c_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    try:
        while data := await reader.read(65536):
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                return  # not HTTP/2: the connection is closed
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    conn.send_headers(event.stream_id, [
                        (":status", "200"), ("content-type", protocol.content_type(VERSION))])
                    conn.send_data(event.stream_id, ANSWER, end_stream=True)
            writer.write(conn.data_to_send())
    finally:
        writer.close()


@pytest.fixture
async def h2c_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_h2c_only, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def _deployment(port: int, **kw: bool) -> Deployment:
    return Deployment(id="dp_test", uri=f"http://127.0.0.1:{port}", protocol_mode="BIDI_STREAM",
                      min_protocol_version=5, max_protocol_version=VERSION, **kw)


def _input() -> AttemptInput:
    inv = str(new_invocation_id(7))
    return AttemptInput(invocation_id=inv, service="Greeter", handler="greet", key=None, keyed=False,
                        input_frame=protocol.input_command(b'"x"'), journal=[], state={}, partial_state=True,
                        retry_count=0, duration_since_last_entry_ms=0, attempt_timeout_s=5.0)


def _attempts() -> dict[str, float]:
    return {t: REGISTRY.get_sample_value("shardgate_partition_deployment_attempts_total", {"transport": t}) or 0.0
            for t in ("http1", "h2c", "https")}


async def _attempt(invoker: Invoker, deployment: Deployment) -> tuple[list[int], dict[str, float]]:
    """The frame types of one attempt's answer and the attempts it counted per transport."""
    before = _attempts()
    frames = await invoker.attempt(deployment, _input())
    after = _attempts()
    return [f.type for f in frames], {t: after[t] - before[t] for t in after if after[t] != before[t]}


async def test_an_h2c_registration_is_reached_over_h2c(h2c_port: int) -> None:
    invoker = Invoker(connect_timeout_s=2.0)
    await invoker.start()
    try:
        assert await _attempt(invoker, _deployment(h2c_port, use_http_11=False)) == (
            [T.OUTPUT_COMMAND, T.END], {"h2c": 1})
    finally:
        await invoker.close()


async def test_http_11_attempts_fall_back_to_h2c_when_the_endpoint_stops_speaking_http1(h2c_port: int) -> None:
    """Registered for h2c with an endpoint that answered HTTP/1.1 too, now replaced by an h2c-only
    one: the first attempt fails (retryable), the next ones go over h2c."""
    invoker = Invoker(connect_timeout_s=2.0)
    await invoker.start()
    deployment = _deployment(h2c_port, use_http_11=False, http_11_attempts=True)
    try:
        before = _attempts()
        with pytest.raises(DeploymentError):
            await invoker.attempt(deployment, _input())
        assert _attempts()["http1"] == before["http1"] + 1
        assert await _attempt(invoker, deployment) == ([T.OUTPUT_COMMAND, T.END], {"h2c": 1})
        assert await _attempt(invoker, deployment) == ([T.OUTPUT_COMMAND, T.END], {"h2c": 1})
    finally:
        await invoker.close()


async def test_use_http_11_never_falls_back(h2c_port: int) -> None:
    invoker = Invoker(connect_timeout_s=2.0)
    await invoker.start()
    deployment = _deployment(h2c_port, use_http_11=True)
    try:
        for _ in range(2):
            before = _attempts()
            with pytest.raises(DeploymentError):
                await invoker.attempt(deployment, _input())
            assert _attempts()["http1"] == before["http1"] + 1
    finally:
        await invoker.close()
