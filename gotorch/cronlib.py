"""croniter, imported without running a program.

croniter 7 calls ``platform.architecture()`` at import time to detect a 32-bit build, and that
function runs ``file -b <interpreter>``, looked up on ``PATH``. A daemon running as root must not
execute a ``PATH``-searched program just by loading its code (``torch check`` neither), so for the
length of the import the answer comes from the pointer size, which is what croniter checks first
anyway. Import croniter only through this module.
"""

from __future__ import annotations

import platform
import struct
import sys

_real_architecture = platform.architecture


def _architecture(executable: str = sys.executable, bits: str = "", linkage: str = "") -> tuple[str, str]:
    return (bits or f"{struct.calcsize('P') * 8}bit", linkage or "ELF")


platform.architecture = _architecture
try:
    from croniter import CroniterError, croniter
finally:
    platform.architecture = _real_architecture

__all__ = ["CroniterError", "croniter"]
