"""The planner's side of the two behaviour fixes, fed with the restate-sdk 1.2.0 frames the
reference capture recorded (Restate 1.7.12, /tmp/reffacts/FACTS.md §1-§3).

* A Call / OneWayCall (delayed or not) to a service or handler the schema snapshot does not know
  rejects the attempt as a whole: an ERROR plan without ops or journal entries, `[500 Internal]
  cannot process command Command: <Call|OneWayCall> (command index N) because of a failed
  precondition: the service handler <svc>/<handler> was not found`, Restate code RT0018. The same
  frames against a snapshot that knows the target plan the call as before.
* A TerminalError's metadata (Failure field 3) survives the planner, the stored result field, the
  CallCompletion Lua builds from it for a calling parent (byte-identical to what Restate sent the
  caller), the partition RPC result, the ingress `Outcome` and the HTTP error body.
"""

from __future__ import annotations

import pytest

from ingress.dispatcher import Outcome
from ingress.grpc_dispatcher import _outcome
from ingress.handlers.responses import DEFAULT_OUTPUT_RULE, error_response, outcome_response
from partition.effects import AttemptPlan, PlanContext, plan_attempt
from partition.invocation import HandlerKind, Result, rpc_result
from partition.outbox_codec import decode_outbox
from partition.transition import JournalEntry, NotificationEntry, OutboxEntry, TerminalKind
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.protocol import Frame, decode_frames, encode_frame, encode_message
from shardgate.protocol import MessageType as T
from shardgate.schema import Deployment, HandlerMeta, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import InvocationId, child_invocation_id, partition_of

PARTITIONS = 8
NOW_MS = 1_795_000_000_000
CALLER = "inv_1jGLabrKc3MI7xE6AsC0y6wtaP6SlIhDCQ"  # the reference's Caller/send_to invocation

# The SDK's frames of the rejected attempts (FACTS §2 case 2a, §3 case 3a).
ONE_WAY_GHOST = "040e0000000000160a0547686f7374120568656c6c6f1a04223261225001"  # OneWayCall Ghost/hello '"2a"'
OUTPUT_SENT = "040100000000000a72080a062273656e7422"  # Output '"sent"'
END = "0003000000000000"
CALL_GHOST = "040d0000000000180a0547686f7374120568656c6c6f1a042233612250015802"  # Call Ghost/hello '"3a"'
SUSPEND_C2 = "00010000000000060a0102120101"  # Suspension: completion 2, signal 1
CALL_PARTIAL_ADDED = "040d00000000001a0a075061727469616c120561646465641a042233622250015802"  # Call Partial/added

# TerminalError("boom", 422, metadata={"k": "v"}): the callee's Output, and the CallCompletion
# (completion 2) Restate delivered to the calling handler (FACTS §1c).
OUTPUT_BOOM = "04010000000000137a1108a6031204626f6f6d1a060a016b120176"
COMPLETION_BOOM = "800d0000000000150802321108a6031204626f6f6d1a060a016b120176"
COMPLETION_BOOM_MULTI = "800d0000000000230802321f0899031204626f6f6d1a060a016b1201761a0c0a056f74686572120374776f"
COMPLETION_BOOM_NOMETA = "800d00000000000d0802320908a6031204626f6f6d"


def _service(name: str, *handlers: str) -> ServiceMeta:
    return ServiceMeta(name=name, ty=ServiceType.SERVICE, deployment_id="dp_first",
                       handlers={h: HandlerMeta(name=h, ty=None) for h in handlers})


DEPLOYMENT = Deployment(id="dp_first", uri="http://sdk.invalid:9080/", protocol_mode="REQUEST_RESPONSE",
                        min_protocol_version=5, max_protocol_version=6)
BEFORE = SchemaSnapshot(version=1, services={"Caller": _service("Caller", "send_to", "call_to"),
                                             "Partial": _service("Partial", "present")},
                        deployments={DEPLOYMENT.id: DEPLOYMENT})
AFTER = SchemaSnapshot(version=2, services={**BEFORE.services, "Ghost": _service("Ghost", "hello"),
                                            "Partial": _service("Partial", "present", "added")},
                       deployments=BEFORE.deployments)


def frames(*hex_frames: str) -> list[Frame]:
    return decode_frames(bytes.fromhex("".join(hex_frames)))


def context(schema: SchemaSnapshot, commands_before: int = 1, state: dict[bytes, bytes] | None = None) -> PlanContext:
    inv = InvocationId.parse(CALLER)
    return PlanContext(invocation_id=CALLER, partition=partition_of(inv.partition_key, PARTITIONS),
                       partitions=PARTITIONS, kind=HandlerKind.SERVICE, service="Caller", key=None,
                       state={} if state is None else state, commands_before=commands_before, now_ms=NOW_MS,
                       schema=schema)


def rejection(command: str, index: int, target: str) -> str:
    return (f"[500 Internal] cannot process command Command: {command} (command index {index}) "
            f"because of a failed precondition: the service handler {target} was not found")


def assert_rejected(plan: AttemptPlan, text: str) -> None:
    """Rejected as a whole: nothing stored, nothing sent, back off under the retry policy."""
    assert plan.terminal is TerminalKind.ERROR
    assert plan.failure_text == text
    assert (plan.error_code, plan.restate_code) == (500, "RT0018")
    assert plan.ops == [] and plan.entries == [] and not plan.grew
    assert (plan.outbox, plan.timers, plan.result) == (0, 0, None)
    assert plan.next_retry_delay_ms is None and plan.error_behavior == pb.ErrorMessage.RETRY


def one_way(service: str, handler: str, invoke_time_ms: int = 0) -> str:
    msg = pb.OneWayCallCommandMessage(service_name=service, handler_name=handler, parameter=b'"x"',
                                      invocation_id_notification_idx=1, invoke_time=invoke_time_ms)
    return encode_message(T.ONE_WAY_CALL_COMMAND, msg).hex()


# ---- unknown targets -------------------------------------------------------------------------------


def test_one_way_call_to_an_unregistered_service_rejects_the_attempt() -> None:
    plan = plan_attempt(frames(ONE_WAY_GHOST, OUTPUT_SENT, END), context(BEFORE))
    assert_rejected(plan, rejection("OneWayCall", 1, "Ghost/hello"))


def test_delayed_send_is_rejected_at_once() -> None:
    # the check is when the command is processed, not when the delay expires
    plan = plan_attempt(frames(one_way("Ghost", "hello", NOW_MS + 2000), OUTPUT_SENT, END), context(BEFORE))
    assert_rejected(plan, rejection("OneWayCall", 1, "Ghost/hello"))


def test_unknown_handler_of_a_registered_service_rejects_the_attempt() -> None:
    plan = plan_attempt(frames(one_way("Partial", "added"), OUTPUT_SENT, END), context(BEFORE))
    assert_rejected(plan, rejection("OneWayCall", 1, "Partial/added"))
    plan = plan_attempt(frames(CALL_PARTIAL_ADDED, SUSPEND_C2), context(BEFORE))
    assert_rejected(plan, rejection("Call", 1, "Partial/added"))


def test_call_to_an_unregistered_service_rejects_the_attempt_without_failing_the_call() -> None:
    # no CallCompletion failure reaches the caller: its catch never runs
    plan = plan_attempt(frames(CALL_GHOST, SUSPEND_C2), context(BEFORE))
    assert_rejected(plan, rejection("Call", 1, "Ghost/hello"))


def test_everything_before_the_rejected_command_is_dropped_too() -> None:
    state_write = encode_message(T.SET_STATE_COMMAND, pb.SetStateCommandMessage(key=b"k", value=pb.Value(content=b"1")))
    ok_send = one_way("Partial", "present")
    ctx = context(BEFORE, commands_before=3)
    ctx.kind = HandlerKind.EXCLUSIVE
    plan = plan_attempt(frames(ok_send, state_write.hex(), ONE_WAY_GHOST, OUTPUT_SENT, END), ctx)
    # commands 3 and 4 were fine, the fifth is rejected: none of them is stored or sent
    assert_rejected(plan, rejection("OneWayCall", 5, "Ghost/hello"))


@pytest.mark.parametrize("hex_frames", [
    (ONE_WAY_GHOST, OUTPUT_SENT, END),
    (one_way("Ghost", "hello", NOW_MS + 2000), OUTPUT_SENT, END),
])
def test_once_registered_the_one_way_call_goes_through(hex_frames: tuple[str, ...]) -> None:
    plan = plan_attempt(frames(*hex_frames), context(AFTER))
    assert plan.terminal is TerminalKind.END and plan.result == Result(0, "", b'"sent"')
    [op] = plan.ops  # the journal goes with the completion; the message does not
    assert isinstance(op, OutboxEntry)
    invoke = decode_outbox(op.message).invoke
    assert (invoke.service, invoke.handler) == ("Ghost", "hello")
    assert invoke.invocation_id == str(child_invocation_id(CALLER, 1, "Ghost", None, "hello"))
    assert not invoke.HasField("parent")


def test_once_registered_the_call_goes_through() -> None:
    plan = plan_attempt(frames(CALL_GHOST, SUSPEND_C2), context(AFTER))
    assert plan.terminal is TerminalKind.SUSPEND and plan.awaiting == " c2 s1 "
    [j, n, o] = plan.ops
    assert j == JournalEntry(bytes.fromhex(CALL_GHOST))
    assert isinstance(n, NotificationEntry) and n.key == "c1"
    assert isinstance(o, OutboxEntry)
    invoke = decode_outbox(o.message).invoke
    assert invoke.invocation_id == str(child_invocation_id(CALLER, 1, "Ghost", None, "hello"))
    assert invoke.parent == spb.Parent(invocation_id=CALLER, partition=context(AFTER).partition,
                                       result_completion_id=2)


def test_sdk_errors_keep_their_failure_text() -> None:
    error = encode_message(T.ERROR, pb.ErrorMessage(code=503, message="flaky"))
    plan = plan_attempt(decode_frames(error), context(BEFORE))
    assert plan.terminal is TerminalKind.ERROR and plan.failure_text == "[503] flaky"
    assert plan.restate_code == ""


# ---- TerminalError metadata ------------------------------------------------------------------------

BOOM = Result(422, "boom", metadata=(("k", "v"),))


def lua_completion(completion_id: int, result: Result) -> bytes:
    """What `_parents.lua` queues for a waiting parent: `completion_frame(CALL_COMPLETION, cid, res)`."""
    return encode_frame(T.CALL_COMPLETION, b"\x08" + bytes([completion_id]) + result.encode())


def test_the_callee_output_keeps_its_metadata() -> None:
    plan = plan_attempt(frames(OUTPUT_BOOM, END), context(BEFORE))
    assert plan.terminal is TerminalKind.END and plan.result == BOOM


@pytest.mark.parametrize(("result", "expected"), [
    (BOOM, COMPLETION_BOOM),
    (Result(409, "boom", metadata=(("k", "v"), ("other", "two"))), COMPLETION_BOOM_MULTI),
    (Result(422, "boom"), COMPLETION_BOOM_NOMETA),
])
def test_the_calling_parent_gets_the_completion_restate_sends(result: Result, expected: str) -> None:
    assert lua_completion(2, result).hex() == expected
    assert Result.decode(result.encode()) == result


def test_the_stored_result_field_is_the_failure_as_received() -> None:
    # `res` holds NotificationTemplate.failure (field 6) with the Output's Failure bytes unchanged,
    # so a rethrowing caller's own Output is byte-identical to the callee's (FACTS §1c)
    plan = plan_attempt(frames(OUTPUT_BOOM, END), context(BEFORE))
    assert plan.result is not None
    failure = bytes.fromhex(OUTPUT_BOOM)[10:]  # after the frame header and the field-15 tag + length
    assert plan.result.encode() == b"\x32" + bytes([len(failure)]) + failure
    assert encode_message(T.OUTPUT_COMMAND, pb.OutputCommandMessage(failure=plan.result.failure())).hex() == OUTPUT_BOOM


def test_metadata_reaches_the_http_error_body() -> None:
    out = _outcome("inv_x", rpc_result(Result(400, "boom", metadata=(("z", "1"), ("a", "2"), ("m", "3")))))
    assert out == Outcome("inv_x", failure_code=400, failure_message="boom",
                          failure_metadata=(("a", "2"), ("m", "3"), ("z", "1")))
    resp = outcome_response(out, "inv_x", DEFAULT_OUTPUT_RULE)
    assert resp.status == 400 and resp.headers["x-restate-error-source"] == "invocation"
    assert resp.body == b'{"code":400,"message":"boom","metadata":{"a":"2","m":"3","z":"1"},"source":"invocation"}'


def test_no_metadata_field_without_entries() -> None:
    out = _outcome("inv_x", rpc_result(Result(422, "boom")))
    assert out.failure_metadata == ()
    assert outcome_response(out, "inv_x", DEFAULT_OUTPUT_RULE).body == (
        b'{"code":422,"message":"boom","source":"invocation"}')
    assert error_response(404, "not found", metadata=()).body == (
        b'{"code":404,"message":"not found","source":"ingress"}')


def test_rpc_result_carries_the_metadata_as_a_map() -> None:
    r = rpc_result(Result(409, "boom", metadata=(("k", "v"), ("other", "two"))), 5)
    assert dict(r.failure_metadata) == {"k": "v", "other": "two"}
    assert (r.failure_code, r.failure_message, r.expires_ms) == (409, "boom", 5)
