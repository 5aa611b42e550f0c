"""The real `restate` CLI 1.7.12 against a real cluster (`DevCluster`: Redis, 2 workers, the
ingress with its admin API) and a real restate-sdk deployment (Greeter, Counter, Signup).

The CLI is the prebuilt binary of the npm package `@restatedev/restate-linux-x64@1.7.12` (what
`@restatedev/restate` runs), fetched with `npm pack` into `.cache/tools/` on first use. Each test
runs one command, asserts what it prints and, for the commands that change something, what
changed (read back through the ingress or `/query`). Waits poll a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio

from sgtools.dev import ClusterSpec, DevCluster
from tests.clusters import poll, unique

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "tools"
CLI_VERSION = "1.7.12"
CLI_ARCH = {"x86_64": "x64", "aarch64": "arm64"}
PARTITIONS = 8
DEADLINE_S = 30.0
CLI_TIMEOUT_S = 60.0
UNKNOWN_ID = "inv_19qmpqSOYavs3m8NBJV7rgq0RAIyAAAAAA"
INSTALL_TIMEOUT_S = 300.0


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_restate_cli(cache_dir: Path = CACHE_DIR) -> Path:
    """The `restate` binary, fetched from npm on first use (under a lock, moved into place whole).
    Fails the test when npm or the platform package is unavailable."""
    arch = CLI_ARCH.get(platform.machine())
    if arch is None:
        pytest.fail(f"no restate CLI build for {platform.machine()}")
    target = cache_dir / f"restate-cli-{CLI_VERSION}" / "restate"
    if target.is_file():
        return target


    with _locked(cache_dir):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".restate-") as tmp:
            package = f"@restatedev/restate-linux-{arch}@{CLI_VERSION}"
            done = subprocess.run(["npm", "pack", "--silent", package, "--pack-destination", tmp], cwd=tmp,
                                  capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
            tarballs = list(Path(tmp).glob("*.tgz"))
            if done.returncode != 0 or len(tarballs) != 1:
                pytest.fail(f"npm pack {package} failed: {done.stderr.strip()}")
            with tarfile.open(tarballs[0]) as tar:
                tar.extract("package/bin/restate", tmp, filter="data")
            staged = Path(tmp) / "package" / "bin" / "restate"
            staged.chmod(0o755)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
    return target


@dataclass
class Cli:
    """Runs the CLI against one cluster and reads the cluster back."""

    binary: Path
    admin_url: str
    ingress_url: str
    config_home: Path
    http: aiohttp.ClientSession

    async def run(self, *args: str, env_extra: dict[str, str] | None = None) -> tuple[int, str]:
        """Exit code and stdout + stderr of `restate <args>` (with `env_extra` in its environment)."""
        env = {**os.environ, "RESTATE_ADMIN_URL": self.admin_url, "RESTATE_INGRESS_URL": self.ingress_url,
               "RESTATE_CLI_CONFIG_HOME": str(self.config_home), "CI": "1", "NO_COLOR": "1", "COLUMNS": "200",
               **(env_extra or {})}
        proc = await asyncio.create_subprocess_exec(str(self.binary), *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"restate {' '.join(args)} did not finish in {CLI_TIMEOUT_S} s")
        return proc.returncode or 0, out.decode(errors="replace")

    async def ok(self, *args: str, env_extra: dict[str, str] | None = None) -> str:
        code, out = await self.run(*args, env_extra=env_extra)
        assert code == 0, f"restate {' '.join(args)} exited {code}:\n{out}"
        return out

    async def ingress(self, path: str, body: Any = None, headers: dict[str, str] | None = None,
                      method: str = "POST") -> tuple[int, Any]:
        async with self.http.request(method, f"{self.ingress_url}{path}", json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            raw = await r.read()
            return r.status, json.loads(raw) if raw else None

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        async with self.http.post(f"{self.admin_url}/query", json={"query": sql},
                                  headers={"accept": "application/json"},
                                  timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            assert r.status == 200, await r.text()
            return list((await r.json())["rows"])

    async def status_of(self, inv_id: str) -> dict[str, Any] | None:
        found = await self.rows(f"SELECT status, completion_failure FROM sys_invocation WHERE id = '{inv_id}'")
        return found[0] if found else None

    async def wait_status(self, inv_id: str, status: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            row = await self.status_of(inv_id)
            return row if row is not None and row["status"] == status else None

        return await poll(f"{inv_id} to be {status}", DEADLINE_S, probe)

    async def state(self, service: str, key: str) -> dict[str, Any]:
        """The key's state as `/query` shows it, each value decoded as JSON."""
        rows = await self.rows(f"SELECT key, value FROM state WHERE service_name = '{service}' "
                               f"AND service_key = '{key}'")
        return {row["key"]: json.loads(bytes.fromhex(row["value"])) for row in rows}

    async def counter(self, value: int) -> str:
        """A new Counter key holding `value`; its name."""
        key = unique("st")
        status, body = await self.ingress(f"/Counter/{key}/add", value)
        assert (status, body) == (200, value)
        return key

    async def slow_send(self, seconds: int = 600) -> str:
        """A Greeter/slow send (a durable sleep), once it is suspended; its id."""
        status, body = await self.ingress("/Greeter/slow/send", seconds)
        assert status == 202, body
        inv_id = str(body["invocationId"])
        await self.wait_status(inv_id, "suspended")
        return inv_id


@pytest.fixture(scope="module")
def restate_binary() -> Path:
    return ensure_restate_cli()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cli(tmp_path_factory: pytest.TempPathFactory, sdk_deployment: str, restate_binary: Path) -> AsyncIterator[Cli]:
    base = tmp_path_factory.mktemp("cli")
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=base / "data",
                       start_timeout_s=45.0, log_level="INFO")
    async with aiohttp.ClientSession() as http, DevCluster(spec) as cluster:
        async with http.post(f"{cluster.admin_url}/deployments", json={"uri": sdk_deployment, "force": True},
                             timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            assert r.status in (200, 201), await r.text()
        c = Cli(restate_binary, cluster.admin_url, cluster.ingress_url, base / "config", http)

        async def ready() -> bool | None:
            status, _ = await c.ingress("/Greeter/greet", "probe")
            return True if status == 200 else None

        await poll("the ingress to serve the deployment", DEADLINE_S, ready)
        yield c


async def test_whoami_reports_a_healthy_admin_and_the_ingress(cli: Cli) -> None:
    out = await cli.ok("whoami")
    assert f"Admin Service '{cli.admin_url}/' is healthy!" in out
    assert f"{cli.ingress_url}/" in out


async def test_deployments_list_and_describe(cli: Cli) -> None:
    deployments = await cli.rows("SELECT id, endpoint FROM sys_deployment")
    assert len(deployments) == 1
    dep_id = deployments[0]["id"]
    listed = await cli.ok("deployments", "list")
    assert dep_id in listed and all(f"- {s} [1]" in listed for s in ("Greeter", "Counter", "Signup"))
    described = await cli.ok("deployments", "describe", dep_id)
    assert dep_id in described and "restate-sdk-python" in described and "Counter" in described


async def test_services_list_and_describe(cli: Cli) -> None:
    listed = await cli.ok("services", "list")
    assert "virtual object" in listed and "workflow" in listed and "Greeter" in listed
    described = await cli.ok("services", "describe", "Counter")
    assert "VirtualObject" in described and "slow_add" in described and "JSON integer" in described


async def test_services_status_counts_a_suspended_invocation(cli: Cli) -> None:
    inv_id = await cli.slow_send()
    out = await cli.ok("services", "status", "Greeter")
    slow_line = next(line for line in out.splitlines() if line.strip().startswith("slow "))
    # PENDING SCHEDULED READY RUNNING BACKING-OFF SUSPENDED
    assert slow_line.split()[1:7] == ["-", "-", "-", "-", "-", "1"]
    assert inv_id in out  # under "Recent Invocations"
    await cli.ok("invocations", "kill", inv_id, "--yes")


async def test_invocations_list_shows_running_ones_and_all_with_all(cli: Cli) -> None:
    name = unique("list")
    status, _ = await cli.ingress("/Greeter/greet", name, headers={"idempotency-key": name})
    assert status == 200
    done = await cli.rows("SELECT id FROM sys_invocation WHERE target = 'Greeter/greet' AND status = 'completed'")
    assert done, "a call with an idempotency key is retained"
    inv_id = await cli.slow_send()
    listed = await cli.ok("invocations", "list")
    assert inv_id in listed and "Greeter/slow" in listed and "suspended" in listed
    assert not any(row["id"] in listed for row in done)
    everything = await cli.ok("invocations", "list", "--all")
    assert inv_id in everything and any(row["id"] in everything for row in done)
    assert "completed with success" in everything
    await cli.ok("invocations", "kill", inv_id, "--yes")


async def test_invocations_describe_shows_the_journal(cli: Cli) -> None:
    inv_id = await cli.slow_send()
    out = await cli.ok("invocations", "describe", inv_id)
    assert "Greeter/slow" in out and "suspended" in out
    assert "#0 Command: Input" in out and "#1 Command: Sleep" in out
    await cli.ok("invocations", "kill", inv_id, "--yes")


async def test_a_completed_invocation_keeps_its_journal_until_purge_journal(cli: Cli) -> None:
    """Journal retention: a killed (so completed) invocation's journal is still described, with
    its input first, until `purge-journal` drops it."""
    inv_id = await cli.slow_send()
    await cli.ok("invocations", "kill", inv_id, "--yes")
    await cli.wait_status(inv_id, "completed")
    out = await cli.ok("invocations", "describe", inv_id)
    assert "completed" in out and "#0 Command: Input" in out and "#1 Command: Sleep" in out
    sql = f"SELECT index, entry_type FROM sys_journal WHERE id = '{inv_id}' ORDER BY index"
    assert [r["entry_type"] for r in await cli.rows(sql)] == ["Command: Input", "Command: Sleep"]
    async with cli.http.patch(f"{cli.admin_url}/invocations/{inv_id}/purge-journal",
                              timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
        assert r.status == 200, await r.text()
    assert await cli.rows(sql) == []
    assert (await cli.status_of(inv_id) or {}).get("status") == "completed"  # only the journal went


async def test_invocations_cancel_by_id_cancels_it(cli: Cli) -> None:
    inv_id = await cli.slow_send()
    out = await cli.ok("invocations", "cancel", inv_id, "--yes")
    assert "Cancelled 1 invocations" in out
    row = await cli.wait_status(inv_id, "completed")
    assert row["completion_failure"] == "[409] cancelled"
    status, body = await cli.ingress(f"/restate/invocation/{inv_id}/output", method="GET")
    assert (status, body["message"]) == (409, "cancelled")


async def test_invocations_kill_by_target_kills_every_running_one(cli: Cli) -> None:
    first, second = await cli.slow_send(), await cli.slow_send()
    out = await cli.ok("invocations", "kill", "Greeter/slow", "--yes")
    assert "Killed 2 invocations" in out and first in out and second in out
    for inv_id in (first, second):
        assert (await cli.wait_status(inv_id, "completed"))["completion_failure"] == "[409] killed"


async def test_invocations_purge_forgets_a_completed_one(cli: Cli) -> None:
    inv_id = await cli.slow_send()
    await cli.ok("invocations", "kill", inv_id, "--yes")
    await cli.wait_status(inv_id, "completed")
    code, out = await cli.run("invocations", "purge", inv_id, "--yes")
    assert code == 0 and "Purged 1 invocations" in out, out
    assert await cli.status_of(inv_id) is None
    status, _ = await cli.ingress(f"/restate/invocation/{inv_id}/output", method="GET")
    assert status == 404


async def test_state_get_prints_the_key_state(cli: Cli) -> None:
    key = unique("k")
    status, body = await cli.ingress(f"/Counter/{key}/add", 5)
    assert (status, body) == (200, 5)
    out = await cli.ok("state", "get", "Counter", key)
    assert "count" in out and " 5" in out
    plain = await cli.ok("state", "get", "Counter", key, "--plain")
    assert json.loads(plain) == {"count": 5}


# ---- restart-as-new ---------------------------------------------------------------------------------


async def _restart(cli: Cli, inv_id: str, query: str = "") -> tuple[int, Any]:
    async with cli.http.patch(f"{cli.admin_url}/invocations/{inv_id}/restart-as-new{query}",
                              timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
        return r.status, await r.json() if r.content_length else None


async def _completed_greet(cli: Cli, name: str) -> str:
    status, body = await cli.ingress("/Greeter/greet/send", name)
    assert status == 202, body
    inv_id = str(body["invocationId"])
    await cli.wait_status(inv_id, "completed")
    return inv_id


async def test_restart_as_new_runs_the_input_again_under_a_new_id(cli: Cli) -> None:
    old = await _completed_greet(cli, "Ann")
    attaches = [asyncio.create_task(cli.ingress(f"/restate/invocation/{old}/attach", method="GET")) for _ in range(3)]
    status, body = await _restart(cli, old)
    assert status == 200, body
    new = body["new_invocation_id"]
    assert new != old and new.startswith("inv_")
    assert await cli.ingress(f"/restate/invocation/{new}/attach", method="GET") == (200, "Hello, Ann!")
    assert [await a for a in attaches] == [(200, "Hello, Ann!")] * 3  # the original is untouched
    rows = await cli.rows(f"SELECT id, target, status FROM sys_invocation WHERE id IN ('{old}', '{new}') ORDER BY id")
    assert sorted((r["id"], r["target"], r["status"]) for r in rows) == sorted(
        [(old, "Greeter/greet", "completed"), (new, "Greeter/greet", "completed")])


async def test_restart_as_new_refusals(cli: Cli) -> None:
    running = await cli.slow_send()
    assert (await _restart(cli, running))[0] == 409
    status, body = await cli.ingress("/Greeter/greet/send?delay=10m", "later")
    assert status == 202, body
    assert (await _restart(cli, str(body["invocationId"])))[0] == 425
    assert (await _restart(cli, "inv_1nope"))[0] == 400
    assert (await _restart(cli, UNKNOWN_ID))[0] == 404
    done = await _completed_greet(cli, "Bo")
    status, body = await _restart(cli, done, "?from=2")  # past the journal (input, output): as the reference
    assert (status, body["message"]) == (400, (f"The prefix of the journal '{done}' up to 'from' (included) "
                                               "contains some Commands without respective Completions."))
    async with cli.http.patch(f"{cli.admin_url}/invocations/{done}/purge-journal",
                              timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
        assert r.status == 200
    status, body = await _restart(cli, done)
    assert status == 410 and "journal retention" in body["message"]
    key = unique("wf")
    status, body = await cli.ingress(f"/Signup/{key}/run/send", "a@b.c")
    assert status == 202, body
    assert (await cli.ingress(f"/Signup/{key}/confirm", "s3"))[0] == 200
    run = str(body["invocationId"])
    await cli.wait_status(run, "completed")
    status, body = await _restart(cli, run)
    assert status == 422 and "workflow" in body["message"]  # a workflow run is never restarted
    await cli.ok("invocations", "kill", running, "--yes")


# ---- state edit | patch | clear ----------------------------------------------------------------------

EDITOR = """#!{python}
# What `restate state edit` runs as $EDITOR: optionally changes the key first through the ingress
# (SG_BUMP_URL: the state the CLI read goes stale), then saves SG_NEW_STATE as the edited file.
import os, sys, urllib.request

bump = os.environ.get("SG_BUMP_URL")
if bump:
    req = urllib.request.Request(bump, data=b"1", headers={{"content-type": "application/json"}}, method="POST")
    urllib.request.urlopen(req, timeout=30).read()
with open(sys.argv[-1], "w") as f:
    f.write(os.environ["SG_NEW_STATE"])
"""


@pytest.fixture(scope="module")
def editor(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("editor") / "edit-state"
    path.write_text(EDITOR.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def _editing(editor: str, new_state: dict[str, Any], bump_url: str = "") -> dict[str, str]:
    return {"EDITOR": editor, "VISUAL": editor, "SG_NEW_STATE": json.dumps(new_state), "SG_BUMP_URL": bump_url}


async def test_state_edit_replaces_the_key_state(cli: Cli, editor: str) -> None:
    key = await cli.counter(5)
    await cli.ok("state", "edit", "Counter", key, "--yes", env_extra=_editing(editor, {"count": 42, "note": "x"}))
    assert await cli.state("Counter", key) == {"count": 42, "note": "x"}
    status, body = await cli.ingress(f"/Counter/{key}/add", 1)
    assert (status, body) == (200, 43)  # the handler reads the edited state


async def test_state_edit_with_a_stale_version_is_ignored(cli: Cli, editor: str) -> None:
    key = await cli.counter(5)
    bump = f"{cli.ingress_url}/Counter/{key}/add"  # 5 -> 6 while the CLI's editor is open
    await cli.ok("state", "edit", "Counter", key, "--yes", env_extra=_editing(editor, {"count": 42}, bump))
    assert await cli.state("Counter", key) == {"count": 6}


async def test_state_edit_of_a_locked_key_waits_behind_the_running_invocation(cli: Cli, editor: str) -> None:
    key = await cli.counter(5)
    status, body = await cli.ingress(f"/Counter/{key}/slow_add/send", 0)  # holds the key ~5 s, leaves 5
    assert status == 202, body
    await cli.wait_status(str(body["invocationId"]), "suspended")
    await cli.ok("state", "edit", "Counter", key, "--yes", env_extra=_editing(editor, {"count": 42}))
    assert await cli.state("Counter", key) == {"count": 5}  # queued behind the lock
    status, body = await cli.ingress(f"/Counter/{key}/add", 1)  # queued behind the edit
    assert (status, body) == (200, 43)


async def test_state_patch_and_clear(cli: Cli) -> None:
    key = await cli.counter(5)
    patch = json.dumps([{"op": "replace", "path": "/count", "value": 9}, {"op": "add", "path": "/extra", "value": [1]}])
    await cli.ok("state", "patch", "Counter", key, "--patch", patch, "--yes")
    assert await cli.state("Counter", key) == {"count": 9, "extra": [1]}
    await cli.ok("state", "clear", f"Counter/{key}", "--yes")
    assert await cli.state("Counter", key) == {}
    status, body = await cli.ingress(f"/Counter/{key}/add", 1)
    assert (status, body) == (200, 1)


async def test_rules_set_list_disable_enable_and_delete(cli: Cli) -> None:
    """`restate rules ...` drives the rule book through `PUT /limits/rules` with its typed
    preconditions (`does_not_exist`, `matches` + version) and `sys_rules`."""
    pattern = f"{unique('tenant')}/*"

    async def stored() -> dict[str, Any]:
        async with cli.http.get(f"{cli.admin_url}/limits/rules/{pattern}",
                                timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            assert r.status == 200, await r.text()
            return cast(dict[str, Any], await r.json())

    out = await cli.ok("rules", "set", pattern, "--concurrency", "3", "--description", "three at once", "--yes")
    assert f"Created rule '{pattern}' (version v1)" in out, out
    rule = await stored()
    assert (rule["limits"], rule["description"], rule["disabled"], rule["version"]) == (
        {"concurrency": 3}, "three at once", False, 1)
    listed = await cli.ok("rules", "list")
    assert re.search(rf"{re.escape(pattern)}\s+3\s+no", listed), listed
    code, out = await cli.run("rules", "set", pattern, "--concurrency", "4", "--yes")
    assert code == 0 and "version v2" in out, out
    await cli.ok("rules", "disable", pattern, "--yes")
    assert (await stored())["disabled"] is True
    await cli.ok("rules", "enable", pattern, "--yes")
    await cli.ok("rules", "set", pattern, "--unlimited", "--yes")
    rule = await stored()
    assert (rule["limits"], rule["disabled"], rule["version"]) == ({}, False, 5), rule
    assert re.search(rf"{re.escape(pattern)}\s+unlimited\s+no", await cli.ok("rules", "list"))
    await cli.ok("rules", "delete", pattern, "--yes")
    assert pattern not in await cli.ok("rules", "list")


async def test_the_state_route_refuses_unkeyed_services_and_bad_bodies(cli: Cli) -> None:
    async def post(path: str, body: Any) -> tuple[int, Any]:
        async with cli.http.post(f"{cli.admin_url}{path}", json=body,
                                 timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            return r.status, await r.json()

    status, body = await post("/services/Greeter/state", {"object_key": "k", "new_state": {}})
    assert (status, body["message"]) == (404, "The requested service 'Greeter' does not exist")
    status, body = await post("/v4/services/Counter/state", {"object_key": "k"})
    assert status == 422 and "missing field `new_state`" in body["message"]
    status, body = await post("/services/Counter/state", {"object_key": "k", "new_state": {"a": [256]}})
    assert status == 422 and "new_state.a" in body["message"]
    status, body = await post("/services/Counter/state", {"object_key": "k", "new_state": {}, "scope": "bad scope"})
    assert status == 400 and body["message"].startswith("bad scope value"), body


async def test_sql_in_table_and_json_output(cli: Cli) -> None:
    key = unique("sql")
    status, _ = await cli.ingress(f"/Counter/{key}/add", 3)
    assert status == 200
    sql = f"SELECT service_key, key, value_utf8 FROM state WHERE service_name = 'Counter' AND service_key = '{key}'"
    table = await cli.ok("sql", sql)
    assert key in table and "count" in table and "1 rows." in table
    as_json = await cli.ok("sql", "--json", sql)
    start, end = as_json.index("["), as_json.rindex("]") + 1
    assert json.loads(as_json[start:end]) == [{"service_key": key, "key": "count", "value_utf8": "3"}]
    code, out = await cli.run("sql", "SELEC 1")
    assert code != 0 and "Expected: an SQL statement" in out
