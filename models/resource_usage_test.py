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
