"""The pure parts of `/query`: the names it shares with the worker, what DataFusion's plan of each
of the CLI's statements lets it push into the reads, the journal decoding and the encoders."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from ingress.admin.query import store
from ingress.admin.query.encoders import arrow_body, json_rows, json_value
from ingress.admin.query.engine import QueryError, plan
from ingress.admin.query.journal import entry_type, journal_rows
from ingress.admin.query.pushdown import Constraint
from ingress.admin.query.rows import SQL_STATUS
from ingress.admin.query.tables import invocation_read
from partition import keys
from partition.invocation import HashField, Status
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import MessageType as T

ID = "inv_1foAirY4KKzi7xPrtoMhjD3MqKsLCcrhz1"
DETAIL = ("SELECT inv.id, inv.target, inv.status, dp.id IS NOT NULL as pinned_deployment_exists FROM sys_invocation inv "
          "LEFT JOIN sys_deployment dp ON dp.id = inv.pinned_deployment_id WHERE {w} ORDER BY inv.created_at DESC, inv.id")


def test_the_names_are_the_workers() -> None:
    """Field, key and timer names mirrored from the worker (which the ingress must not import)."""
    mirrored = {getattr(store, n) for n in dir(store) if n.startswith("F_")}
    assert mirrored <= {f.value for f in HashField}
    assert store.F_STATUS == HashField.STATUS.value and store.F_RESULT == HashField.RESULT.value
    assert store.inv_key(3, ID) == keys.invocation(3, ID)
    assert store.journal_key(3, ID) == keys.journal(3, ID)
    assert store.timers_key(3) == keys.timers(3)
    assert store.keyed_key(3, "state", "S", "k") == keys.state(3, "S", "k")
    assert store.keyed_key(3, "prom", "S", "k") == keys.promises(3, "S", "k")
    assert store.RETRY_TIMER_PREFIX == keys.timer_prefix(keys.TimerKind.RETRY)
    assert set(SQL_STATUS) == {s.value for s in Status}


def test_an_id_list_reads_only_those_ids() -> None:
    scans = plan(DETAIL.format(w=f"inv.id in ('{ID}', 'inv_other')"))
    f, ids = invocation_read("sys_invocation", scans["sys_invocation"])
    assert ids == frozenset({ID, "inv_other"})
    assert (f.statuses, f.services, f.keys) == (None, None, None)
    assert scans["sys_invocation"].columns is not None and "status" in scans["sys_invocation"].columns


def test_service_and_derived_status_filters_become_stored_ones() -> None:
    sql = ("SELECT id FROM sys_invocation inv WHERE inv.target_service_name IN ('Greeter') AND status IN "
           "('running', 'pending') ORDER BY inv.created_at DESC, inv.id LIMIT 100")
    f, ids = invocation_read("sys_invocation", plan(sql)["sys_invocation"])
    assert ids is None
    assert f.services == frozenset({"Greeter"})
    assert f.statuses == frozenset({"invoked", "inboxed"})


def test_not_completed_excludes_only_completed() -> None:
    f, _ = invocation_read("sys_invocation", plan("SELECT id FROM sys_invocation WHERE status != 'completed'")
                           ["sys_invocation"])
    assert f.statuses == frozenset(SQL_STATUS) - {"completed"}


def test_a_filter_above_a_limit_is_not_pushed_down() -> None:
    """The CLI's COUNT filters the first 50000 rows: filtering before the LIMIT would change it."""
    scans = plan("SELECT COUNT(1) FROM (SELECT * FROM sys_invocation inv LIMIT 50000 ) WHERE status != 'completed'")
    f, ids = invocation_read("sys_invocation", scans["sys_invocation"])
    assert (f.statuses, ids) == (None, None)


def test_an_or_with_like_leaves_the_target_unconstrained() -> None:
    sql = ("SELECT id, target FROM sys_invocation_status WHERE ((target = 'Greeter/slow' AND target_service_ty = "
           "'service') OR (target LIKE 'Greeter/slow/%' AND target_service_ty != 'service')) AND status != "
           "'completed' LIMIT 500")
    f, ids = invocation_read("sys_invocation_status", plan(sql)["sys_invocation_status"])
    assert (f.services, ids) == (None, None)
    assert f.statuses == frozenset(SQL_STATUS) - {"completed"}


def test_the_state_query_names_service_and_key() -> None:
    scans = plan("select key, value from state where service_name = 'Counter' and service_key = 'k1' ;")
    assert scans["state"].constraints == {"service_name": Constraint(allowed=frozenset({"Counter"})),
                                          "service_key": Constraint(allowed=frozenset({"k1"}))}


def test_inboxed_with_double_equals() -> None:
    sql = ("SELECT target_service_name, target_handler_name, 'pending' as status, COUNT(1) as num_invocations, "
           "MIN(created_at) as oldest_at, FIRST_VALUE(id ORDER BY created_at ASC) as oldest_invocation FROM "
           "sys_invocation_status WHERE status == 'inboxed' AND target_service_name IN ('Greeter') GROUP BY "
           "target_service_name, target_handler_name")
    f, _ = invocation_read("sys_invocation_status", plan(sql)["sys_invocation_status"])
    assert (f.statuses, f.services) == (frozenset({"inboxed"}), frozenset({"Greeter"}))


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT nope FROM sys_invocation", "DROP TABLE state",
                                 "INSERT INTO state VALUES (1)"])
def test_bad_and_writing_statements_are_refused(sql: str) -> None:
    with pytest.raises(QueryError):
        plan(sql)


def _entry(t: int, msg: object) -> bytes:
    return protocol.encode_message(t, msg)  # type: ignore[arg-type]


def test_journal_rows() -> None:
    entries = [
        _entry(T.INPUT_COMMAND, pb.InputCommandMessage()),
        _entry(T.SLEEP_COMMAND, pb.SleepCommandMessage(wake_up_time=1_795_932_407_132, result_completion_id=1)),
        _entry(T.CALL_COMMAND, pb.CallCommandMessage(service_name="Counter", key="k", handler_name="add",
                                                     invocation_id_notification_idx=2, result_completion_id=3)),
        _entry(T.CALL_INVOCATION_ID_COMPLETION, pb.NotificationTemplate(completion_id=2, invocation_id=ID)),
        _entry(T.SLEEP_COMPLETION, pb.NotificationTemplate(completion_id=1, void=pb.Void())),
        b"garbage",
    ]
    got = journal_rows(ID, entries)
    assert [r["entry_type"] for r in got] == ["Command: Input", "Command: Sleep", "Command: Call",
                                              "Notification: CallInvocationId", "Notification: Sleep", "Unknown"]
    assert [r["index"] for r in got] == list(range(6))
    sleep, call = got[1], got[2]
    assert sleep["completed"] is True
    assert sleep["sleep_wakeup_at"] == datetime(2026, 11, 29, 6, 6, 47, 132000, tzinfo=UTC)
    assert sleep["entry_json"] == ('{"Command":{"Sleep":{"wake_up_time":"1795932407132",'
                                   '"result_completion_id":1}}}')
    assert (call["invoked_target"], call["invoked_id"], call["completed"]) == ("Counter/k/add", ID, False)
    assert got[5]["raw"] == b"garbage" and "entry_json" not in got[5]


def test_entry_type_names() -> None:
    assert entry_type(T.ONE_WAY_CALL_COMMAND) == "Command: OneWayCall"
    assert entry_type(T.SIGNAL_NOTIFICATION) == "Notification: Signal"
    assert entry_type(0xFC01) == "Custom"


def test_json_cells() -> None:
    assert json_value(datetime(2026, 11, 29, 6, 1, 47, 71000, tzinfo=UTC)) == "2026-11-29T06:01:47.071Z"
    assert json_value(b"5") == "35"
    schema = pa.schema([("a", pa.int64()), ("b", pa.large_string()), ("c", pa.bool_())])
    batch = pa.RecordBatch.from_arrays([pa.array([1, None]), pa.array([None, "x"]), pa.array([True, None])],
                                       schema=schema)
    assert list(json_rows([batch])) == [{"a": 1, "c": True}, {"b": "x"}]


def test_arrow_stream_round_trip() -> None:
    schema = pa.schema([("count(Int64(1))", pa.int64())])
    body = arrow_body(schema, [pa.RecordBatch.from_arrays([pa.array([73])], schema=schema)])
    table = pa.ipc.open_stream(body).read_all()
    assert (table.column_names, table.column(0).to_pylist()) == (["count(Int64(1))"], [73])
    empty = pa.ipc.open_stream(arrow_body(schema, [])).read_all()
    assert empty.num_rows == 0 and empty.schema == schema


def test_a_limit_without_order_lets_the_read_stop_early_and_drops_constraints_below_it() -> None:
    scans = plan("SELECT COUNT(1) FROM (SELECT * FROM sys_invocation inv LIMIT 50000 ) WHERE status != 'completed'")
    assert scans["sys_invocation"].fetch == 50000
    ordered = plan("SELECT id FROM sys_invocation inv WHERE status != 'completed' ORDER BY inv.created_at DESC LIMIT 5")
    assert ordered["sys_invocation"].fetch is None
