"""POST /restate/awakeables/{id}/resolve|reject: complete an awakeable from outside.

The id names the invocation and the signal index (`sign_1` + base64url(invocation id bytes +
u32 index)); resolving appends `SignalNotification{idx, value}` to that invocation's journal
(rejecting: a failure whose message is the request body). Like Restate, the answer is 202
with an empty body whether or not the invocation still exists.
"""

from __future__ import annotations

from aiohttp import web

from ingress.dispatcher import Dispatcher
from ingress.errors import BadRequest, MethodNotAllowed
from ingress.paths import Awakeable
from shardgate import protocol
from shardgate.sharding import AwakeableIdError, parse_awakeable_id, partition_of

REJECT_CODE = 500


async def handle_awakeable(
    request: web.Request, parsed: Awakeable, *, dispatcher: Dispatcher, partitions: int
) -> web.Response:
    if request.method != "POST":
        raise MethodNotAllowed()
    try:
        target, index = parse_awakeable_id(parsed.awakeable_id)
    except AwakeableIdError:
        # Restate's wording: an id with a known prefix that does not decode is of the wrong type
        known = parsed.awakeable_id.startswith(("sign_", "prom_"))
        reason = "id doesn't match the expected type" if known else "bad format"
        raise BadRequest(f"bad awakeable id '{parsed.awakeable_id}': {reason}") from None
    body = await request.read()
    if parsed.action == "resolve":
        frame = protocol.notification(protocol.MessageType.SIGNAL_NOTIFICATION, signal_id=index, value=body)
    else:
        message = body.decode("utf-8", errors="replace")
        frame = protocol.notification(protocol.MessageType.SIGNAL_NOTIFICATION, signal_id=index,
                                      failure=(REJECT_CODE, message))
    await dispatcher.signal(str(target), partition_of(target.partition_key, partitions), f"s{index}", frame)
    return web.Response(status=202)
