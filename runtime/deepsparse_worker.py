"""DeepSparse worker: runs inside .venv-deepsparse, in a child process of the pipeline.

Imports only the standard library, numpy and deepsparse (the project is not installed in
that venv). DeepSparse's compiler can abort the process from C++ (uncatchable), so it never
runs in the pipeline's own process. Protocol, all files in one work directory:

    request.json   {"model", "num_cores", "warmup", "repetitions", "outputs": bool}
    inputs.npz     the feeds, in the graph's input order (arr_0, arr_1, ...)
    response.json  {"compile_s", "times_s", "timed_major_faults", "fraction_of_supported_ops", "versions"}
    outputs.npz    the outputs of one run (when asked for)

With ``"serve": true`` the worker stays up after writing response.json: each line ``run`` on
its stdin runs the engine once and answers ``SERVED <seconds>`` on stdout (the run's own wall
time); ``quit`` or the end of stdin ends it. That lets a parent time DeepSparse call by call,
alternating with graphs of other runtimes (runtime/paired.py), without compiling again.

    .venv-deepsparse/bin/python runtime/deepsparse_worker.py WORKDIR
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # else importing deepsparse calls home

import numpy as np  # noqa: E402


def main(workdir: str) -> int:
    import deepsparse
    from deepsparse import Engine

    with open(os.path.join(workdir, "request.json"), encoding="utf-8") as f:
        request = json.load(f)
    with np.load(os.path.join(workdir, "inputs.npz")) as data:
        feeds = [data[f"arr_{i}"] for i in range(len(data.files))]
    start = time.perf_counter()
    engine = Engine(request["model"], batch_size=feeds[0].shape[0], num_cores=request.get("num_cores"),
                    input_shapes=[list(x.shape) for x in feeds])
    compile_s = time.perf_counter() - start
    outputs = None
    for _ in range(request.get("warmup", 0)):
        outputs = engine.run(feeds)
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    for _ in range(request.get("repetitions", 0)):
        t = time.perf_counter()
        outputs = engine.run(feeds)
        times.append(time.perf_counter() - t)
    # pages read back from disk while timing (swap, evicted weights): nonzero means the times include I/O
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults
    if request.get("outputs"):
        outputs = outputs if outputs is not None else engine.run(feeds)
        np.savez(os.path.join(workdir, "outputs.npz"), *outputs)
    response = {
        "compile_s": compile_s,
        "times_s": times,
        "timed_major_faults": faults,
        "fraction_of_supported_ops": float(engine.fraction_of_supported_ops),
        "num_cores": engine.num_cores,
        "versions": {"deepsparse": deepsparse.__version__, "numpy": np.__version__},
    }
    with open(os.path.join(workdir, "response.json"), "w", encoding="utf-8") as f:
        json.dump(response, f)
    if request.get("serve"):
        serve(engine, feeds)
    return 0


SERVED = "SERVED"  # the prefix of an answer line: DeepSparse's own banner may print on stdout too


def serve(engine, feeds) -> None:
    """Answer ``run`` lines on stdin with one timed run each, until ``quit`` or end of input."""
    print(f"{SERVED} ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t = time.perf_counter()
        engine.run(feeds)
        print(f"{SERVED} {time.perf_counter() - t!r}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
