"""StripeLocks.hold_all (a snapshot's quiesce): drains holders, blocks new acquirers, and
acquirers holding part of their range finish first (no deadlock)."""
import trio
import trio.testing

from resilfs.sets.locks import StripeLocks


async def test_hold_all_drains_and_blocks(autojump_clock):
    locks = StripeLocks()
    log = []

    async def writer(name, stripes, hold_for):
        async with locks.hold(stripes):
            log.append(f"{name} in")
            await trio.sleep(hold_for)
            log.append(f"{name} out")

    async def quiescer():
        async with locks.hold_all():
            log.append("all in")
            await trio.sleep(1)
            log.append("all out")

    async with trio.open_nursery() as n:
        n.start_soon(writer, "a", range(0, 4), 2)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(writer, "b", range(3, 6), 1)  # waits for a on stripe 3
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(quiescer)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(writer, "c", range(10, 11), 1)  # new: waits for the quiescer
    assert log.index("a out") < log.index("all in")
    assert log.index("all out") < log.index("b in")  # it held nothing yet: it waits
    assert log.index("all out") < log.index("c in")


async def test_partial_holder_finishes_before_the_quiescer(autojump_clock):
    locks = StripeLocks()
    order = []

    async def first():
        async with locks.hold(range(5, 6)):
            await trio.sleep(1)
        order.append("first")

    async def partial():  # takes 0..4, then waits for 5 while the quiescer arrives
        async with locks.hold(range(0, 6)):
            order.append("partial")

    async def quiescer():
        async with locks.hold_all():
            order.append("all")

    async with trio.open_nursery() as n:
        n.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(partial)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(quiescer)
    assert order == ["first", "partial", "all"]
