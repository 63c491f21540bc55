"""torch: a seconds-resolution cron daemon driven by one version-controlled task file."""

import sys as _sys

__version__ = "0.1.0"

# asyncio imports ssl (OpenSSL: ~1 MB resident in every process, the daemon's included) for TLS
# streams that torch never opens on a loop. Hidden while asyncio loads, asyncio does without;
# whatever needs TLS later (the fleet's etcd client over https) imports ssl for itself as usual.
if "asyncio" not in _sys.modules and "ssl" not in _sys.modules:
    _sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import asyncio as _asyncio  # noqa: F401
    finally:
        del _sys.modules["ssl"]
