"""gateway.tasks.TaskSet: holds background tasks until done, logs each failure once."""

from __future__ import annotations

import asyncio

import structlog

from gateway.tasks import TaskSet


async def test_a_task_is_held_until_done_and_its_failure_logged_once() -> None:
    tasks = TaskSet("owner")

    async def fail() -> None:
        raise ValueError("boom")

    async def ok() -> int:
        return 7

    with structlog.testing.capture_logs() as logs:
        failing = tasks.spawn(fail())
        good = tasks.spawn(ok())
        assert len(tasks) == 2 and failing in tasks
        await tasks.wait()
        await asyncio.sleep(0)  # done callbacks run
    assert len(tasks) == 0 and good.result() == 7
    failures = [entry for entry in logs if entry["event"] == "task_failed"]
    assert len(failures) == 1 and failures[0]["owner"] == "owner"


async def test_cancel_ends_every_task_but_the_kept_one_without_logging() -> None:
    tasks = TaskSet("owner")
    sleepers = [tasks.spawn(asyncio.sleep(60)) for _ in range(3)]
    kept = tasks.spawn(asyncio.sleep(0.01))
    with structlog.testing.capture_logs() as logs:
        await tasks.cancel(keep=kept)
    assert all(task.cancelled() for task in sleepers)
    assert not kept.cancelled()
    await kept
    assert not [entry for entry in logs if entry["event"] == "task_failed"]


async def test_add_holds_a_running_task() -> None:
    tasks = TaskSet("owner")
    task = asyncio.ensure_future(asyncio.sleep(0))
    tasks.add(task)
    assert list(tasks) == [task]
    await task
    await asyncio.sleep(0)
    assert not tasks
