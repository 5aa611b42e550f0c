"""The `deployment` query parameter of resume / restart-as-new (`ingress/admin/pinning.py`):
Restate's values, decode errors and the checks made before an invocation is re-pinned."""

from __future__ import annotations

import pytest

from ingress.admin.pinning import DeploymentPatch, Patch, Pin, parse_patch, repin, restart_pin
from ingress.errors import BadRequest, Conflict
from shardgate.schema import Deployment, SchemaSnapshot, ServiceMeta, ServiceType

pytestmark = pytest.mark.timeout(10)

INV = "inv_1abc"
DP_OLD, DP_NEW = "dp_12bbrm9pI9QougPNzBAM1vr", "dp_1" + "0" * 21 + "b"


def _deployment(dp: str, low: int, high: int) -> Deployment:
    return Deployment(id=dp, uri="http://127.0.0.1:1", protocol_mode="REQUEST_RESPONSE", min_protocol_version=low,
                      max_protocol_version=high)


SNAPSHOT = SchemaSnapshot(
    version=2, services={"Pin": ServiceMeta(name="Pin", ty=ServiceType.VIRTUAL_OBJECT, handlers={}, deployment_id=DP_NEW)},
    deployments={DP_OLD: _deployment(DP_OLD, 5, 6), DP_NEW: _deployment(DP_NEW, 6, 7)})


@pytest.mark.parametrize(("raw", "expected"), [
    (None, DeploymentPatch(Patch.KEEP)), ("keep", DeploymentPatch(Patch.KEEP)), ("Keep", DeploymentPatch(Patch.KEEP)),
    ("latest", DeploymentPatch(Patch.LATEST)), ("Latest", DeploymentPatch(Patch.LATEST)),
    (DP_NEW, DeploymentPatch(Patch.PIN_TO, DP_NEW)),
])
def test_the_values_restate_accepts(raw: str | None, expected: DeploymentPatch) -> None:
    assert parse_patch(raw, Patch.KEEP) == expected


def test_the_default_is_the_callers() -> None:
    assert parse_patch(None, Patch.LATEST) == DeploymentPatch(Patch.LATEST)


@pytest.mark.parametrize(("raw", "reason"), [
    ("LATEST", "bad format"), ("inv_1" + "a" * 33, "id doesn't match the expected type"),
    ("xy_1abc", "unrecognized resource type: xy"), ("dp_2" + "a" * 22, "unrecognized codec version"),
    ("dp_1abc", "bad length"), ("dp_1" + "-" * 22, "base62 decode error"),
    ("dp_1" + "a" * 22, "base62 decode error"),  # over a u128 (answers of the reference server)
])
def test_a_malformed_value_is_refused_with_the_decode_error(raw: str, reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_patch(raw, Patch.KEEP)
    assert str(err.value) == f"The query parameter 'deployment' is invalid. Reason: {reason}"


def test_keep_and_an_unpinned_latest_change_nothing() -> None:
    assert repin(INV, "Pin", Pin(DP_OLD, 6), DeploymentPatch(Patch.KEEP), SNAPSHOT) == ""
    assert repin(INV, "Pin", None, DeploymentPatch(Patch.LATEST), SNAPSHOT) == ""


def test_latest_and_an_id_resolve_to_a_deployment_speaking_the_pinned_version() -> None:
    assert repin(INV, "Pin", Pin(DP_OLD, 6), DeploymentPatch(Patch.LATEST), SNAPSHOT) == DP_NEW
    assert repin(INV, "Pin", Pin(DP_NEW, 6), DeploymentPatch(Patch.PIN_TO, DP_OLD), SNAPSHOT) == DP_OLD


def test_an_unpinned_invocation_cannot_be_pinned_to_an_id() -> None:
    with pytest.raises(Conflict) as err:
        repin(INV, "Pin", None, DeploymentPatch(Patch.PIN_TO, DP_NEW), SNAPSHOT)
    assert str(err.value) == (f"The invocation '{INV}' is still running or the deployment id is not pinned yet, "
                              "deployment id cannot be changed.")


def test_an_unknown_deployment_or_a_service_without_one_is_not_found() -> None:
    unknown = "dp_1" + "0" * 21 + "c"
    with pytest.raises(BadRequest) as err:
        repin(INV, "Pin", Pin(DP_OLD, 6), DeploymentPatch(Patch.PIN_TO, unknown), SNAPSHOT)
    assert str(err.value) == f"The given deployment was not found when trying to resume the invocation '{INV}'."
    with pytest.raises(BadRequest) as err:
        restart_pin(INV, "Gone", None, DeploymentPatch(Patch.LATEST), SNAPSHOT)
    assert str(err.value) == f"The given deployment was not found when trying to restart as new the invocation '{INV}'."


def test_a_restart_keeps_or_replaces_the_pin_and_leaves_an_unpinned_one_unpinned() -> None:
    assert restart_pin(INV, "Pin", Pin(DP_OLD, 6), DeploymentPatch(Patch.KEEP), SNAPSHOT) == ""
    assert restart_pin(INV, "Pin", Pin(DP_OLD, 6), DeploymentPatch(Patch.LATEST), SNAPSHOT) == DP_NEW
    assert restart_pin(INV, "Pin", None, DeploymentPatch(Patch.PIN_TO, DP_OLD), SNAPSHOT) == ""


def test_a_deployment_not_speaking_the_pinned_version_is_refused() -> None:
    with pytest.raises(BadRequest) as err:
        repin(INV, "Pin", Pin(DP_OLD, 5), DeploymentPatch(Patch.LATEST), SNAPSHOT)
    assert str(err.value) == (f"The invocation '{INV}' is running on protocol version '5', while the chosen "
                              f"deployment '{DP_NEW}' supports the range 6..=7.")
