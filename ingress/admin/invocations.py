"""Invocation lifecycle routes (Restate `rest_api/invocations.rs`): cancel, kill, purge,
purge-journal, pause and resume by id, and the deprecated `DELETE /invocations/{id}?mode=`.

Each command is one transition on the invocation's partition, reached through the ingress's
`Dispatcher`. Answers and texts are Restate 1.7's: empty bodies on success (cancel 200 when a
never-started invocation was removed, 202 when the cancel signal was appended; kill, purge and
resume 200; pause 202, or 200 when already paused; the deprecated DELETE 202), 400 for a malformed
id, 404 for an unknown one, 409 for a command the invocation's status does not allow, 425 for a
resume of a never-started invocation (as Restate). Kill or cancel of a never-started (scheduled, inboxed) invocation removes it.

`resume?deployment=keep|latest|<deployment id>` (`pinning.py`): a malformed or unknown deployment,
a running (invoked, backing-off) or unpinned invocation and an incompatible protocol version are
refused with Restate's texts; `keep` (the default), and `latest` for an unpinned invocation, resume
as before; any other re-pins in the resume transition itself (ManageRequest.deployment_id,
`resume.lua`).

`PATCH /invocations/{id}/restart-as-new` runs a completed invocation's input again under a new id
(200 `{"new_invocation_id"}`): the target, input and headers are read back from the retained
journal (its head is the input since completion) and sent as a new invocation through the
dispatcher, so the only write is the new invocation's accept on its own partition; the original
is left as it is. 409 while it runs, 425 when it never started, 410 when its journal (so its
input) was not retained or was purged, 422 for a workflow run (as Restate), 400 for a malformed
`deployment`. With `from` > 0 or a `deployment` other than `latest` (Restate's prefix restart and
pinning) the new invocation is made by one fenced transition on the original's partition instead
(Manage RESTART_AS_NEW, `restart.lua`): 422 when the original's pinned protocol is older than v6,
400 for a prefix command without its completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Gauge
from redis.exceptions import RedisError

from ingress.admin.context import ADMIN
from ingress.admin.pinning import (
    MIN_PROTOCOL_FROM_PREFIX,
    Patch,
    Pin,
    cannot_change,
    parse_patch,
    repin,
    restart_pin,
)
from ingress.dispatcher import (
    Command,
    CommandOutcome,
    Dispatcher,
    HandlerKind,
    InvocationRequest,
    RestartRequest,
)
from ingress.errors import (
    BadRequest,
    Conflict,
    Gone,
    IngressError,
    NotFound,
    RegistryUnavailable,
    TooEarly,
    UnprocessableEntity,
)
from ingress.handlers.status import STAGES
from sgproto.protocol.v1 import protocol_pb2 as ppb
from shardgate import protocol
from shardgate.schema import SchemaSnapshot, SettingDefaults, effective_settings
from shardgate.sharding import (
    InvocationId,
    InvocationIdError,
    new_invocation_id,
    partition_key_for_key,
    partition_key_for_service,
    partition_of,
)


@dataclass(frozen=True, slots=True)
class InvocationControl:
    """What the lifecycle routes need: the ingress's way to the partitions and their number (and
    how often the per-status gauge is recounted, `status_counts`)."""

    dispatcher: Dispatcher
    partitions: int
    status_count_interval_s: float = 15.0


INVOCATIONS = web.AppKey("shardgate_invocations", InvocationControl)

# (command, outcome) -> HTTP status of a success; every other pair is an error (`_refusal`).
_SUCCESS: dict[tuple[Command, CommandOutcome], int] = {
    (Command.CANCEL, CommandOutcome.DONE): 200,
    (Command.CANCEL, CommandOutcome.APPENDED): 202,
    (Command.KILL, CommandOutcome.DONE): 200,
    (Command.PURGE, CommandOutcome.DONE): 200,
    (Command.PURGE_JOURNAL, CommandOutcome.DONE): 200,
    (Command.PAUSE, CommandOutcome.DONE): 202,
    (Command.PAUSE, CommandOutcome.ALREADY): 200,
    (Command.RESUME, CommandOutcome.DONE): 200,
    (Command.RESUME, CommandOutcome.ALREADY): 200,
}
_DEPRECATED_MODES = {mode: command for command in (Command.CANCEL, Command.KILL, Command.PURGE)
                     for mode in (command.value.capitalize(), command.value)}


def _invocation_id(raw: str) -> InvocationId:
    """The id in the path. Raises 400 `BadRequest` with Restate's reason."""
    try:
        return InvocationId.parse(raw)
    except InvocationIdError as exc:
        raise BadRequest(f"The request field 'invocation_id' is invalid. Reason: {exc}") from None


def _refusal(inv: str, command: Command, outcome: CommandOutcome) -> IngressError:
    """The error for a command that did not apply (Restate's texts)."""
    if outcome is CommandOutcome.NOT_FOUND:
        return NotFound(f"The requested invocation '{inv}' does not exist")
    if outcome is CommandOutcome.NOT_COMPLETED:
        return Conflict(f"The invocation '{inv}' is not yet completed.")
    if command is Command.RESUME:
        if outcome is CommandOutcome.COMPLETED:
            return Conflict(f"The invocation '{inv}' is completed, cannot be resumed.")
        return TooEarly(f"The invocation '{inv}' is either inboxed or scheduled, cannot be resumed.")
    if command is Command.PAUSE:  # a completed one too
        return Conflict(f"The invocation '{inv}' is not running, cannot be paused.")
    if outcome is CommandOutcome.COMPLETED:
        return Conflict(f"The invocation '{inv}' was already completed.")
    return IngressError(f"unexpected answer {outcome.value} to {command.value} of invocation '{inv}'")


async def run_command(request: web.Request, command: Command) -> int:
    """Apply `command` to the invocation in the path; the HTTP status of its success. Raises the
    `IngressError` of a refusal (400, 404, 409) or `PartitionUnavailable` (503)."""
    control = request.app[INVOCATIONS]
    inv_id = _invocation_id(request.match_info["invocation_id"])
    inv = str(inv_id)
    outcome = await control.dispatcher.manage(inv, partition_of(inv_id.partition_key, control.partitions), command)
    status = _SUCCESS.get((command, outcome))
    if status is None:
        raise _refusal(inv, command, outcome)
    return status


# the status hash fields a resume with `deployment` reads (partition.invocation.HashField: status,
# service, pinned deployment, pinned protocol version)
PIN_FIELDS = ("st", "svc", "dp", "pv")
RUNNING = frozenset({"invoked", "backing-off"})  # Restate's `Invoked`: its deployment cannot change


async def _read_pin(request: web.Request, inv: str, partition: int) -> tuple[str | None, str, Pin | None]:
    """Status ('None': no such invocation), service and pin of an invocation (one HMGET)."""
    from ingress.admin.query.store import inv_key  # here: the query package imports this module

    try:
        status, service, dp, pv = cast("list[bytes | None]", await request.app[ADMIN].store.redis.hmget(
            inv_key(partition, inv), list(PIN_FIELDS)))
    except (RedisError, OSError) as e:
        log.warning("cannot read an invocation to resume: %s", e, extra={"invocation_id": inv})
        raise RegistryUnavailable("cannot read the invocation now. Retry later.") from None
    pin = None if dp is None else Pin(dp.decode(), int(pv or 0))
    return _text(status), (service or b"").decode(), pin


async def resume_invocation(request: web.Request) -> web.Response:
    """`PATCH /invocations/{id}/resume?deployment=keep|latest|<deployment id>`: 200 once resumed.
    Raises 400 (id, deployment), 404, 409, 425 (see `run_command`, `pinning.repin`)."""
    control = request.app[INVOCATIONS]
    inv_id = _invocation_id(request.match_info["invocation_id"])
    patch = parse_patch(request.query.get("deployment"), Patch.KEEP)
    if patch.patch is not Patch.KEEP:
        inv = str(inv_id)
        status, service, pin = await _read_pin(request, inv, partition_of(inv_id.partition_key, control.partitions))
        if status is None:
            raise _refusal(inv, Command.RESUME, CommandOutcome.NOT_FOUND)
        if status in NOT_STARTED:
            raise _refusal(inv, Command.RESUME, CommandOutcome.WRONG_STATE)
        if status == "completed":
            raise _refusal(inv, Command.RESUME, CommandOutcome.COMPLETED)
        if status in RUNNING:
            raise cannot_change(inv)
        snapshot = (await request.app[ADMIN].state()).snapshot
        deployment_id = repin(inv, service, pin, patch, snapshot)
        if deployment_id:
            p = partition_of(inv_id.partition_key, control.partitions)
            outcome = await control.dispatcher.manage(inv, p, Command.RESUME, deployment_id)
            if (Command.RESUME, outcome) not in _SUCCESS:
                raise _refusal(inv, Command.RESUME, outcome)
            return web.Response(status=_SUCCESS[(Command.RESUME, outcome)])
    return web.Response(status=await run_command(request, Command.RESUME))


def command_route(command: Command) -> Handler:
    """The `PATCH /invocations/{id}/<command>` handler."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=await run_command(request, command))

    return handle


async def delete_invocation(request: web.Request) -> web.Response:
    """Deprecated `DELETE /invocations/{id}?mode=Cancel|Kill|Purge` (or lower case; default cancel):
    202 once the command took effect. Raises 400 for an unknown mode."""
    mode = request.query.get("mode", Command.CANCEL.value)
    command = _DEPRECATED_MODES.get(mode)
    if command is None:
        variants = ", ".join(f"`{m}`" for m in _DEPRECATED_MODES)
        raise BadRequest(f"Failed to deserialize query string: mode: unknown variant `{mode}`, "
                         f"expected one of {variants}")
    await run_command(request, command)
    return web.Response(status=202)


# ---- restart-as-new ------------------------------------------------------------------------------

# the status hash fields read (partition.invocation.HashField: status, service, handler, key, kind,
# scope, limit key, pinned deployment and protocol; tests/integration/test_retention.py keeps them equal)
RESTART_FIELDS = ("st", "svc", "hdl", "key", "kind", "scp", "lk", "dp", "pv")
NOT_STARTED = frozenset({"scheduled", "inboxed"})


@dataclass(frozen=True, slots=True)
class Restartable:
    """What a restart-as-new reads back of a completed invocation."""

    service: str
    handler: str
    key: str | None
    kind: HandlerKind
    scope: str | None
    limit_key: str | None
    input_frame: bytes | None  # the retained journal's head (None: no journal kept)
    pin: Pin | None  # kept with the retained journal (docs/architecture.md decision 31)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


async def _read_restartable(request: web.Request, inv: str, partition: int) -> Restartable:
    """The invocation's target and retained input (one round trip). Raises 404 `NotFound`, 409
    `Conflict` while it runs, 425 `TooEarly` when it never started."""
    from ingress.admin.query.store import inv_key, journal_key  # here: the query package imports this module

    pipe = request.app[ADMIN].store.redis.pipeline(transaction=False)
    pipe.hmget(inv_key(partition, inv), list(RESTART_FIELDS))
    pipe.lindex(journal_key(partition, inv), 0)
    try:
        (status, service, handler, key, kind, scope, limit_key, dp, pv), head = await pipe.execute()
    except (RedisError, OSError) as e:
        log.warning("cannot read an invocation to restart: %s", e, extra={"invocation_id": inv})
        raise RegistryUnavailable("cannot read the invocation now. Retry later.") from None
    st = _text(status)
    if st is None or service is None or handler is None or kind is None:
        raise NotFound(f"The requested invocation '{inv}' does not exist")
    try:
        handler_kind = HandlerKind(kind.decode())
    except ValueError:
        raise Conflict(f"The invocation '{inv}' has a record this version cannot restart") from None
    if st in NOT_STARTED:
        raise TooEarly(f"The invocation '{inv}' cannot be restarted because it's not running yet, "
                       "meaning it might have been scheduled or inboxed.")
    if st != "completed":
        raise Conflict(f"The invocation '{inv}' is still running.")
    return Restartable(service.decode(), handler.decode(), _text(key), handler_kind, _text(scope),
                       _text(limit_key), head, None if dp is None else Pin(dp.decode(), int(pv or 0)))


def _input_of(inv: str, frame: bytes | None) -> ppb.InputCommandMessage:
    """The input command heading a retained journal. Raises 410 `Gone` when there is none."""
    try:
        decoded = protocol.decode_frames(frame)[0] if frame else None
        msg = protocol.parse_message(decoded) if decoded is not None else None
    except (protocol.ProtocolError, IndexError):
        msg = None
    if not isinstance(msg, ppb.InputCommandMessage):
        raise _input_gone(inv)
    return msg


def _input_gone(inv: str) -> Gone:
    return Gone(f"The invocation '{inv}' cannot be restarted because the input is not available. In order to "
                "restart an invocation, the journal must be available in order to read the input again. "
                "Journal can be retained after completion by enabling journal retention.")


def _restart_from(request: web.Request) -> int:
    """`from`: the last journal index copied (0: the input alone). Raises 400."""
    raw = request.query.get("from")
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"Failed to deserialize query string: from: invalid digit found in string: {raw}")
    return int(raw)


def _unsupported(inv: str) -> UnprocessableEntity:
    return UnprocessableEntity(f"Restarting the invocation '{inv}' is not supported. Restarting workflows is not "
                               "supported, and restarting invocations created using the old service protocol.")


def _restart_refusal(inv: str, outcome: CommandOutcome) -> IngressError:
    """The error for a restart-as-new the worker refused (Restate's texts)."""
    if outcome is CommandOutcome.NOT_FOUND:
        return NotFound(f"The requested invocation '{inv}' does not exist")
    if outcome is CommandOutcome.WRONG_STATE:
        return TooEarly(f"The invocation '{inv}' cannot be restarted because it's not running yet.")
    if outcome is CommandOutcome.NOT_COMPLETED:
        return Conflict(f"The invocation '{inv}' is still running.")
    if outcome is CommandOutcome.MISSING_INPUT:
        return _input_gone(inv)
    if outcome is CommandOutcome.UNSUPPORTED:
        return _unsupported(inv)
    if outcome is CommandOutcome.COPY_RANGE_INVALID:
        return BadRequest(f"The prefix of the journal '{inv}' up to 'from' (included) contains some Commands "
                          "without respective Completions.")
    return IngressError(f"unexpected answer {outcome.value} to restart-as-new of invocation '{inv}'")


def _restart_request(old: Restartable, msg: ppb.InputCommandMessage, partitions: int, snapshot: SchemaSnapshot,
                     defaults: SettingDefaults) -> InvocationRequest:
    """The new invocation: same target, input and headers, a fresh id, no idempotency key, the
    retention of a plain request to that handler now (Restate `compute_retention`)."""
    owner = old.scope or old.key
    pk = partition_key_for_key(owner) if owner is not None else partition_key_for_service(old.service, None)
    new_id = str(new_invocation_id(pk))
    meta = snapshot.services.get(old.service)
    settings = effective_settings(meta, meta.handlers.get(old.handler) if meta is not None else None, defaults)
    journal_ms = settings.journal_retention_ms
    return InvocationRequest(
        invocation_id=new_id, partition=partition_of(pk, partitions), service=old.service, handler=old.handler,
        key=old.key, kind=old.kind, body=msg.value.content, headers=tuple((h.key, h.value) for h in msg.headers),
        completion_retention_ms=journal_ms, journal_retention_ms=journal_ms, scope=old.scope,
        limit_key=old.limit_key,
    )


async def restart_as_new(request: web.Request) -> web.Response:
    """`PATCH /invocations/{id}/restart-as-new`: 200 `{"new_invocation_id"}`. Raises 400, 404, 409,
    410, 422, 425 (see the module docstring) or 503 `PartitionUnavailable`."""
    control = request.app[INVOCATIONS]
    inv_id = _invocation_id(request.match_info["invocation_id"])
    from_index = _restart_from(request)
    patch = parse_patch(request.query.get("deployment"), Patch.LATEST)
    inv = str(inv_id)
    partition = partition_of(inv_id.partition_key, control.partitions)
    old = await _read_restartable(request, inv, partition)
    if old.kind is HandlerKind.WORKFLOW:
        raise UnprocessableEntity(f"Restarting the invocation '{inv}' is not supported, because it is a workflow "
                                  "invocation.")
    msg = _input_of(inv, old.input_frame)
    admin = request.app[ADMIN]
    snapshot = (await admin.state()).snapshot
    req = _restart_request(old, msg, control.partitions, snapshot, admin.settings.defaults)
    if from_index == 0 and patch.patch is Patch.LATEST:  # the input alone, on the latest deployment
        receipt = await control.dispatcher.send(req)
        return web.json_response({"new_invocation_id": receipt.invocation_id or req.invocation_id})
    pin = old.pin
    if from_index > 0 and (pin is None or pin.protocol_version < MIN_PROTOCOL_FROM_PREFIX):
        raise _unsupported(inv)
    restart = RestartRequest(inv, partition, from_index, str(new_invocation_id(inv_id.partition_key)),
                             restart_pin(inv, old.service, pin, patch, snapshot), req.completion_retention_ms,
                             req.journal_retention_ms)
    outcome = await control.dispatcher.restart_as_new(restart)
    if outcome is not CommandOutcome.DONE:
        raise _restart_refusal(inv, outcome)
    return web.json_response({"new_invocation_id": restart.new_invocation_id})


# ---- invocations per status (a Prometheus gauge) -----------------------------------------------

log = logging.getLogger(__name__)

INVOCATIONS_BY_STATUS = Gauge(
    "shardgate_admin_invocations", "Invocations stored in the cluster by status (sys_invocation's names), "
    "recounted periodically by each admin node (the same value on every node).", ["status"])


async def count_statuses(control: InvocationControl, request_app: web.Application) -> dict[str, int]:
    """How many invocations of every partition are in each status (sys_invocation's names), read
    through the query package's index scan. Raises `redis.RedisError`."""
    from ingress.admin.query.store import (  # here: it imports us
        F_KEY,
        F_SERVICE,
        F_STATUS,
        InvocationFilter,
        QueryStore,
    )

    store = QueryStore(request_app[ADMIN].store.redis, control.partitions)
    rows = await store.invocations([F_STATUS, F_SERVICE, F_KEY], InvocationFilter(), None)
    counts = Counter(STAGES.get(raw.decode(), ("", raw.decode()))[1] for raw in rows.values[F_STATUS] if raw)
    return {shown: counts.get(shown, 0) for _, shown in STAGES.values()} | dict(counts)


async def _recount(control: InvocationControl, app: web.Application) -> None:
    while True:
        try:
            for status, n in (await count_statuses(control, app)).items():
                INVOCATIONS_BY_STATUS.labels(status).set(n)
        except RedisError as exc:
            log.warning("cannot count invocations by status: %s", exc)
        await asyncio.sleep(control.status_count_interval_s)


async def status_counts(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context of the admin app: keeps `INVOCATIONS_BY_STATUS` current while it runs."""
    task = asyncio.create_task(_recount(app[INVOCATIONS], app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def routes(prefix: str) -> list[web.RouteDef]:
    """The lifecycle routes under `prefix` ("" or "/v2" ...)."""
    base = f"{prefix}/invocations/{{invocation_id}}"
    found = [web.patch(f"{base}/{command.value}", command_route(command)) for command in Command
             if command is not Command.RESUME]
    found.append(web.patch(f"{base}/resume", resume_invocation))
    found.append(web.patch(f"{base}/restart-as-new", restart_as_new))
    found.append(web.delete(base, delete_invocation))
    return found
