"""benchmarks.scale samples a stage's memory over its whole process tree: a runtime's worker
(DeepSparse runs in a child of the bench stage) is charged to the stage, not lost."""
import subprocess
import sys
import time

from benchmarks.scale import _memory

GRANDCHILD = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
              "'import time; b = bytearray(300 * 2**20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(30)'])")


def test_memory_counts_a_grandchilds_heap():
    child = subprocess.Popen([sys.executable, "-c", GRANDCHILD])
    try:
        deadline, anon = time.monotonic() + 20, 0
        while time.monotonic() < deadline and anon < 300 * 1024:
            anon, _ = _memory(child.pid)
            time.sleep(0.1)
        assert anon >= 300 * 1024, f"sampled {anon} kB; the grandchild touched 300 MiB"
    finally:
        subprocess.run(["pkill", "-P", str(child.pid)], check=False)
        child.kill()
        child.wait()
    assert _memory(child.pid) == (0, 0)
