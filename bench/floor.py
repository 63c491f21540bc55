"""The floor: sleep to each second boundary and Popen the recorder for every due job. Nothing else.

Usage: floor.py RECORDER RECORD_FILE SECONDS JOBS_PER_SECOND
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def main() -> None:
    recorder, record, seconds, per_second = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    procs: list[subprocess.Popen[bytes]] = []
    first = int(time.time()) + 1
    for boundary in range(first, first + seconds):
        delay = boundary - time.time()
        if delay > 0:
            time.sleep(delay)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(boundary))
        env = {"TORCH_SCHEDULED_AT": stamp, "RECORD_FILE": record, "PATH": os.environ.get("PATH", "")}
        for _ in range(per_second):
            procs.append(subprocess.Popen([recorder], env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
        for p in procs:
            p.poll()
        procs = [p for p in procs if p.returncode is None]
    for p in procs:
        p.wait()


if __name__ == "__main__":
    main()
