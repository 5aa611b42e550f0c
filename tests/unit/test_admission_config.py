"""The worker's admission settings (docs/operations.md, "Bounded memory") and its bidirectional
attempt mode (SHARDGATE_BIDI) read from the environment."""

from __future__ import annotations

import pytest

from partition.config import PartitionConfig
from shardgate.envconfig import ConfigError

pytestmark = pytest.mark.timeout(10)


def test_admission_settings_default_and_read_from_the_environment() -> None:
    default = PartitionConfig.from_env({})
    assert (default.max_concurrent_invocations, default.ready_invocations, default.max_backlog_invocations) == (
        10000, 1000, 10000)
    cfg = PartitionConfig.from_env({"SHARDGATE_MAX_CONCURRENT_INVOCATIONS": "8", "SHARDGATE_READY_INVOCATIONS": "0",
                                    "SHARDGATE_MAX_BACKLOG_INVOCATIONS": "3"})
    assert (cfg.max_concurrent_invocations, cfg.ready_invocations, cfg.max_backlog_invocations) == (8, 0, 3)


def test_a_negative_backlog_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="SHARDGATE_MAX_BACKLOG_INVOCATIONS"):
        PartitionConfig.from_env({"SHARDGATE_MAX_BACKLOG_INVOCATIONS": "-1"})


def test_the_bidi_mode_defaults_to_auto_and_refuses_what_it_does_not_know() -> None:
    assert PartitionConfig.from_env({}).bidi == "auto"
    assert PartitionConfig.from_env({"SHARDGATE_BIDI": " Always "}).bidi == "always"
    assert PartitionConfig.from_env({"SHARDGATE_BIDI": "off"}).bidi == "off"
    with pytest.raises(ConfigError, match="SHARDGATE_BIDI"):
        PartitionConfig.from_env({"SHARDGATE_BIDI": "yes"})
