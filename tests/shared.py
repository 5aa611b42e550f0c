"""Where the steering repository's `shared/` folder (spec, vectors, conformance) is.

It sits beside the repository checkout (`<checkout>/../shared`), in development and in CI;
`SHARDGATE_SHARED_DIR` overrides that. Tests that read it fail loudly when it is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DIR = Path(os.environ.get("SHARDGATE_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
VECTORS_DIR = SHARED_DIR / "spec" / "vectors"


def vector_path(name: str) -> Path:
    """A vector file by name; raises (failing the importing test module) if the copy is missing."""
    path = VECTORS_DIR / name
    if not path.is_file():
        raise RuntimeError(f"missing {path}; set SHARDGATE_SHARED_DIR to the shared/ folder")
    return path
