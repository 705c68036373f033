"""Patterns that lose a task's cancellation on Python 3.11, kept out of the gateway.

``asyncio.wait_for`` returns the inner result when the outer task is cancelled in the same
loop turn as the inner awaitable completes (CPython gh-86296, fixed in 3.12): a reconnecting
loop reading a busy socket then never stops, and whoever awaits it hangs (an RTSP pull's
``stop`` did, once, in CI). ``suppress(CancelledError)`` around ``await task`` swallows the
cancellation of the awaiting task too. ``asyncio.timeout`` and ``gather(...,
return_exceptions=True)`` do neither."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
RULES = {
    "asyncio.wait_for(": re.compile(r"\basyncio\.wait_for\("),
    "suppress(CancelledError) around an await": re.compile(
        r"suppress\([^)]*CancelledError[^)]*\):\s*\n\s*await\b"
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_gateway_does_not_lose_cancellations(rule: str) -> None:
    offenders = [
        f"{path.relative_to(GATEWAY.parent)}:{text[: match.start()].count(chr(10)) + 1}"
        for path in sorted(GATEWAY.rglob("*.py"))
        for text in [path.read_text()]
        for match in RULES[rule].finditer(text)
    ]
    assert offenders == [], f"{rule} in {offenders}"


async def test_asyncio_timeout_keeps_a_cancellation_that_wait_for_may_lose() -> None:
    """The reason, shown: cancel a task whose awaited read completes in the same loop turn."""

    async def reader(use_timeout: bool, ready: asyncio.Future[str]) -> str:
        while True:  # a reconnecting loop: only a cancellation ends it
            if use_timeout:
                async with asyncio.timeout(5):
                    await asyncio.shield(ready)
            else:
                await asyncio.wait_for(asyncio.shield(ready), 5)
            await asyncio.sleep(0)
            if ready.done():
                return "swallowed"

    outcomes = {}
    for use_timeout in (False, True):
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(reader(use_timeout, ready))
        await asyncio.sleep(0.01)  # the task waits on ready
        ready.set_result("data")  # the read completes ...
        task.cancel()  # ... and the task is cancelled in the same turn
        results = await asyncio.gather(task, return_exceptions=True)
        outcomes[use_timeout] = "cancelled" if isinstance(results[0], asyncio.CancelledError) else results[0]
    assert outcomes[True] == "cancelled"
    if sys.version_info < (3, 12):
        assert outcomes[False] == "swallowed"
