"""What the quality studies share (benchmarks/depth_study.py, benchmarks/stem_study.py).

- :func:`ensure_scene`: the synthetic plant of a preset, made when the folder holds no scene;
- :func:`train_and_evaluate`: one training run and its evaluation, reused when the run folder
  already holds ``metrics.json`` (the wall times of the training and the evaluation, the date, the
  machine and its load are kept in ``RUN/study_run.json``); with ``check=True`` a reused run must
  have been trained with the options asked for, else :class:`StudyError` names the differences;
- :func:`machine`: the machine a study ran on;
- :func:`spread` / :func:`fmt_spread`: a figure over training seeds as mean [min, max].

Not a script: the studies import it (they put this folder on ``sys.path``).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

RECORD = "study_run.json"
# train(...) keywords that do not change what a run computes: left out of the reuse check
_RUNTIME_OPTIONS = {"num_threads", "progress", "save_renders", "log_every", "ckpt_every", "overwrite", "verbose"}


class StudyError(RuntimeError):
    """A study cannot go on as asked (a reused run of other options, rows missing for a later
    one); the message says what to do."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None


def machine() -> dict:
    """Host, CPU, core count, Python and torch versions, the load average now."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not on Linux
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "load_average": load_average()}


def ensure_scene(scene: Path, preset: str, seed: int = 0) -> Path:
    """``scene`` itself when it holds a scene (``sparse/``), else the synthetic plant of ``preset``
    made there with plant seed ``seed``."""
    scene = Path(scene)
    if not (scene / "sparse").exists():
        from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

        print(f"{scene}: not found; making the synthetic plant (preset {preset}, seed {seed})", flush=True)
        make_synthetic_scene(SynthConfig(out=scene, preset=preset, seed=seed, progress=False))
    return scene


def option_differences(run_dir: Path, options: dict) -> dict:
    """``{option: (asked, found)}`` for every training option in ``options`` (flat names) that the
    run in ``run_dir`` was trained with a different value of (its config.json)."""
    from s3dgs.config import flat_names, load_run_config

    rc = load_run_config(run_dir)
    if not rc["found"]:
        return {"config.json": ("present", "missing")}
    names, cfg, out = flat_names(), rc["train"], {}
    for k, v in options.items():
        if k in _RUNTIME_OPTIONS or k not in names:
            continue
        found = functools.reduce(getattr, names[k].split("."), cfg)
        asked = tuple(v) if isinstance(found, tuple) and isinstance(v, list) else v
        if found != asked:
            out[k] = (asked, found)
    return out


def train_and_evaluate(run_dir: Path, scene: Path, options: dict, *, threads: int = 0, max_views: int = 0,
                       log_every: int | None = None, check: bool = False, label: str | None = None) -> tuple[dict, dict]:
    """Train ``scene`` into ``run_dir`` with ``options`` (``s3dgs.train.train``'s flat keywords,
    ``num_iterations`` and ``seed`` among them) and evaluate it on its held-out views (the first
    ``max_views``; 0: all), unless ``run_dir/metrics.json`` exists: then that run is reused (with
    ``check``, only when it was trained with ``options``). A folder without metrics.json (an
    interrupted run) is trained again from scratch.

    Returns ``(metrics, record)``: the evaluation (RUN/metrics.json) and RUN/study_run.json
    (``date``, ``train_wall_s``, ``eval_wall_s``, ``wall_s``, ``threads``, ``load_average``,
    ``host``) plus ``reused``."""
    from s3dgs.evaluate import evaluate_run
    from s3dgs.train import train

    run_dir, label = Path(run_dir), label or Path(run_dir).name
    rec_path = run_dir / RECORD
    if (run_dir / "metrics.json").exists():
        if check:
            diff = option_differences(run_dir, options)
            if diff:
                what = "; ".join(f"{k}: asked {a!r}, found {f!r}" for k, (a, f) in diff.items())
                raise StudyError(f"{run_dir}: a finished run of other options ({what}); use another --out, "
                                 "or delete the folder to train it again")
        m = json.loads((run_dir / "metrics.json").read_text())
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        return m, {**rec, "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    n = int(options.get("num_iterations", 7000))
    rec = {"date": now_iso(), "host": platform.node(), "threads": threads, "load_average": load_average()}
    t = time.perf_counter()
    train(scene=scene, out_dir=run_dir, num_threads=threads, progress=False, save_renders=False,
          log_every=log_every or max(1, n // 5), ckpt_every=10 * n + 1, **options)
    rec["train_wall_s"] = time.perf_counter() - t
    print(f"[{label}] trained in {rec['train_wall_s']:.1f} s", flush=True)
    t = time.perf_counter()
    m = evaluate_run(run_dir, scene, max_views=max_views)
    rec["eval_wall_s"] = time.perf_counter() - t
    rec["wall_s"] = rec["train_wall_s"] + rec["eval_wall_s"]
    rec["load_average_end"] = load_average()
    rec_path.write_text(json.dumps(rec, indent=2))
    return m, {**rec, "reused": False}


def spread(values) -> dict | None:
    """``{"mean", "min", "max", "n", "values"}`` of the values that are not None (None when none is)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "min": min(v), "max": max(v), "n": len(v), "values": v}


def fmt_spread(s: dict | None, fmt: str = "{:.3f}") -> str:
    """``mean [min, max]`` (only the value when there is one), ``–`` for None."""
    if s is None:
        return "–"
    if s["n"] == 1:
        return fmt.format(s["mean"])
    return f"{fmt.format(s['mean'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"


def earlier_presets(path: Path) -> dict:
    """The ``presets`` of a study's earlier JSON at ``path`` (kept when another preset is run into
    the same folder); ``{}`` when there is none or it does not parse."""
    try:
        return json.loads(Path(path).read_text()).get("presets", {})
    except (OSError, json.JSONDecodeError):
        return {}


def write_study(out: Path, name: str, result: dict, markdown: str, command: str) -> None:
    """Stamp ``result`` (machine, date, command) and write OUT/NAME.json and OUT/NAME.md atomically;
    print the table and where the files are."""
    from s3dgs.atomic import atomic_write_text

    out = Path(out)
    result.update(machine=machine(), date=now_iso(), command=command)
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2, default=str))
    atomic_write_text(out / f"{name}.md", markdown(result))
    print(markdown(result))
    print(f"-> {out / (name + '.md')}, {out / (name + '.json')}, {out / 'plots'}")
