import subprocess
import sys

from benchmarks.memory import MemoryProbe, peak_rss_gib

HOLD = "import time; block = bytearray(400 << 20); print('ready', flush=True); time.sleep(3)"


# A parent that starts the child when told: the probe watches it alone, not this test process,
# whose other children (a Ray session's workers) come and go meanwhile.
PARENT = f"import subprocess, sys; sys.stdin.readline(); subprocess.run([sys.executable, '-c', {HOLD!r}])"


def test_probe_counts_a_child_process_while_it_runs():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with MemoryProbe(interval_s=0.1).watch(parent.pid) as probe:
        before = probe.sample()
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "ready"
        during = probe.sample()
        parent.wait()
    assert during - before > 350 << 10  # KiB: the child's 400 MiB block is counted
    assert probe.peak_kib >= during
    assert probe.sum_of_peaks_gib >= probe.peak_gib > 0.35


def test_a_process_that_is_gone_holds_nothing():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert MemoryProbe().watch(child.pid).sample() == 0
    assert peak_rss_gib(child.pid) == 0.0
