"""Which journal entries restart-as-new from an index copies (`partition/restart.py`), against the
journals the reference server shows: `[Input, Run, Notification: Run, Output]`."""

from __future__ import annotations

import pytest

from partition.invocation import HandlerKind, InvocationRecord, Status
from partition.restart import Prefix, PrefixError, plan_prefix, refusal
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import MessageType as T

pytestmark = pytest.mark.timeout(10)

INPUT = protocol.input_command(b'"x"')
RUN = protocol.encode_message(T.RUN_COMMAND, pb.RunCommandMessage(result_completion_id=1, name="side_effect"))
RUN_DONE = protocol.notification(T.RUN_COMPLETION, completion_id=1, value=b'"done"')
SLEEP = protocol.encode_message(T.SLEEP_COMMAND, pb.SleepCommandMessage(wake_up_time=5, result_completion_id=2))
SIGNAL = protocol.notification(T.SIGNAL_NOTIFICATION, signal_id=17, value=b'"w"')
OUTPUT = protocol.encode_message(T.OUTPUT_COMMAND, pb.OutputCommandMessage(value=pb.Value(content=b"1")))
JOURNAL = [INPUT, RUN, RUN_DONE, OUTPUT]


def test_from_zero_keeps_the_input_alone_whatever_the_protocol() -> None:
    assert plan_prefix(JOURNAL, 0, None) == Prefix(INPUT, (), ())


def test_a_prefix_keeps_its_commands_completions_stored_after_it() -> None:
    assert plan_prefix(JOURNAL, 1, 6) == Prefix(INPUT, (RUN, RUN_DONE), ("c1",))
    assert plan_prefix(JOURNAL, 2, 6) == Prefix(INPUT, (RUN, RUN_DONE), ("c1",))
    assert plan_prefix(JOURNAL, 3, 6) == Prefix(INPUT, (RUN, RUN_DONE, OUTPUT), ("c1",))


def test_signals_in_the_prefix_are_indexed_and_later_ones_left_out() -> None:
    journal = [INPUT, RUN, SIGNAL, RUN_DONE, OUTPUT]
    assert plan_prefix(journal, 2, 6) == Prefix(INPUT, (RUN, SIGNAL, RUN_DONE), ("s17", "c1"))
    assert plan_prefix([INPUT, RUN, RUN_DONE, SIGNAL], 2, 6) == Prefix(INPUT, (RUN, RUN_DONE), ("c1",))


def test_a_command_never_completed_or_an_index_past_the_end_is_refused() -> None:
    assert plan_prefix([INPUT, SLEEP, OUTPUT], 1, 6) is PrefixError.COPY_RANGE_INVALID
    assert plan_prefix(JOURNAL, 4, 6) is PrefixError.COPY_RANGE_INVALID
    assert plan_prefix(JOURNAL, 99, 6) is PrefixError.COPY_RANGE_INVALID


def test_a_prefix_needs_protocol_v6() -> None:
    assert plan_prefix(JOURNAL, 1, 5) is PrefixError.UNSUPPORTED
    assert plan_prefix(JOURNAL, 1, None) is PrefixError.UNSUPPORTED


def _record(status: Status, kind: HandlerKind = HandlerKind.SERVICE) -> InvocationRecord:
    return InvocationRecord(status=status, service="Greeter", handler="greet", kind=kind)


@pytest.mark.parametrize(("record", "journal", "expected"), [
    (None, [], spb.MANAGE_STATUS_NOT_FOUND),
    (_record(Status.SCHEDULED), [], spb.MANAGE_STATUS_WRONG_STATE),
    (_record(Status.INBOXED), [], spb.MANAGE_STATUS_WRONG_STATE),
    (_record(Status.SUSPENDED), JOURNAL, spb.MANAGE_STATUS_NOT_COMPLETED),
    (_record(Status.COMPLETED), [], spb.MANAGE_STATUS_MISSING_INPUT),
    (_record(Status.COMPLETED, HandlerKind.WORKFLOW), JOURNAL, spb.MANAGE_STATUS_UNSUPPORTED),
    (_record(Status.COMPLETED), JOURNAL, None),
])
def test_what_cannot_be_restarted(record: InvocationRecord | None, journal: list[bytes],
                                  expected: spb.ManageStatus | None) -> None:
    assert refusal(record, journal) == expected
