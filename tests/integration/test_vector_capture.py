"""`python -m sgtools.vectors` (`make vectors`) against the real restate-sdk 1.2.0.

Runs the re-capture tool for a handful of vectors into a temp folder, serving
`tests/services/vector_service.py` under hypercorn, and holds the fresh copies against the
committed ones in `tests/data/vectors`: same status and the same message types in the same order
(decoded here with `shardgate.protocol`, not trusting the tool's own view) and, where nothing in
the exchange depends on the wall clock or the environment, the very same file content.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardgate.protocol import decode_frames
from tests.testdata import VECTORS_DIR, vector_path

REPO_ROOT = Path(__file__).resolve().parents[2]
CAPTURE_TIMEOUT_S = 60.0

# nothing wall-clock or environment dependent in these: the fresh file must equal the committed one
DETERMINISTIC = [
    "a_greet_v6",
    "b_object_eager_state_v7",
    "b2_object_lazy_state_suspend_v6",
    "d1_run_propose_v7",
    "g2_workflow_promise_resume_v6",
    "s_run_retry_replayed_rc2_v6",
    "unknown_handler",
    "j3_bidi_run_ack_v7",  # HTTP/2, the tool answering the SDK's proposal with an ack
]
# a timestamp (wake_up_time) or a stack trace differs from one capture to the next
VOLATILE = ["c1_sleep_suspend_v6", "f_retryable_error_v7", "s_run_retry_rc0_v6", "j1_bidi_sleep_v6"]
INVOCATIONS = DETERMINISTIC + VOLATILE
OTHERS = ["discovery_http1", "manifest_h2c", "k_request_identity"]


def _committed(name: str) -> dict:
    return json.loads(vector_path(f"{name}.json").read_text())


def _run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sgtools.vectors", *args], cwd=REPO_ROOT, check=False,
                          capture_output=True, text=True, timeout=CAPTURE_TIMEOUT_S)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the tool captured INVOCATIONS + OTHERS into."""
    out = tmp_path_factory.mktemp("vectors")
    done = _run_tool("--out", str(out), "--source", str(VECTORS_DIR), "--only", *INVOCATIONS, *OTHERS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"captured {len(INVOCATIONS) + len(OTHERS)} vectors" in done.stdout
    return out


def _fresh(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def _types(hex_body: str) -> list[int]:
    return [f.type for f in decode_frames(bytes.fromhex(hex_body))]


@pytest.mark.parametrize("name", INVOCATIONS)
def test_fresh_response_has_the_committed_message_types(fresh: Path, name: str) -> None:
    old, new = _committed(name), _fresh(fresh, name)
    assert new["response_status"] == old["response_status"]
    assert _types(new["response_hex"]) == _types(old["response_hex"])
    assert _types(new["request_hex"]) == _types(old["request_hex"])
    assert [f["name"] for f in new["decoded_response"] or []] == [f["name"] for f in old["decoded_response"] or []]
    assert list(new) == list(old)  # same fields, same order


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_vector_is_captured_identically(fresh: Path, name: str) -> None:
    assert _fresh(fresh, name) == _committed(name)


def test_bidi_sleep_runtime_writes_what_the_capture_recorded(fresh: Path) -> None:
    """The tool's own reply (SleepCompletion right after the SleepCommand) is the recorded one."""
    assert _fresh(fresh, "j1_bidi_sleep_v6")["request_hex"] == _committed("j1_bidi_sleep_v6")["request_hex"]


def test_discovery_and_manifest_are_unchanged(fresh: Path) -> None:
    assert _fresh(fresh, "discovery_http1")["response_json"] == _committed("discovery_http1")["response_json"]
    assert _fresh(fresh, "manifest_h2c") == _committed("manifest_h2c")


def test_identity_variants_get_the_committed_statuses(fresh: Path) -> None:
    old, new = _committed("k_request_identity"), _fresh(fresh, "k_request_identity")
    assert new["results_http_status"] == old["results_http_status"]
    assert (new["response_status"], new["response_hex"]) == (old["response_status"], old["response_hex"])


def test_unknown_vector_name_fails_with_one_line(tmp_path: Path) -> None:
    done = _run_tool("--out", str(tmp_path), "--only", "no_such_vector")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["vectors: not in " + str(VECTORS_DIR) + ": no_such_vector"]
    assert list(tmp_path.iterdir()) == []
