"""torch: a seconds-resolution cron daemon driven by one version-controlled task file."""

import sys as _sys

__version__ = "0.1.0"
# `python -X torch_helper`: one of torch's helper processes (gotorch.reload_process.python_argv).
HELPER_OPTION = "torch_helper"


def _lean_imports() -> None:
    """Import asyncio and hashlib without OpenSSL: ~5 MB resident less in every torch process.

    asyncio imports ssl for TLS streams torch never opens on a loop (~1 MB), and hashlib, hmac and
    secrets load OpenSSL's libcrypto (~3.7 MB) where Python's built-in sha256 and blake2b do all
    torch hashes. With ssl and _hashlib hidden while they load, they do without; whatever needs
    TLS later (the fleet's etcd client over https) imports ssl, and OpenSSL with it, as usual.
    Done only in a process that has not loaded them yet (the daemon, the CLI, their children).
    """
    if {"asyncio", "hashlib", "hmac", "ssl", "_hashlib"} & set(_sys.modules):
        return
    _sys.modules["ssl"] = _sys.modules["_hashlib"] = None  # type: ignore[assignment]
    try:
        # torch's helpers (the reload and fence processes) run no event loop: asyncio's ~90 ms of
        # imports would be paid by every reload for nothing.
        if HELPER_OPTION not in _sys._xoptions:
            import asyncio  # noqa: F401
        import hashlib  # noqa: F401
        import hmac  # noqa: F401
        import secrets  # noqa: F401
    finally:
        del _sys.modules["ssl"], _sys.modules["_hashlib"]


_lean_imports()
