"""gateway.reconnect: the capped exponential backoff every link uses."""

from __future__ import annotations

import asyncio

import pytest

from gateway import mqtt_link as mqtt
from gateway.reconnect import ReconnectDelay


def test_delays_double_up_to_the_longest_and_start_over_after_a_connection() -> None:
    delays = ReconnectDelay(1.0, 30.0)
    assert [delays.next() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    delays.reset()
    assert [delays.next() for _ in range(3)] == [1, 2, 4]


def test_a_first_delay_equal_to_the_longest_stays_there() -> None:
    delays = ReconnectDelay(0.5, 0.5)
    assert [delays.next() for _ in range(3)] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("pair", [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_pairs_are_refused(pair: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        ReconnectDelay(*pair)


async def test_the_mqtt_link_waits_by_these_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    """stay_connected sleeps 1, 2, 4 ... between failed sessions, and 1 s again after a
    session that got connected."""
    slept: list[float] = []
    connected = asyncio.Event()
    outcomes = iter(["fail", "fail", "fail", "works", "fail", "fail", "stop"])

    async def session() -> None:
        outcome = next(outcomes)
        if outcome == "stop":
            raise asyncio.CancelledError
        if outcome == "works":
            connected.set()
            return
        raise mqtt.aiomqtt.MqttError("refused")

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(mqtt.asyncio, "sleep", sleep)
    address = mqtt.BrokerAddress("127.0.0.1", 1)
    with pytest.raises(asyncio.CancelledError):
        await address.stay_connected(session, connected, event="test_link_lost")
    assert slept == [1, 2, 4, 1, 2, 4]
