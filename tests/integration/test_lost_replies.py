"""Fault injection: the reply of a transition script is lost after Redis ran it, or the script
never reaches Redis.

A worker's partition service runs in-process against a real Redis and a real restate-sdk
deployment. The Redis client (or the scripts' shared pipeline, the path of
a standalone server) runs every script for real, then, for the k-th call of one
transition script, throws the reply away (a connection error, as after a socket timeout during
an fsync stall or a Redis restart) or raises CancelledError (an RPC cancelled right after its
script was sent). Whatever was lost, within 10 s every call is answered (by its own RPC or by an
attach), every id in the active set has a driver here, no key lock is held by an invocation
nobody drives, every `Counter/add` ran exactly once, and a call from one invocation to another
(through the outbox) got its answer.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError

from partition import keys
from partition.invocation import Status
from partition.invoker import Invoker
from partition.scripts import Scripts
from partition.service import PartitionService
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate.redispipe import ScriptPipeline
from shardgate.schema import Deployment, HandlerMeta, HandlerType, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import idempotent_invocation_id, partition_of
from tests.deployments import serve_sdk_app
from tests.integration.conftest import lease_token
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter

pytestmark = pytest.mark.timeout(60)

P = 8  # partitions
DEADLINE_S = 10.0
RETENTION_MS = 60_000


class InjectedCancel(asyncio.CancelledError):
    """The cancellation this test injects (told apart from a real one, which must propagate)."""


class LossyRedis(Redis):
    """Runs every command; drops the reply of the k-th call of the chosen scripts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names: dict[str, str] = {}  # script sha -> transition name
        self.drop: dict[str, int] = {}  # transition name -> which call loses its reply (1-based)
        self.refuse: dict[str, int] = {}  # transition name -> which call never reaches Redis (1-based)
        self.lose_with: type[BaseException] = RedisConnectionError
        self.calls: Tally[str] = Tally()  # replies, per transition
        self.tries: Tally[str] = Tally()  # calls sent, per transition
        self.lost: list[str] = []

    async def injected(self, sha: str, send: Callable[[], Awaitable[Any]]) -> Any:
        """`send()` the script call `sha`, losing it or its reply as chosen."""
        name = self.names.get(sha)
        if name is not None:
            self.tries[name] += 1
            if self.refuse.get(name) == self.tries[name]:
                self.lost.append(name)
                raise RedisConnectionError(f"Redis unreachable for {name} (injected)")
        reply = await send()
        if name is not None:
            self.calls[name] += 1
            if self.drop.get(name) == self.calls[name]:
                self.lost.append(name)
                raise self.lose_with(f"reply of {name} lost (injected)")
        return reply

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        return await self.injected(sha, lambda: super(LossyRedis, self).evalsha(sha, numkeys, *keys_and_args))


class LossyPipeline(ScriptPipeline):
    """The scripts' shared pipeline (the path of a standalone server), with LossyRedis's faults."""

    def __init__(self, redis: LossyRedis) -> None:
        super().__init__(redis)
        self._lossy = redis

    async def evalsha(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self._lossy.injected(script.sha, lambda: super(LossyPipeline, self).evalsha(script, keys, args))


def _schema(uri: str, chain_uri: str, streaming: bool = False) -> SchemaSnapshot:
    dep = Deployment(id="dp_faults", uri=uri, protocol_mode="REQUEST_RESPONSE", min_protocol_version=5,
                     max_protocol_version=6)
    # streaming: the chain deployment as registered for h2c (hypercorn says BIDI_STREAM there)
    chain = Deployment(id="dp_chain", uri=chain_uri, protocol_mode="BIDI_STREAM" if streaming else "REQUEST_RESPONSE",
                       min_protocol_version=5, max_protocol_version=6, use_http_11=not streaming)
    durable = ServiceMeta(name="Durable", ty=ServiceType.SERVICE, deployment_id=chain.id,
                          handlers={"run_once": HandlerMeta(name="run_once", ty=None)})
    middle = ServiceMeta(name="Middle", ty=ServiceType.SERVICE, deployment_id=chain.id,
                         handlers={"step": HandlerMeta(name="step", ty=None)})
    leaf = ServiceMeta(name="Leaf", ty=ServiceType.SERVICE, deployment_id=chain.id,
                       handlers={"double": HandlerMeta(name="double", ty=None)})
    greeter = ServiceMeta(name="Greeter", ty=ServiceType.SERVICE, deployment_id=dep.id,
                          handlers={h: HandlerMeta(name=h, ty=None) for h in ("greet", "sleepy")})
    counter = ServiceMeta(name="Counter", ty=ServiceType.VIRTUAL_OBJECT, deployment_id=dep.id,
                          handlers={"add": HandlerMeta(name="add", ty=HandlerType.EXCLUSIVE),
                                    "get": HandlerMeta(name="get", ty=HandlerType.SHARED)})
    return SchemaSnapshot(version=1, services={"Greeter": greeter, "Counter": counter, "Middle": middle,
                                               "Leaf": leaf, "Durable": durable},
                          deployments={dep.id: dep, chain.id: chain})


def _request(service: str, key: str | None, handler: str, body: bytes, idem: str) -> pb.InvokeRequest:
    inv = idempotent_invocation_id(service, key, handler, idem)
    kind = pb.HANDLER_KIND_SERVICE if key is None else pb.HANDLER_KIND_EXCLUSIVE
    req = pb.InvokeRequest(partition=partition_of(inv.partition_key, P), invocation_id=str(inv), service=service,
                           handler=handler, body=body, kind=kind, idempotency_key=idem,
                           completion_retention_ms=RETENTION_MS, wait=True)
    if key is not None:
        req.key = key
    return req


class Worker:
    """The partition service of one worker owning every partition, over a lossy client; its
    scripts go through the shared pipeline as on a standalone server, or (`pipelined` False)
    through redis-py's commands as on a cluster or with replica acknowledgements."""

    def __init__(self, redis: LossyRedis, uri: str, chain_uri: str, pipelined: bool = True,
                 streaming: bool = False) -> None:
        self.redis = redis
        self.scripts = Scripts(redis)
        self.scripts.pipeline = LossyPipeline(redis) if pipelined else None
        redis.names = {script.sha: name for name, script in self.scripts._scripts.items()}
        self.invoker = Invoker(connect_timeout_s=5.0)
        schema = _schema(uri, chain_uri, streaming)
        self.service = PartitionService(redis, self.scripts, self.invoker, lambda: schema, P, 16)
        if streaming:
            self.service.stream_attempts("always")

    async def start(self) -> None:
        await self.invoker.start()
        for p in range(P):
            self.service.on_acquired(p, await lease_token(self.scripts, p, ttl_ms=120_000))

    async def stop(self) -> None:
        await self.service.shutdown()
        await self.invoker.close()

    async def answer(self, req: pb.InvokeRequest) -> pb.Result:
        """The call's own answer, or (when its RPC failed) what an attach to it answers."""
        try:
            return (await self.service.invoke(req)).result
        except (RedisConnectionError, InjectedCancel):
            ref = pb.InvocationRef(partition=req.partition, invocation_id=req.invocation_id)
            return (await self.service.attach(ref)).result

    async def undriven(self) -> list[str]:
        """Active ids without a driver here, and key locks held by an invocation nobody drives."""
        bad: list[str] = []
        for p in range(P):
            leader = self.service.leader(p)
            for inv_id in await self.scripts.active_ids(p):
                if not leader.driving(inv_id):
                    bad.append(f"active without a driver: {inv_id}")
            async for lock in self.redis.scan_iter(match=keys.lock(p, "*", "*")):
                holder = (await self.redis.get(lock) or b"").decode()
                stored = await self.scripts.result_of(p, holder)
                if stored is None or stored.status is Status.COMPLETED:
                    bad.append(f"{lock!r} held by {holder} ({stored and stored.status})")
                elif stored.status is Status.INVOKED and not leader.driving(holder):
                    bad.append(f"{lock!r} held by undriven {holder}")
        return bad


@pytest.fixture(scope="module")
def counter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("counters")


@pytest.fixture(scope="module")
def chain_deployment(tmp_path_factory: pytest.TempPathFactory, counter_dir: Path) -> Iterator[str]:
    """Middle/step calls Leaf/double: a call between two invocations, through the outbox;
    Durable/run_once counts its ctx.run's real executions in `counter_dir`."""
    with serve_sdk_app("tests.services.durable_service:app", tmp_path_factory.mktemp("chain") / "sdk.log",
                       env={COUNTER_DIR_ENV: str(counter_dir)}) as url:
        yield url


@pytest.fixture
async def lossy(redis_url: str) -> AsyncIterator[LossyRedis]:
    client = LossyRedis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


async def _run_workload(worker: Worker, tag: str) -> None:
    adds = [_request("Counter", f"k-{tag}", "add", b"1", f"{tag}-add-{i}") for i in range(6)]
    greets = [_request("Greeter", None, "greet", b'"Ann"', f"{tag}-greet-{i}") for i in range(4)]
    sleeps = [_request("Greeter", None, "sleepy", b"1", f"{tag}-sleep-{i}") for i in range(2)]
    steps = [_request("Middle", None, "step", str(i).encode(), f"{tag}-step-{i}") for i in range(2)]
    async with asyncio.timeout(DEADLINE_S):
        results = await asyncio.gather(*(worker.answer(r) for r in adds + greets + sleeps + steps))
        while bad := await worker.undriven():
            await asyncio.sleep(0.05)
    assert not bad
    add_results = sorted(int(r.value) for r in results[:6])
    assert add_results == [1, 2, 3, 4, 5, 6], "every add ran exactly once, in some order"
    assert [r.value for r in results[6:10]] == [b'"Hello, Ann!"'] * 4
    assert [r.value for r in results[10:12]] == [b'"slept 1s"'] * 2
    assert [r.value for r in results[12:]] == [b"1", b"3"]  # 2 * x + 1
    assert all(r.failure_code == 0 for r in results)


# (script, k): the k-th call of each transition loses its reply. The workload makes 16 accepts
# (2 of them children delivered from an outbox), about 20 applies (suspensions included), 4
# notifies (the sleeps' timers, the children's results), 4 attempt_starts and outbox acks.
FAULTS = [("accept", 1), ("accept", 7), ("accept", 16), ("apply", 1), ("apply", 8), ("apply", 14),
          ("attempt_start", 1), ("attempt_start", 3), ("notify", 1), ("notify", 3), ("outbox_ack", 1),
          ("outbox_ack", 2)]


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "plain"])
@pytest.mark.parametrize(("script", "k"), FAULTS)
async def test_a_lost_reply_leaves_nothing_undriven_or_unanswered(lossy: LossyRedis, sdk_deployment: str,
                                                                  chain_deployment: str, script: str,
                                                                  k: int, pipelined: bool) -> None:
    worker = Worker(lossy, sdk_deployment, chain_deployment, pipelined)
    await worker.start()
    lossy.drop = {script: k}
    try:
        await _run_workload(worker, f"{script}-{k}")
    finally:
        await worker.stop()
    assert lossy.lost == [script], f"the fault was injected ({dict(lossy.calls)})"


@pytest.mark.parametrize("k", [1, 4])
async def test_an_invoke_cancelled_right_after_its_accept_ran_is_still_driven(lossy: LossyRedis,
                                                                               sdk_deployment: str,
                                                                               chain_deployment: str,
                                                                               k: int) -> None:
    worker = Worker(lossy, sdk_deployment, chain_deployment)
    await worker.start()
    lossy.drop, lossy.lose_with = {"accept": k}, InjectedCancel
    try:
        await _run_workload(worker, f"cancel-{k}")
    finally:
        await worker.stop()
    assert lossy.lost == ["accept"]


# Durable/run_once: its first attempt runs the ctx.run and suspends on the proposed result, whose
# apply resumes at once (the SUSPEND that stays invoked); the second attempt replays it, sleeps and
# suspends; the timer's notify wakes it, and the third attempt ends (END).
@pytest.mark.parametrize(("mode", "k"), [("refuse", 1), ("refuse", 2), ("refuse", 3), ("drop", 1), ("drop", 2),
                                         ("drop", 3)])
async def test_an_apply_redis_did_not_answer_keeps_the_proposed_run_result(
        lossy: LossyRedis, sdk_deployment: str, chain_deployment: str, counter_dir: Path, mode: str, k: int) -> None:
    """The driver retries the apply until Redis answers: the ctx.run ran once, also when the apply
    ran but its reply was lost (the retry is refused by the status check or the apply's nonce)."""
    await _run_once_losing(Worker(lossy, sdk_deployment, chain_deployment), lossy, counter_dir,
                           f"apply-{mode}-{k}", mode, "apply", k)


async def _run_once_losing(worker: Worker, lossy: LossyRedis, counter_dir: Path, name: str, mode: str,
                           script: str, k: int) -> None:
    """Durable/run_once on `worker` with the k-th call of `script` refused (`mode` "refuse") or
    its reply dropped ("drop"): the fault was injected, the call answered the run's count and
    the closure ran exactly once."""
    await worker.start()
    if mode == "refuse":
        lossy.refuse = {script: k}
    else:
        lossy.drop = {script: k}
    try:
        req = _request("Durable", None, "run_once", json.dumps(name).encode(), f"once-{name}")
        async with asyncio.timeout(DEADLINE_S):
            result = await worker.answer(req)
    finally:
        await worker.stop()
    assert lossy.lost == [script], f"the fault was injected ({dict(lossy.calls)})"
    assert (result.failure_code, result.value) == (0, b"1"), "the run's journaled count"
    assert read_counter(name, counter_dir) == 1, "the ctx.run closure ran exactly once"


@pytest.mark.parametrize(("mode", "script"), [("refuse", "append"), ("drop", "append"), ("drop", "apply")])
async def test_a_streamed_run_result_is_stored_once_whatever_reply_is_lost(
        lossy: LossyRedis, sdk_deployment: str, chain_deployment: str, counter_dir: Path, mode: str,
        script: str) -> None:
    """Durable/run_once in bidirectional attempts: the run's proposal is stored by an append while
    the stream stays open (then the SDK's short sleep is waited for on the stream). An append
    that never reached Redis is sent again; one whose reply was lost is sent again and found
    stored (DUP): the closure ran once, one RunCompletion in the journal."""
    await _run_once_losing(Worker(lossy, sdk_deployment, chain_deployment, streaming=True), lossy, counter_dir,
                           f"stream-{mode}-{script}", mode, script, 1)
    assert lossy.calls["append"] >= 1, "the run's result was stored by an append"


class HeldLeases:
    """The worker's lease check (`Driver.leases`) after a freeze: the leases ran out by its clock
    until the test lets a renewal confirm them."""

    def __init__(self) -> None:
        self.confirmed = asyncio.Event()
        self.asked: list[int] = []

    def lease_valid(self, partition: int) -> bool:
        return self.confirmed.is_set()

    async def confirm_lease(self, partition: int) -> bool:
        self.asked.append(partition)
        await self.confirmed.wait()
        return True


async def test_no_attempt_is_sent_until_a_run_out_lease_is_confirmed(
        lossy: LossyRedis, sdk_deployment: str, chain_deployment: str, counter_dir: Path) -> None:
    worker = Worker(lossy, sdk_deployment, chain_deployment)
    leases = HeldLeases()
    worker.service.check_leases(leases)
    await worker.start()
    name = "lease-held"
    req = _request("Durable", None, "run_once", json.dumps(name).encode(), f"once-{name}")
    try:
        call = asyncio.ensure_future(worker.answer(req))
        async with asyncio.timeout(DEADLINE_S):
            while not leases.asked:
                await asyncio.sleep(0.01)
        assert read_counter(name, counter_dir) == 0 and not call.done(), "nothing reached the deployment"
        leases.confirmed.set()
        async with asyncio.timeout(DEADLINE_S):
            result = await call
    finally:
        await worker.stop()
    assert (result.failure_code, result.value) == (0, b"1")
    assert leases.asked == [req.partition]


async def test_a_stopped_driver_that_outlives_its_cancel_is_not_joined_by_a_second_run(
        lossy: LossyRedis, sdk_deployment: str, chain_deployment: str) -> None:
    """A lost cancellation (redis-py swallows about one in five) must not leave a zombie driver
    beside a new run of the same invocation: kill / pause stop a driver, and a resume waits until
    the stopped one really ended (it is cancelled again until then)."""
    worker = Worker(lossy, sdk_deployment, chain_deployment)
    await worker.start()
    leader = worker.service.leader(0)
    resumed: list[str] = []
    cancels = 0

    async def zombie() -> None:  # swallows its first cancellation, as redis-py can
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise

    async def resume_one(inv_id: str, *_: Any) -> None:
        resumed.append(inv_id)

    leader._resume_one = resume_one  # type: ignore[method-assign]  # observe, do not attempt
    try:
        task = asyncio.ensure_future(zombie())
        await asyncio.sleep(0)  # it runs (a driver inside a Redis command)
        leader._drivers["inv_z"] = task
        leader._stop_driver("inv_z")  # a pause
        leader.resume("inv_z")  # then a resume, while the stopped driver still runs
        await asyncio.sleep(0)
        assert resumed == [] and not task.done(), "no second run beside the zombie"
        async with asyncio.timeout(DEADLINE_S):
            while not resumed:
                await asyncio.sleep(0.01)
        assert task.cancelled() and cancels == 2 and resumed == ["inv_z"]
    finally:
        await worker.stop()
