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
            anon = _memory(child.pid)["anon"]
            time.sleep(0.1)
        assert anon >= 300 * 1024, f"sampled {anon} kB; the grandchild touched 300 MiB"
    finally:
        subprocess.run(["pkill", "-P", str(child.pid)], check=False)
        child.kill()
        child.wait()
    assert _memory(child.pid) == {"anon": 0, "file": 0, "swap": 0}


def test_bench_schedule_times_what_stages_names():
    """``--stages bench-RUNTIME:ARTIFACT`` re-times one artifact (a rerun of one cell, e.g. with
    swap on) without the others; each round reverses the order of the one before."""
    from types import SimpleNamespace

    from benchmarks.scale import _bench_cells, _bench_schedule

    recipe = SimpleNamespace(runtimes=("onnxruntime", "deepsparse"), artifacts=("pruned", "dense"))
    every = _bench_cells(recipe, None)
    assert every == [("onnxruntime", "pruned"), ("onnxruntime", "dense"), ("deepsparse", "pruned"),
                     ("deepsparse", "dense")]
    assert _bench_cells(recipe, ["bench-deepsparse:dense", "prune"]) == [("deepsparse", "dense")]
    assert _bench_cells(recipe, ["bench-onnxruntime"]) == every[:2]
    assert _bench_cells(recipe, ["load"]) == []
    assert _bench_schedule(every[:2], 2) == ["bench-onnxruntime:pruned:0", "bench-onnxruntime:dense:0",
                                             "bench-onnxruntime:dense:1", "bench-onnxruntime:pruned:1"]
