"""What the ingress tells a client when a partition RPC fails: the worker's own fixed texts,
never gRPC's transport details (which name hosts and ports)."""

from __future__ import annotations

import grpc
import pytest

from ingress.grpc_dispatcher import _reason


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(("code", "details", "shown"), [
    (grpc.StatusCode.FAILED_PRECONDITION, "not leader", "not leader"),
    (grpc.StatusCode.UNAVAILABLE, "state store unavailable, retry", "state store unavailable, retry"),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.1.2.3:5122",
     "unavailable"),
    (grpc.StatusCode.UNKNOWN, "Error 111 connecting to redis.internal:6379. Connection refused.", "unknown"),
])
def test_only_the_workers_fixed_texts_reach_the_client(code: grpc.StatusCode, details: str, shown: str) -> None:
    assert _reason(_error(code, details)) == shown
