"""`s3dgs batch` throughput: plants per hour for 1 and 2 concurrent plants on this machine, Ray's
overhead per task against the same plants in a loop in one process, and a projection to a 64-core
and an 8-GPU cluster for 1,000 plants. Prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/batch.py [--plants 6] [--iterations 300] [--out DIR]

Plants: ``--plants`` tiny synthetic scenes (`s3dgs synth --preset tiny`, seeds 0..N-1) given to
`s3dgs run` as prepared scenes; every plant runs the whole chain (train, eval, export, phenotype,
report) with one torch thread (``--num-threads 1``) in every mode, so the modes differ only in how
they are scheduled:

- ``loop``: `run_pipeline` for each plant in turn in this process (after one warm-up plant, so the
  imports and the native kernels' load are not counted);
- ``ray_1``: `run_batch` on an embedded 2-CPU Ray cluster with ``--cpus-per-plant 2`` (one plant at
  a time); ``ray_2``: ``--cpus-per-plant 1`` (two at a time).

Ray's overhead per task = (ray_1 wall - results - loop wall) / plants, with Ray's workers warm (a
one-plant warm-up batch runs first, as the loop's warm-up plant does): the task's scheduling, the
arguments and result through Ray, the stamps read for the progress bar. ``results_s`` (the table,
parquet and index of the batch, once per batch) is measured apart, and so are the one-time costs:
``ray_cluster_start_s`` and ``cold_worker_batch_s`` (the warm-up batch: a fresh worker imports torch
and s3dgs). ``noop_task_ms`` is the round trip of an empty task on a warm worker.

The projection scales the measured per-plant time: a 64-core cluster runs 64 one-CPU plants at once
with the 2-plant parallel efficiency measured here; an 8-GPU cluster runs 8 plants at once, at a
per-plant time that this CPU-only machine cannot measure (given as a formula of it, with the CPU
figure as an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plants", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)

    import contextlib

    import ray
    import torch
    import tyro

    from s3dgs import batch as B
    from s3dgs.pipeline import run_pipeline
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="s3dgs_batch_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    scenes = work / "plants"
    for i in range(args.plants + 1):  # the last one is the loop's warm-up plant
        if not (scenes / f"p{i:02d}" / "sparse").is_dir():
            with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON only
                make_synthetic_scene(SynthConfig(out=scenes / f"p{i:02d}", preset="tiny", seed=i))
    warm = scenes / f"p{args.plants:02d}"
    shutil.move(str(warm), str(work / "warmup"))
    opts = ["--num-iterations", str(args.iterations), "--no-progress", "--num-threads", "1",
            "--no-save-renders"]
    options = tyro.cli(B.PlantOptions, args=opts)
    plants = B.read_plants(scenes)

    # loop: the same chain, plant after plant, in this process
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        run_pipeline(B.plant_run_config(options, B.Plant("warm", work / "warmup"), work / "loop_warm", 1),
                     say=lambda m: None)
        t0 = time.perf_counter()
        per_plant = []
        for p in plants:
            t1 = time.perf_counter()
            run_pipeline(B.plant_run_config(options, p, work / "loop", 1), say=lambda m: None)
            per_plant.append(time.perf_counter() - t1)
        loop_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start_s = time.perf_counter() - t0
    res = {}
    try:
        warm_dir = work / "ray_warm_plants"
        warm_dir.mkdir(exist_ok=True)
        shutil.copytree(work / "warmup", warm_dir / "warm", dirs_exist_ok=True)
        t0 = time.perf_counter()
        B.run_batch(B.BatchConfig(plants=warm_dir, out=work / "ray_warm", run=options, cpus_per_plant=1.0,
                                  retries=0), say=lambda m: None)
        cold_s = time.perf_counter() - t0
        for name, cpus in (("ray_1", 2.0), ("ray_2", 1.0)):
            cfg = B.BatchConfig(plants=scenes, out=work / name, run=options, cpus_per_plant=cpus, retries=0)
            t0 = time.perf_counter()
            r = B.run_batch(cfg, say=lambda m: None)
            wall = time.perf_counter() - t0
            state = json.loads((work / name / "batch.json").read_text())
            t1 = time.perf_counter()
            rows = B.collect_results(work / name, plants, state)
            B.write_tables(work / name, rows)
            B.write_index(work / name, plants, state, rows)
            res[name] = {"wall_s": wall, "failed": r["failed"], "results_s": time.perf_counter() - t1,
                         "in_task_s": sum(v["seconds"] for v in state["plants"].values())}
        noop = ray.remote(num_cpus=1)(lambda: None)
        ray.get(noop.remote())
        ts = []
        for _ in range(20):
            t1 = time.perf_counter()
            ray.get(noop.remote())
            ts.append(time.perf_counter() - t1)
    finally:
        ray.shutdown()
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)

    n = len(plants)
    plant_s = loop_s / n
    overhead = (res["ray_1"]["wall_s"] - res["ray_1"]["results_s"] - loop_s) / n
    # Ray's time around the tasks: the batch's wall time less the tasks' own (as they measure it)
    outside = (res["ray_1"]["wall_s"] - res["ray_1"]["results_s"] - res["ray_1"]["in_task_s"]) / n
    eff2 = (res["ray_1"]["wall_s"] / res["ray_2"]["wall_s"]) / 2.0
    per_hour_ideal = 64 * 3600.0 / (plant_s + max(outside, 0.0))
    per_hour_64 = 64 * 3600.0 / plant_s * eff2
    load = os.getloadavg()
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other users; load average "
                   f"{load[0]:.2f} at the end), torch {torch.__version__}, ray {ray.__version__}",
        "command": "OMP_NUM_THREADS=1 python benchmarks/batch.py " + " ".join(argv or sys.argv[1:]),
        "plants": n, "preset": "tiny", "iterations": args.iterations,
        "loop": {"wall_s": round(loop_s, 2), "plant_s_median": round(sorted(per_plant)[n // 2], 2),
                 "plants_per_hour": round(3600 * n / loop_s, 1)},
        "ray_1_concurrent": {"wall_s": round(res["ray_1"]["wall_s"], 2),
                             "plants_per_hour": round(3600 * n / res["ray_1"]["wall_s"], 1),
                             "failed": res["ray_1"]["failed"], "results_s": round(res["ray_1"]["results_s"], 2),
                             "sum_of_task_s": round(res["ray_1"]["in_task_s"], 2)},
        "ray_2_concurrent": {"wall_s": round(res["ray_2"]["wall_s"], 2),
                             "plants_per_hour": round(3600 * n / res["ray_2"]["wall_s"], 1),
                             "failed": res["ray_2"]["failed"],
                             "parallel_efficiency": round(eff2, 3)},
        "ray_cluster_start_s": round(ray_start_s, 2),
        "cold_worker_batch_s": round(cold_s, 2),
        "ray_overhead_per_task_s": round(overhead, 3),
        "ray_overhead_pct_of_plant": round(100 * overhead / plant_s, 1),
        "ray_outside_task_s_per_task": round(outside, 3),
        "ray_outside_task_pct_of_plant": round(100 * outside / plant_s, 2),
        "noop_task_ms": round(1000 * sorted(ts)[len(ts) // 2], 2),
        "projection_1000_plants": {
            "cpu_64_cores": {"assumes": "one CPU per plant, the measured tiny-plant time and 2-plant parallel "
                                        "efficiency, Ray's measured overhead per task",
                             "plants_per_hour": round(per_hour_64, 0),
                             "hours": round(1000 / per_hour_64, 3),
                             "plants_per_hour_ideal_scaling": round(per_hour_ideal, 0),
                             "hours_ideal_scaling": round(1000 / per_hour_ideal, 3)},
            "gpu_8": {"assumes": "one plant per GPU, 8 at a time; per-plant GPU time T_gpu not measurable "
                                 "here (no GPU): hours = 1000 * (T_gpu + overhead) / 8 / 3600",
                      "hours_if_T_gpu_equals_this_cpu_time": round(1000 * (plant_s + overhead) / 8 / 3600, 3)},
        },
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
