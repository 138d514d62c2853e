import os
import subprocess
import sys

from benchmarks.memory import MemoryProbe, peak_rss_gib

HOLD = "import time; block = bytearray(400 << 20); print('ready', flush=True); time.sleep(3)"


def test_probe_counts_a_child_process_while_it_runs():
    with MemoryProbe(interval_s=0.1).watch(os.getpid()) as probe:
        before = probe.sample()
        child = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        during = probe.sample()
        child.wait()
    assert during - before > 350 << 10  # KiB: the child's 400 MiB block is counted
    assert probe.peak_kib >= during
    assert probe.sum_of_peaks_gib >= probe.peak_gib > 0.35


def test_a_process_that_is_gone_holds_nothing():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert MemoryProbe().watch(child.pid).sample() == 0
    assert peak_rss_gib(child.pid) == 0.0
