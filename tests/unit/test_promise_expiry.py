"""The planner's side of promise expiry: a shared handler of a workflow that writes the key's
promises (completes one, or waits on one) adds one `PromiseExpiry` op naming the workflow run
and its retention, so promises written for a key whose run never existed do not live forever.
A peek writes nothing and adds none; the run itself adds none (its END expires them).
`tests/integration/test_scripts.py` checks what the op does in Redis."""

from __future__ import annotations

from partition.effects import DEFAULT_PROMISE_RETENTION_MS, PlanContext, plan_attempt
from partition.invocation import HandlerKind
from partition.transition import CompletePromise, GetPromise, PromiseExpiry
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.protocol import Frame
from shardgate.protocol import MessageType as T
from shardgate.schema import Deployment, HandlerMeta, HandlerType, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import workflow_invocation_id

PARTITIONS = 8
RETENTION_MS = 3_600_000


def _snapshot(run_retention_ms: int | None) -> SchemaSnapshot:
    run = HandlerMeta(name="run", ty=HandlerType.WORKFLOW, workflow_completion_retention_ms=run_retention_ms)
    approve = HandlerMeta(name="approve", ty=HandlerType.SHARED)
    signup = ServiceMeta(name="Signup", ty=ServiceType.WORKFLOW, deployment_id="dp_1",
                         handlers={"run": run, "approve": approve})
    dp = Deployment(id="dp_1", uri="http://sdk.invalid:9080/", protocol_mode="REQUEST_RESPONSE",
                    min_protocol_version=5, max_protocol_version=6)
    return SchemaSnapshot(version=1, services={"Signup": signup}, deployments={dp.id: dp})


def _ctx(kind: HandlerKind, snapshot: SchemaSnapshot, scope: str | None = None) -> PlanContext:
    return PlanContext(invocation_id="inv_1abc", partition=1, partitions=PARTITIONS, kind=kind, service="Signup",
                       key="k1", state={}, commands_before=1, now_ms=1_795_000_000_000, schema=snapshot,
                       scope=scope)


def _frames(*promise_msgs: tuple[int, object]) -> list[Frame]:
    out = [Frame(t, 0, msg.SerializeToString()) for t, msg in promise_msgs]  # type: ignore[attr-defined]
    out.append(Frame(T.OUTPUT_COMMAND, 0, pb.OutputCommandMessage(value=pb.Value(content=b"null"))
                     .SerializeToString()))
    out.append(Frame(T.END, 0, b""))
    return out


COMPLETE = (T.COMPLETE_PROMISE_COMMAND,
            pb.CompletePromiseCommandMessage(key="ok", result_completion_id=1,
                                             completion_value=pb.Value(content=b'"yes"')))
GET = (T.GET_PROMISE_COMMAND, pb.GetPromiseCommandMessage(key="ok", result_completion_id=2))
PEEK = (T.PEEK_PROMISE_COMMAND, pb.PeekPromiseCommandMessage(key="ok", result_completion_id=3))


def _expiries(plan_ops: list[object]) -> list[PromiseExpiry]:
    return [op for op in plan_ops if isinstance(op, PromiseExpiry)]


def test_a_shared_handler_completing_a_promise_adds_one_expiry_for_the_run() -> None:
    plan = plan_attempt(_frames(COMPLETE, GET), _ctx(HandlerKind.SHARED, _snapshot(RETENTION_MS)))
    assert [type(op) for op in plan.ops][-3:] == [CompletePromise, GetPromise, PromiseExpiry]
    assert _expiries(plan.ops) == [PromiseExpiry(str(workflow_invocation_id("Signup", "k1")), RETENTION_MS)]


def test_a_scoped_workflow_names_its_scoped_run() -> None:
    plan = plan_attempt(_frames(GET), _ctx(HandlerKind.SHARED, _snapshot(RETENTION_MS), scope="tenant1"))
    run_id = str(workflow_invocation_id("Signup", "k1", "tenant1"))
    assert run_id != str(workflow_invocation_id("Signup", "k1"))
    assert _expiries(plan.ops) == [PromiseExpiry(run_id, RETENTION_MS)]


def test_without_a_run_retention_the_default_applies() -> None:
    plan = plan_attempt(_frames(COMPLETE), _ctx(HandlerKind.SHARED, _snapshot(None)))
    assert [op.default_ms for op in _expiries(plan.ops)] == [DEFAULT_PROMISE_RETENTION_MS]


def test_a_peek_and_the_run_itself_add_no_expiry() -> None:
    assert _expiries(plan_attempt(_frames(PEEK), _ctx(HandlerKind.SHARED, _snapshot(RETENTION_MS))).ops) == []
    run_plan = plan_attempt(_frames(COMPLETE, GET), _ctx(HandlerKind.WORKFLOW, _snapshot(RETENTION_MS)))
    assert _expiries(run_plan.ops) == []
