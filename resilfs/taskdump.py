"""What every trio task is waiting on, for the log: ``install`` makes SIGUSR1 write each
task's name and its await chain (innermost last) at WARNING level.

A daemon that seems stuck (an unmount that does not end, a request that never returns)
is asked with ``kill -USR1 PID``; nothing changes but the log.
"""
import logging
import signal

import trio

log = logging.getLogger(__name__)


def _chain(coro) -> list[str]:
    """The frames a coroutine waits in, outermost first."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def _tasks(task, depth=0):
    yield depth, task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _tasks(child, depth + 1)


def dump() -> str:
    """Every task of the running trio loop with its await chain, as text."""
    lines = []
    for depth, task in _tasks(trio.lowlevel.current_root_task()):
        lines.append("  " * depth + f"task {task.name}")
        lines += ["  " * depth + "    " + frame for frame in _chain(task.coro)]
    return "\n".join(lines)


class DumpOnSignal:
    """Logs ``dump()`` at every SIGUSR1 while ``run`` runs, until ``stop()``."""

    def __init__(self):
        self._scope = trio.CancelScope()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with self._scope, trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                log.warning("tasks at SIGUSR1:\n%s", dump())

    def stop(self) -> None:
        self._scope.cancel()
