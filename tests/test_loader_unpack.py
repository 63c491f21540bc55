"""gotorch.loader's answer to the daemon: which quiet moment taking a reload's fresh tasks waits for."""

from __future__ import annotations

import asyncio
import ipaddress
import time

from gotorch.config import parse_config
from gotorch.loader import QUICK_BYTES, _pack
from gotorch.plan import applicable

HEAD = "version: 1\ndefaults: {timezone: UTC}\ntasks:\n"


def _tasks(n: int, prefix: str = "t") -> str:
    return "".join(f'  - {{name: {prefix}{i}, command: /bin/true, schedule: "{i % 60} * * * * *"}}\n'
                   for i in range(n))


def _waits(before: str, after: str) -> tuple[list[str], set[str]]:
    """Unpack the answer to a daemon running `before` for the file `after`: the waits, the names taken."""
    addresses = [ipaddress.ip_address("127.0.0.1")]
    base = parse_config(before, "t.yaml", check_accounts=False)
    running, _ = applicable(base, addresses)
    loaded = _pack(parse_config(after, "t.yaml", check_accounts=False), addresses, (base, running), time.time())
    waits: list[str] = []

    async def quiet() -> None:
        waits.append("quiet")

    async def quick() -> None:
        waits.append("quick")

    _, part, _ = asyncio.run(loaded.unpack(base, quiet, quick))
    return waits, set(part)


def test_a_small_change_waits_only_for_a_quick_moment() -> None:
    # One task added to 1,000: a millisecond of unpickling, any moment before the boundary will do.
    waits, names = _waits(HEAD + _tasks(1000), HEAD + _tasks(1000) + _tasks(1, "new"))
    assert waits and set(waits) == {"quick"}
    assert "new0" in names


def test_a_big_change_waits_for_early_in_a_second() -> None:
    waits, names = _waits(HEAD + _tasks(10), HEAD + _tasks(10) + _tasks(3000, "new"))
    assert waits and set(waits) == {"quiet"}
    assert {"new0", "new2999"} <= names


def test_the_quick_bound_is_about_a_hundred_tasks() -> None:
    # The threshold is in bytes; make sure it still means "a handful of tasks", not thousands.
    waits, _ = _waits(HEAD + _tasks(1), HEAD + _tasks(1) + _tasks(50, "new"))
    assert set(waits) == {"quick"}
    waits, _ = _waits(HEAD + _tasks(1), HEAD + _tasks(1) + _tasks(1000, "new"))
    assert set(waits) == {"quiet"}
    assert QUICK_BYTES <= 64 * 1024
