"""Launch command of a Beam SDK worker: hand the runner's environment to a prestarted one.

    python -S beam_worker_launcher.py POOL_FOLDER

Run by the Beam runner (see `histopath.data.beam_workers`). Standard library only and
started with `-S`, so it costs milliseconds. Claims a waiting worker of the pool by
renaming its `free-<i>` token, writes the worker environment the runner set for this
process into that worker's named pipe and exits. With no waiting worker left it turns
itself into a normal `sdk_worker_main` process.
"""

import errno
import json
import os
import sys
import time

# The variables the runner sets for a worker (apache_beam.runners.portability.local_job_service),
# except LOGGING_API_SERVICE_DESCRIPTOR: the runner's logging service lives only as long as
# this launch command, so the handed-off worker logs to its own stderr instead.
HANDED_OVER = ("CONTROL_API_SERVICE_DESCRIPTOR", "PIPELINE_OPTIONS", "WORKER_ID",
               "STATUS_API_SERVICE_DESCRIPTOR", "SEMI_PERSISTENT_DIRECTORY", "RUNNER_CAPABILITIES")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombie: exited
    except (OSError, IndexError):
        return False


def _open_when_listening(fifo: str, pid: int):
    """Opens the worker's pipe for writing once the worker reads it (it imports first);
    None if the worker died before that."""
    while True:
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                return None
            if not _alive(pid):
                return None
            time.sleep(0.005)
            continue
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "w", encoding="utf-8")


def hand_over(folder: str) -> bool:
    """Hands this process's worker environment to a waiting worker; False if none."""
    try:
        tokens = sorted(name for name in os.listdir(folder) if name.startswith("free-"))
    except OSError:
        return False
    for token in tokens:
        index = token.split("-", 1)[1]
        claimed = os.path.join(folder, f"claimed-{index}")
        try:
            os.rename(os.path.join(folder, token), claimed)
            with open(claimed, encoding="utf-8") as handle:
                pid = int(handle.read())
        except (OSError, ValueError):
            continue  # another launcher claimed it first
        pipe = _open_when_listening(os.path.join(folder, f"worker-{index}.fifo"), pid)
        if pipe is None:
            continue
        environment = {key: os.environ[key] for key in HANDED_OVER if key in os.environ}
        with pipe:
            pipe.write(json.dumps(environment))
        return True
    return False


def main(folder: str) -> None:
    if not hand_over(folder):
        # No prestarted worker left: become an ordinary SDK worker (with site-packages).
        os.execv(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"])


if __name__ == "__main__":
    main(sys.argv[1])
