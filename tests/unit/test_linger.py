"""shardgate/linger.py: when a stream's writer waits for company, and the setting that sizes it
(SHARDGATE_STREAM_LINGER_MS, read by the ingress and the worker alike)."""

from __future__ import annotations

import pytest

from ingress.config import IngressConfig
from partition.config import PartitionConfig
from shardgate.envconfig import ConfigError
from shardgate.linger import BUSY_WINDOWS, DEFAULT_DELAY_S, MIN_IN_FLIGHT, Linger

pytestmark = pytest.mark.timeout(10)


def test_a_busy_stream_waits_and_one_that_was_quiet_or_holds_few_sends_at_once() -> None:
    linger = Linger(0.002)
    assert linger.delay(100, 10.0) == 0.0  # nothing written yet: the first message goes at once
    linger.wrote(10.0)
    assert linger.delay(MIN_IN_FLIGHT, 10.001) == 0.002
    assert linger.delay(MIN_IN_FLIGHT - 1, 10.001) == 0.0  # few in flight: nothing to batch with
    assert linger.delay(100, 10.0 + BUSY_WINDOWS * 0.002 + 0.0001) == 0.0  # the previous message is too old
    assert linger.delay(100, 10.0 + BUSY_WINDOWS * 0.002 - 0.0001) == 0.002


def test_no_delay_never_waits_and_bad_settings_are_refused() -> None:
    off = Linger(0.0, min_in_flight=1)
    off.wrote(1.0)
    assert off.delay(1000, 1.0) == 0.0
    with pytest.raises(ValueError):
        Linger(-0.001)
    with pytest.raises(ValueError):
        Linger(0.002, min_in_flight=0)


@pytest.mark.parametrize("config", [IngressConfig, PartitionConfig])
def test_both_ends_read_the_linger_from_the_environment(config: type[IngressConfig | PartitionConfig]) -> None:
    assert config.from_env({}).stream_linger_ms == DEFAULT_DELAY_S * 1000 == 2.0
    assert config.from_env({"SHARDGATE_STREAM_LINGER_MS": "0"}).stream_linger_ms == 0.0
    assert config.from_env({"SHARDGATE_STREAM_LINGER_MS": "0.5"}).stream_linger_ms == 0.5
    with pytest.raises(ConfigError, match="SHARDGATE_STREAM_LINGER_MS"):
        config.from_env({"SHARDGATE_STREAM_LINGER_MS": "-1"})
