"""Where the test data that several test modules read lives: the captured protocol vectors.

The vectors are part of the project (`tests/data/vectors/`, see its README for what they are and
how `make vectors` re-captures them), so the suite needs nothing outside the checkout.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
VECTORS_DIR = DATA_DIR / "vectors"


def vector_path(name: str) -> Path:
    """A vector file by name; raises RuntimeError (failing the importing test module) if it is missing."""
    path = VECTORS_DIR / name
    if not path.is_file():
        raise RuntimeError(f"missing {path}: the project's copy of the protocol vectors is incomplete")
    return path
