"""Batching on the CPU: is one ``session.run`` of B frames cheaper per frame than B of one?

    .venv/bin/python bench/bench_batching.py [--rounds 20] [--frames 8] [--sizes 320,640]
        [--batches 1,2,4,8] [--layouts A,B,C] [--json results.json]

Backs ``CPU_MAX_BATCH = 1`` in ``pytrickle_worker/engine/inference/batching.py``. On the
YOLOv8n-sized model (``build_yolov8n_like``, dynamic batch axis), CPU provider, session
options like the worker's (spinning off, inter-op 1, sequential, all graph optimisations),
with N = the cores this process may use, per thread layout:

  A  one session with N intra-op threads, run by one thread
  B  N single-thread sessions, one per thread, run concurrently
  C  one single-thread session shared by N threads (the worker's layout)

A try: each thread does ``--frames // B`` runs (at least one) of a batch of B. Rounds are
interleaved (machines here are noisy): each runs every (size, layout, batch) once, in random
order. Per configuration: the median over rounds of frames/s (the sum of the threads' own
rates), of its ratio to batch 1 of the same layout and size in the same round (with the
interquartile range), and of a frame's latency (its batch's ``session.run``). The verdict
per size compares every batch > 1, paired by round, with batch 1 of the layout fastest at
batch 1. Before timing, a batch's outputs are checked against its frames run one by one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pytrickle_worker.devtools.models import build_yolov8n_like

Tensor = npt.NDArray[np.float32]
LAYOUTS = ("A", "B", "C")  # see the docstring


@dataclass
class Try:
    size: int
    layout: str
    batch: int
    round: int
    fps: float
    latency_ms: float


@dataclass
class Row:
    size: int
    layout: str
    batch: int
    fps: float
    ratio: float
    ratio_q1: float
    ratio_q3: float
    latency_ms: float


def session(path: Path, intra: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_try(sessions: list[ort.InferenceSession], x: Tensor, runs: int) -> tuple[float, float]:
    """(frames/s, median run ms) of ``runs`` runs of ``x`` on each session, one thread each."""
    name = sessions[0].get_inputs()[0].name
    barrier = threading.Barrier(len(sessions))
    lock = threading.Lock()
    rates: list[float] = []
    latencies: list[float] = []

    def work(sess: ort.InferenceSession) -> None:
        own: list[float] = []
        barrier.wait()
        started = time.perf_counter()
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            own.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        with lock:  # own rates: the tail where one thread runs alone does not count
            rates.append(runs * len(x) / elapsed)
            latencies.extend(own)

    threads = [
        threading.Thread(target=work, args=(s,), name=f"bench_{i}") for i, s in enumerate(sessions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(rates), statistics.median(latencies) * 1000


def max_abs_diff(sess: ort.InferenceSession, frames: Tensor) -> float:
    """Largest difference between a batch's outputs and its frames run one by one."""
    name = sess.get_inputs()[0].name
    batched = sess.run(None, {name: frames})
    single = [sess.run(None, {name: frames[i : i + 1]}) for i in range(len(frames))]
    return max(
        float(np.max(np.abs(out - np.concatenate([s[k] for s in single]))))
        for k, out in enumerate(batched)
    )


def summarise(
    tries: list[Try], sizes: list[int], layouts: list[str], batches: list[int]
) -> list[Row]:
    fps = {(t.size, t.layout, t.batch, t.round): t.fps for t in tries}
    rounds = sorted({t.round for t in tries})

    def ratios(size: int, layout: str, batch: int, base: str) -> list[float]:
        return [fps[size, layout, batch, r] / fps[size, base, 1, r] for r in rounds]

    rows: list[Row] = []
    print("| size | layout | batch | frames/s | x batch 1 [IQR] | latency ms |")
    print("|---|---|---|---|---|---|")
    for size, layout, batch in itertools.product(sizes, layouts, batches):
        mine = [t for t in tries if (t.size, t.layout, t.batch) == (size, layout, batch)]
        paired = ratios(size, layout, batch, layout)
        q1, q3 = (float(v) for v in np.percentile(paired, [25, 75]))
        fps_median = statistics.median(t.fps for t in mine)
        latency = statistics.median(t.latency_ms for t in mine)
        row = Row(size, layout, batch, fps_median, statistics.median(paired), q1, q3, latency)
        rows.append(row)
        print(
            f"| {size} | {layout} | {batch} | {row.fps:.2f} | {row.ratio:.2f} "
            f"[{q1:.2f}-{q3:.2f}] | {latency:.1f} |"
        )
    print()
    for size in sizes:
        best = max((r for r in rows if r.size == size), key=lambda r: r.fps)
        base = max((r for r in rows if (r.size, r.batch) == (size, 1)), key=lambda r: r.fps)
        beats: list[str] = []
        for layout, batch in itertools.product(layouts, [b for b in batches if b > 1]):
            ratio = statistics.median(ratios(size, layout, batch, base.layout))
            if ratio > 1:
                beats.append(f"{layout}/b{batch} x{ratio:.2f}")
        verdict = f"beaten by {', '.join(beats)}" if beats else "no batch > 1 beats it"
        print(
            f"{size}: best {best.layout}/b{best.batch} {best.fps:.2f} frames/s; "
            f"batch 1 of the best layout {base.layout} {base.fps:.2f} frames/s: {verdict}"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--frames", type=int, default=8, help="frames per thread per try")
    parser.add_argument("--sizes", default="320,640", help="input sizes (multiples of 32)")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--layouts", default="A,B,C", help="of A, B, C")
    parser.add_argument("--json", type=Path, help="write every try and the summary here")
    args = parser.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    batches = sorted({int(v) for v in args.batches.split(",")})
    layouts = args.layouts.split(",")
    if 1 not in batches or min(batches) < 1 or not set(layouts) <= set(LAYOUTS):
        parser.error("--batches must include 1; --layouts are of A, B, C")
    if args.rounds < 1 or args.frames < 1:
        parser.error("--rounds and --frames must be >= 1")
    cores = len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)
    print(
        f"onnxruntime {ort.__version__}, CPU, {cores} cores, {args.rounds} rounds, "
        f"{args.frames} frames per thread per try",
        flush=True,
    )
    picks: dict[tuple[int, str], list[ort.InferenceSession]] = {}
    inputs: dict[int, Tensor] = {}
    diffs: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"yolov8n_like_{size}.onnx"
            build_yolov8n_like(path, imgsz=size, batch=None)
            singles = [session(path, 1) for _ in range(cores)]
            layout_sessions = {"A": [session(path, cores)], "B": singles, "C": [singles[0]] * cores}
            picks.update({(size, lay): layout_sessions[lay] for lay in layouts})
            inputs[size] = rng.uniform(0, 1, (max(batches), 3, size, size)).astype(np.float32)
            diffs[size] = max_abs_diff(singles[0], inputs[size])
            print(f"{size}: batch of {max(batches)} vs one by one, max abs diff {diffs[size]:.3g}")
    for (size, _), sessions in picks.items():  # warm every shape
        for batch in batches:
            run_try(sessions, inputs[size][:batch], 1)
    combos = list(itertools.product(sizes, layouts, batches))
    shuffle = random.Random(1)
    tries: list[Try] = []
    started = time.perf_counter()
    for rnd in range(args.rounds):
        for size, layout, batch in shuffle.sample(combos, len(combos)):
            runs = max(1, args.frames // batch)
            fps, latency = run_try(picks[size, layout], inputs[size][:batch], runs)
            tries.append(Try(size, layout, batch, rnd, fps, latency))
        if rnd % 5 == 4 or rnd == args.rounds - 1:
            elapsed = time.perf_counter() - started
            print(f"[{elapsed:5.0f}s] round {rnd + 1}/{args.rounds}", flush=True)
    print()
    rows = summarise(tries, sizes, layouts, batches)
    if args.json:
        report = {"onnxruntime": ort.__version__, "cores": cores, **vars(args)}
        report |= {"max_abs_diff": diffs, "summary": [asdict(r) for r in rows]}
        report["tries"] = [asdict(t) for t in tries]
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
