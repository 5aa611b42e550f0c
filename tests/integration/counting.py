"""Clients that count the scripts a test sends, so the count is the test's own and not the shared
server's (leftovers of other tests may also be talking to it)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from partition.scripts import Scripts
from shardgate.redispipe import ScriptPipeline


class CountingRedis(Redis):
    """Counts the scripts sent through redis-py's commands (EVALSHA / EVAL), by transition name
    once `names` (sha -> name) is filled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names: dict[str, str] = {}
        self.sent: Tally[str] = Tally()
        self.scripts_sent = 0

    def count(self, sha: str) -> None:
        self.scripts_sent += 1
        self.sent[self.names.get(sha, "?")] += 1

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args and str(args[0]).upper() in ("EVALSHA", "EVAL"):
            self.count(str(args[1]))
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class CountingPipeline(ScriptPipeline):
    """The scripts' shared pipeline (the path of a standalone server), counted on its client."""

    def __init__(self, redis: CountingRedis) -> None:
        super().__init__(redis)
        self._counting = redis

    async def evalsha(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        self._counting.count(script.sha)
        return await super().evalsha(script, keys, args)


def counted_scripts(redis: CountingRedis) -> Scripts:
    """The partition transitions over `redis`, every script they send counted by name."""
    scripts = Scripts(redis)
    assert scripts.pipeline is not None, "a standalone server: the scripts share a pipeline"
    scripts.pipeline = CountingPipeline(redis)
    redis.names = {script.sha: name for name, script in scripts._scripts.items()}
    return scripts
