"""models/resource_usage.py: the monitor sees a real allocation and real CPU work."""

import time

import numpy as np

from histopath.models.resource_usage import ResourceMonitor

MIB = 1 << 20


def test_peak_rss_sees_a_short_lived_allocation_and_cpu_time_is_counted():
    with ResourceMonitor(interval=0.02) as monitor:
        block = np.ones(300 * MIB, np.uint8)  # touched: resident
        time.sleep(0.2)
        del block
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            pass
    summary = monitor.summary()
    assert summary["peak_rss_bytes"] - summary["start_rss_bytes"] >= 250 * MIB
    assert summary["end_rss_bytes"] < summary["peak_rss_bytes"]
    assert summary["cpu_seconds"] >= 0.25
    assert summary["wall_seconds"] >= 0.5


def test_a_child_process_counts_in_the_peak_and_its_cpu_time_once_it_ended():
    import subprocess
    import sys

    import psutil

    # Other tests in the same session may leave children alive (a resource tracker).
    already_running = len(psutil.Process().children(recursive=True))
    child = ("import time, numpy as np; b = np.ones(300 << 20, np.uint8); "
             "t = time.process_time() + 0.3\nwhile time.process_time() < t: pass\ntime.sleep(0.5)")
    with ResourceMonitor(interval=0.02) as monitor:
        subprocess.run([sys.executable, "-c", child], check=True)
    summary = monitor.summary()
    assert summary["peak_rss_bytes"] - summary["start_rss_bytes"] >= 250 * MIB
    assert summary["processes_at_peak"] == 2 + already_running
    assert summary["cpu_seconds"] >= 0.25
