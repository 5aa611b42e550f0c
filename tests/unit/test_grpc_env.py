"""shardgate/grpc_env.py: the gRPC C-core defaults, set unless the operator set them, and set by each
process entry point before `grpc` is imported (C-core reads them at import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardgate import grpc_env

ROOT = Path(__file__).resolve().parents[2]

# Records GRPC_EXPERIMENTS as it is when `grpc` is first imported, then imports the entry point.
PROBE = """
import importlib, os, sys
seen = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS", "<unset>"))
        return None
sys.meta_path.insert(0, Probe())
importlib.import_module(sys.argv[1])
print(seen[0] if seen else "<grpc not imported>")
"""


def test_the_defaults_are_set_unless_the_environment_has_its_own() -> None:
    env: dict[str, str] = {}
    grpc_env.apply_defaults(env)
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener"}
    own = {"GRPC_EXPERIMENTS": "event_engine_client"}
    grpc_env.apply_defaults(own)
    assert own == {"GRPC_EXPERIMENTS": "event_engine_client"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry_point", ["partition.__main__", "ingress.__main__"])
def test_each_process_sets_them_before_grpc_is_imported(entry_point: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE, entry_point], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=50, check=True).stdout.split()
    assert out[-1] == grpc_env.DEFAULT_EXPERIMENTS
