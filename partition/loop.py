"""The one wake-able loop of a partition leader's background duties (timers, schedules).

`run_wakeable(what, partition, step, wake, clock)` runs `step()` until it is cancelled: `step`
returns how many seconds it wants to wait before its next run (0 or less: at once), `wake.set()`
runs it early. A lost lease (`Fenced`) ends the loop; a Redis failure or a bug in `step` is logged
and retried after RETRY_S, so one bad round never stops the duty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from partition.errors import Fenced
from shardgate.clock import Clock

log = logging.getLogger(__name__)

RETRY_S = 1.0


async def run_wakeable(what: str, partition: int, step: Callable[[], Awaitable[float]], wake: asyncio.Event,
                       clock: Clock) -> None:
    """Run `step` until cancelled or fenced (see the module docstring)."""
    while True:
        wake.clear()
        try:
            delay_s = await step()
        except asyncio.CancelledError:
            raise
        except Fenced:
            log.info("%s stopped: partition lost", what, extra={"partition": partition})
            return
        except (RedisError, OSError) as e:
            log.warning("%s: state store unavailable (%s), retrying", what, type(e).__name__,
                        extra={"partition": partition})
            delay_s = RETRY_S
        except Exception:
            log.exception("%s failed", what, extra={"partition": partition})
            delay_s = RETRY_S
        if delay_s > 0:
            await clock.wait(wake, delay_s)
