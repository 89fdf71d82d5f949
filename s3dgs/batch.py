"""`s3dgs batch PLANTS OUT`: the `s3dgs run` chain over many plants, scheduled on Ray.

PLANTS is a folder of plant inputs (each entry one plant: a video, a folder of frames, a prepared
scene, a ROMI scan; ``plant_id`` is the entry's name, a file's without its extension) or a CSV
manifest::

    plant_id,input,date,genotype,treatment,num_iterations
    p001,scans/p001.mp4,2026-05-01,M82,drought,
    p002,scans/p002,2026-05-01,M82,control,3000

``plant_id`` and ``input`` (relative to the manifest's folder) are required; a column named like an
`s3dgs run` option (``num_iterations`` or ``num-iterations``; booleans ``true``/``false``; paths
relative to the manifest) overrides that option for its plant, an empty cell keeps the command's;
every other column (date, genotype, treatment, block, ...) is carried into the results.

Every plant is one Ray task running :func:`s3dgs.pipeline.run_pipeline` into ``OUT/<plant_id>/``
(resumable stage by stage, as `s3dgs run` is), asking for ``--cpus-per-plant`` CPUs and
``--gpus-per-plant`` GPUs, so the cluster's resources set how many run at once. ``--address`` joins
a running cluster (``ray start --head`` on one machine, ``ray start --address ...`` on the others,
s3dgs installed and PLANTS/OUT on a shared file system on every node); without it an embedded local
cluster starts inside the command (``--num-cpus``, default all of the machine's).

Failures: an `S3dgsError` (a user error: a broken input, a bad option) is deterministic, so the
plant is recorded as failed with its message at once; any other exception, and a worker that dies
(killed, out of memory), is retried ``--retries`` times (Ray's ``max_retries`` with
``retry_exceptions``), each try continuing from the plant's stamps and last checkpoint. One plant
failing never stops the others. ``OUT/batch.json`` records each plant's status, time, tries and
error; a rerun skips the plants done with the same options and continues the others.

Results: ``OUT/phenotypes.csv`` and ``OUT/phenotypes.parquet`` (one row per plant, ``scope``
"plant", and one per internode, ``scope`` "internode", with the manifest's columns) and
``OUT/index.html`` (the plants with status, time, key traits, a thumbnail and a link to each report;
plots of each trait by genotype/treatment and over date when the manifest has those columns).

Test hook (tests only): the environment variable ``S3DGS_BATCH_TEST_KILL=PLANT_ID:MARKER`` makes the
first try of that plant SIGKILL its own worker as soon as its first checkpoint is written, once
(``MARKER`` is created so the retry runs through): it exercises a worker dying mid-training.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import hashlib
import html
import io
import json
import os
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import tyro

from s3dgs.atomic import atomic_write, atomic_write_text
from s3dgs.errors import S3dgsError, UsageError
from s3dgs.options import opt
from s3dgs.pipeline import RunConfig

__all__ = ["BatchConfig", "PlantOptions", "Plant", "read_plants", "plant_run_config", "run_batch",
           "batch_main", "collect_results", "write_index", "BatchError"]

TEST_KILL_ENV = "S3DGS_BATCH_TEST_KILL"
GROUP_COLUMNS = ("genotype", "treatment")
KEY_TRAITS = ("plant_height", "stem_length", "node_count", "organ_count", "stem_diameter_median")


class BatchError(S3dgsError, RuntimeError):
    """The batch cannot start (PLANTS unreadable, Ray unavailable); the message names the fix."""


# -----------------------------------------------------------------------------------------------
# options: every `s3dgs run` option but INPUT and OUT, taken from RunConfig (never redeclared)
# -----------------------------------------------------------------------------------------------

def _plant_options_class() -> type:
    """A dataclass with RunConfig's fields minus ``input`` and ``out``, each with its own help and
    the same flat command-line name as on `s3dgs run` (``stages`` is StageOptions, nested as is)."""
    from tyro._docstrings import get_field_docstring
    from tyro.conf._confstruct import _ArgConfig

    from s3dgs.options import reflow_help

    reflow_help(RunConfig)  # the help texts as `s3dgs run` shows them (sentences not broken)
    hints = typing.get_type_hints(RunConfig, include_extras=True)
    fields = []
    for f in dataclasses.fields(RunConfig):
        if f.name in ("input", "out"):
            continue
        tp = hints[f.name]
        if f.name != "stages":
            if typing.get_origin(tp) is Annotated:
                base, meta = typing.get_args(tp)[0], list(typing.get_args(tp)[1:])
            else:
                base, meta = tp, []
            argcs = [m for m in meta if isinstance(m, _ArgConfig)]
            old = argcs[0] if argcs else tyro.conf.arg()
            helptext = next((m.help for m in reversed(argcs) if m.help), None)
            meta = [m for m in meta if not isinstance(m, _ArgConfig)]
            doc = get_field_docstring(RunConfig, f.name, ())
            tp = Annotated.__class_getitem__((base, *meta, dataclasses.replace(old, prefix_name=False,
                                                                                help=helptext or doc)))
        if f.default_factory is not dataclasses.MISSING:
            new = field(default_factory=f.default_factory)
        else:
            new = field(default=f.default)
        fields.append((f.name, tp, new))
    cls = dataclasses.make_dataclass("PlantOptions", fields)
    cls.__module__ = __name__
    cls.__doc__ = "Every `s3dgs run` option, applied to every plant (a manifest column may override one)."
    return cls


PlantOptions = _plant_options_class()


@dataclass
class BatchConfig:
    """`s3dgs run` over a folder or CSV manifest of plants, on Ray: one table and one index page."""

    plants: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="PLANTS")]
    """A folder of plant inputs (videos, frame folders, prepared scenes, ROMI scans; plant_id is
    the entry's name) or a CSV manifest (plant_id,input plus any columns: date, genotype, ...)."""
    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Output folder: OUT/<plant_id>/ per plant (as `s3dgs run` writes it), OUT/batch.json,
    OUT/phenotypes.csv, OUT/phenotypes.parquet, OUT/index.html."""
    run: PlantOptions = field(default_factory=PlantOptions)  # type: ignore[valid-type]
    cpus_per_plant: Annotated[float, opt("N")] = 1.0
    """CPUs each plant's task asks Ray for (also its torch threads, rounded down, at least 1)."""
    gpus_per_plant: Annotated[float, opt("N")] = 0.0
    """GPUs each plant's task asks Ray for (a fraction shares a GPU; 0: CPU only)."""
    retries: Annotated[int, opt("N")] = 1
    """Tries after the first for a plant whose worker died or that raised an unexpected error
    (errors a user can fix, like a broken input, are recorded at once)."""
    address: Annotated[Optional[str], opt("HOST:PORT", "an embedded local cluster")] = None
    """A running Ray cluster to join (e.g. auto, or 10.0.0.1:6379); s3dgs must be installed and
    PLANTS/OUT reachable at the same paths on every node."""
    num_cpus: Annotated[Optional[int], opt("N", "all of this machine's")] = None
    """CPUs of the embedded local cluster (without --address)."""

    def validate(self) -> None:
        from s3dgs.validate import non_negative, positive

        positive("--cpus-per-plant", self.cpus_per_plant)
        non_negative("--gpus-per-plant", self.gpus_per_plant)
        non_negative("--retries", self.retries)
        if self.num_cpus is not None:
            positive("--num-cpus", self.num_cpus)
        if not self.plants.exists():
            raise UsageError(f"{self.plants}: PLANTS does not exist (a folder of plant inputs or a CSV manifest)")
        run_config(self.run, Path("INPUT"), Path("OUT")).validate()


def run_config(options, input: Path, out: Path) -> RunConfig:
    """The RunConfig of one plant: ``options`` (a PlantOptions) with its INPUT and OUT."""
    kw = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return RunConfig(input=Path(input), out=Path(out), **kw)


# -----------------------------------------------------------------------------------------------
# plants
# -----------------------------------------------------------------------------------------------

@dataclass
class Plant:
    plant_id: str
    input: Path
    columns: dict = field(default_factory=dict)
    """The manifest's other columns (carried into the results), as text."""
    overrides: dict = field(default_factory=dict)
    """Option name (dashed) -> text, from manifest columns named like a run option."""


def _option_names(cls) -> dict:
    """Dashed command-line name -> field type of every leaf option of PlantOptions (recursively)."""
    from tyro.conf._confstruct import _ArgConfig

    names: dict = {}

    def walk(c):
        hints = typing.get_type_hints(c, include_extras=True)
        for f in dataclasses.fields(c):
            tp = hints.get(f.name, f.type)
            meta = typing.get_args(tp)[1:] if typing.get_origin(tp) is Annotated else ()
            base = typing.get_args(tp)[0] if meta else tp
            if dataclasses.is_dataclass(base):
                walk(base)
                continue
            arg = next((m for m in meta if isinstance(m, _ArgConfig)), None)
            name = arg.name if arg is not None and arg.name else f.name.replace("_", "-")
            names[name] = base

    walk(cls)
    return names


_PATH_OPTIONS = ("keypoints", "depth-dir", "reference", "class-table")


def read_plants(plants: Path, exclude: Optional[Path] = None) -> list[Plant]:
    """The plants of a folder (one per entry not starting with '.'; ``exclude``, e.g. OUT inside
    PLANTS, left out) or of a CSV manifest.

    Raises UsageError naming the manifest line for a missing column, a duplicate or empty id."""
    plants = Path(plants)
    out: list[Plant] = []
    if plants.is_dir():
        for p in sorted(plants.iterdir()):
            if p.name.startswith(".") or (exclude is not None and p.resolve() == Path(exclude).resolve()):
                continue
            out.append(Plant(p.stem if p.is_file() else p.name, p.resolve()))
        if not out:
            raise UsageError(f"{plants}: PLANTS holds no plant input (videos, frame folders, scenes, ROMI scans)")
    else:
        try:
            text = plants.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{plants}: cannot read the manifest ({exc}); PLANTS is a folder or a CSV file") from exc
        rows = list(csv.DictReader(io.StringIO(text)))
        header = [h.strip() for h in (csv.DictReader(io.StringIO(text)).fieldnames or [])]
        missing = [c for c in ("plant_id", "input") if c not in header]
        if missing:
            raise UsageError(f"{plants}: the manifest needs the columns plant_id and input (missing "
                             f"{', '.join(missing)}; found {', '.join(header) or 'no header'})")
        names = _option_names(PlantOptions)
        for i, row in enumerate(rows, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            pid, inp = row.pop("plant_id"), row.pop("input")
            if not pid or not inp:
                raise UsageError(f"{plants}, line {i}: plant_id and input must not be empty")
            if "/" in pid or pid.startswith("."):
                raise UsageError(f"{plants}, line {i}: plant_id {pid!r} must be a plain name (no '/', "
                                 "not starting with '.'): it names OUT/<plant_id>")
            cols, over = {}, {}
            for k, v in row.items():
                dashed = k.replace("_", "-")
                if dashed in names:
                    if v != "":
                        if dashed in _PATH_OPTIONS and not Path(v).is_absolute():
                            v = str((plants.parent / v).resolve())
                        over[dashed] = v
                else:
                    cols[k] = v
            path = Path(inp)
            out.append(Plant(pid, (path if path.is_absolute() else plants.parent / path).resolve(), cols, over))
    seen: dict = {}
    for p in out:
        if p.plant_id in seen:
            raise UsageError(f"{plants}: plant_id {p.plant_id!r} appears twice ({seen[p.plant_id]} and "
                             f"{p.input}); each plant needs its own id")
        seen[p.plant_id] = p.input
    return out


def plant_options(options, plant: Plant, where: str = ""):
    """``options`` with the plant's manifest overrides applied (parsed as on the command line, then
    validated). Raises UsageError naming the plant and the column."""
    if not plant.overrides:
        return options
    names = _option_names(PlantOptions)
    args: list[str] = []
    for name, value in plant.overrides.items():
        tp = names[name]
        if tp is bool:
            v = value.lower()
            if v not in ("true", "false", "1", "0", "yes", "no"):
                raise UsageError(f"{where}plant {plant.plant_id}: column {name}={value!r}: expected true or false")
            args.append(f"--{name}" if v in ("true", "1", "yes") else f"--no-{name}")
        elif typing.get_origin(tp) is tuple:
            args += [f"--{name}", *value.split()]
        else:
            args += [f"--{name}", value]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
            new = tyro.cli(PlantOptions, args=args, default=options)
    except SystemExit:
        raise UsageError(f"{where}plant {plant.plant_id}: the manifest's options {' '.join(args)} do not "
                         "parse (see `s3dgs batch --help` for their values)") from None
    try:
        run_config(new, plant.input, Path("OUT")).validate()
    except UsageError as exc:
        raise UsageError(f"{where}plant {plant.plant_id}: manifest column: {exc}") from None
    return new


def plant_run_config(options, plant: Plant, out: Path, cpus: float) -> RunConfig:
    """The `s3dgs run` configuration of one plant of the batch: no progress bars inside a task,
    torch threads from --cpus-per-plant unless --num-threads was given."""
    cfg = run_config(copy_options(options), plant.input, Path(out) / plant.plant_id)
    cfg.stages.train.progress = False
    if cfg.stages.train.num_threads == 0:
        cfg.stages.train.num_threads = max(1, int(cpus))
    return cfg


def copy_options(options):
    import copy

    return copy.deepcopy(options)


def config_key(cfg: RunConfig) -> str:
    """A hash of a plant's whole run configuration (a changed option resubmits the plant)."""
    d = dataclasses.asdict(cfg)
    d["stages"]["train"].pop("progress", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -----------------------------------------------------------------------------------------------
# the task
# -----------------------------------------------------------------------------------------------

def _kill_after_first_checkpoint(run: Path, marker: Path) -> None:
    """Test hook (see the module docstring): SIGKILL this process once a checkpoint exists."""
    import signal
    import threading

    def watch():
        while True:
            if any((run / "ckpts").glob("ckpt_*.pt")):
                marker.write_text("killed\n")
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


def plant_task(cfg: RunConfig, plant_id: str, kill_marker: Optional[str] = None) -> dict:
    """One plant: `s3dgs run`'s chain into cfg.out, its output in OUT/<plant_id>/batch.log.

    Returns {"plant_id", "status": "done"|"failed", "seconds", "attempt", "error"}; raises for an
    unexpected error (Ray retries it)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "batch.log"
    prev = log_path.read_text().count("[batch] try ") if log_path.is_file() else 0
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(max(1, cfg.stages.train.num_threads))
    with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"[batch] try {prev + 1} of plant {plant_id} on pid {os.getpid()} at {time.strftime('%H:%M:%S')}")
        if kill_marker and not Path(kill_marker).exists():
            _kill_after_first_checkpoint(out / "run", Path(kill_marker))
        import logging

        handler = logging.StreamHandler(log)
        logging.getLogger("s3dgs").addHandler(handler)
        try:
            from s3dgs.pipeline import run_pipeline

            run_pipeline(cfg, say=print)
        except S3dgsError as exc:
            print(f"[batch] failed: {exc}")
            return {"plant_id": plant_id, "status": "failed", "seconds": time.perf_counter() - t0,
                    "attempt": prev + 1, "error": str(exc)}
        finally:
            logging.getLogger("s3dgs").removeHandler(handler)
        print(f"[batch] done in {time.perf_counter() - t0:.1f} s")
    return {"plant_id": plant_id, "status": "done", "seconds": time.perf_counter() - t0,
            "attempt": prev + 1, "error": ""}


# -----------------------------------------------------------------------------------------------
# progress
# -----------------------------------------------------------------------------------------------

_MAIN = ("prepare", "train", "eval", "export", "phenotype", "report")


def plant_stage(folder: Path) -> str:
    """Where a plant's chain is, from its stamps: "queued" (not started), the stage running now
    (the one after the last finished among prepare, train, eval, export, phenotype, report)."""
    stamps = Path(folder) / "stages"
    if not (Path(folder) / "batch.log").is_file():
        return "queued"
    done = [s for s in _MAIN if (stamps / f"{s}.json").is_file()]
    if not done:
        return "prepare"
    i = _MAIN.index(done[-1])
    return _MAIN[i + 1] if i + 1 < len(_MAIN) else "report"


# -----------------------------------------------------------------------------------------------
# the batch
# -----------------------------------------------------------------------------------------------

def _read_state(out: Path) -> dict:
    p = out / "batch.json"
    if not p.is_file():
        return {"plants": {}}
    try:
        data = json.loads(p.read_text())
        return data if isinstance(data.get("plants"), dict) else {"plants": {}}
    except (OSError, json.JSONDecodeError):
        return {"plants": {}}


def _write_state(out: Path, state: dict) -> None:
    atomic_write_text(out / "batch.json", json.dumps(state, indent=2, default=str))


def _check_reachable(address: str) -> None:
    """Fail at once, naming --address, when HOST:PORT does not answer (Ray itself would keep
    retrying for minutes). "auto" (the cluster started on this machine) is left to Ray."""
    import socket

    addr = address.split("://", 1)[-1]
    if addr in ("auto", "local") or ":" not in addr:
        return
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise BatchError(f"--address {address}: no Ray cluster answers there ({exc}); start one with "
                         "`ray start --head` (it prints the address), or leave --address out to run on "
                         "this machine") from None


def _init_ray(cfg: BatchConfig):
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        raise BatchError(f"Ray is not installed ({exc}): pip install 'ray==2.60.0'") from exc
    started = False
    if not ray.is_initialized():
        if cfg.address:
            _check_reachable(cfg.address)
        try:
            if cfg.address:
                ray.init(address=cfg.address, log_to_driver=False)
            else:
                ray.init(num_cpus=cfg.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BatchError(f"--address {cfg.address}: cannot join the Ray cluster ({exc}); start one with "
                             "`ray start --head`, or leave --address out for a local one. A cluster started "
                             "with Ray's token authentication (the default since Ray 2.5x) needs the same "
                             "token on this machine (RAY_AUTH_TOKEN or ~/.ray/auth_token), or the cluster and "
                             "this command both run with RAY_AUTH_MODE=disabled on a trusted network"
                             if cfg.address else f"cannot start a local Ray cluster: {exc}") from exc
        started = True
    return ray, started


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # a RayTaskError's text ends with the original exception's line; a dead worker says why it died
    return (lines[-1] if lines else type(exc).__name__)[:500]


def run_batch(cfg: BatchConfig, say=print) -> dict:
    """Run (or continue) the batch; returns {"plants": {id: record}, "csv", "parquet", "index"}."""
    from tqdm import tqdm

    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plants = read_plants(cfg.plants, exclude=out)
    where = f"{cfg.plants}: "
    configs = {p.plant_id: plant_run_config(plant_options(cfg.run, p, where), p, out, cfg.cpus_per_plant)
               for p in plants}
    state = _read_state(out)
    recs = state["plants"]
    todo = []
    for p in plants:
        key = config_key(configs[p.plant_id])
        r = recs.get(p.plant_id)
        if r and r.get("status") == "done" and r.get("key") == key and (out / p.plant_id / "stages" / "report.json").is_file():
            continue
        recs[p.plant_id] = {**(r or {}), "status": "pending", "key": key, "input": str(p.input)}
        todo.append(p)
    for p in plants:
        recs[p.plant_id].update({"columns": p.columns, "input": str(p.input)})
    state.update({"plants_file": str(Path(cfg.plants).resolve()), "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
    _write_state(out, state)
    say(f"s3dgs batch: {len(plants)} plants, {len(plants) - len(todo)} already done, {len(todo)} to run -> {out}")

    if todo:
        ray, started = _init_ray(cfg)
        try:
            res = ray.cluster_resources()
            conc = int(res.get("CPU", 0) // cfg.cpus_per_plant)
            if cfg.gpus_per_plant > 0:
                conc = min(conc, int(res.get("GPU", 0) // cfg.gpus_per_plant))
            if conc < 1:
                raise BatchError(f"the Ray cluster has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs: "
                                 f"not enough for one plant (--cpus-per-plant {cfg.cpus_per_plant:g}, "
                                 f"--gpus-per-plant {cfg.gpus_per_plant:g})")
            say(f"Ray: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs: {conc} plant(s) at a time")
            _schedule(ray, cfg, todo, configs, out, state, say, tqdm)
        finally:
            if started:
                ray.shutdown()
    table = collect_results(out, plants, state)
    files = write_tables(out, table)
    index = write_index(out, plants, state, table)
    n_failed = sum(1 for p in plants if recs[p.plant_id]["status"] != "done")
    say(f"{len(plants) - n_failed} done, {n_failed} failed; table: {files['csv']}; index: {index}")
    return {"plants": {p.plant_id: recs[p.plant_id] for p in plants}, "failed": n_failed, **files,
            "index": index}


def _schedule(ray, cfg, todo, configs, out, state, say, tqdm) -> None:
    recs = state["plants"]
    spec = os.environ.get(TEST_KILL_ENV, "")
    kill_id, _, kill_marker = spec.partition(":")
    task = ray.remote(num_cpus=cfg.cpus_per_plant, num_gpus=cfg.gpus_per_plant, max_retries=cfg.retries,
                      retry_exceptions=True)(plant_task)
    refs = {}
    for p in todo:
        marker = kill_marker if spec and p.plant_id == kill_id else None
        refs[task.remote(configs[p.plant_id], p.plant_id, marker)] = p.plant_id
    total = len(configs)
    bar = tqdm(total=total, initial=total - len(todo), unit="plant", desc="s3dgs batch",
               disable=not cfg.run.stages.train.progress, dynamic_ncols=True)
    write = bar.write if not bar.disable else say
    pending = dict(refs)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            counts: dict = {}
            for pid in pending.values():
                s = plant_stage(out / pid)
                counts[s] = counts.get(s, 0) + 1
            bar.set_postfix({s: counts[s] for s in ("queued", *_MAIN) if s in counts}, refresh=False)
            for ref in ready:
                pid = pending.pop(ref)
                try:
                    r = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - any failure of a task is recorded, not raised
                    tries = _tries(out / pid)
                    r = {"status": "failed", "seconds": None, "attempt": tries,
                         "error": f"{type(exc).__name__}: {_error_text(exc)}"}
                recs[pid].update({"status": r["status"], "seconds": r["seconds"], "tries": r["attempt"],
                                  "error": r["error"], "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
                _write_state(out, state)
                bar.update(1)
                if r["status"] == "done":
                    write(f"{pid}: done in {r['seconds']:.1f} s" + (f" (try {r['attempt']})" if r["attempt"] > 1 else ""))
                else:
                    write(f"{pid}: FAILED after {r['attempt']} tr{'y' if r['attempt'] == 1 else 'ies'}: {r['error']}")
            bar.refresh()
    finally:
        bar.close()


def _tries(folder: Path) -> int:
    log = folder / "batch.log"
    return log.read_text().count("[batch] try ") if log.is_file() else 0


# -----------------------------------------------------------------------------------------------
# results
# -----------------------------------------------------------------------------------------------

def _num(v) -> Any:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _plant_traits(ph: dict) -> tuple[dict, list[dict]]:
    """(plant traits, internode rows) of a phenotypes.json: the class-based tomato traits or a
    geometry sequence (``organs``, ``internodes`` as rows or numbers, ``angles_deg``)."""
    plant = {}
    for k, v in (ph.get("plant") or {}).items():
        if _num(v) is not None or v is None:
            plant[k] = v
    for k in ("plant_height", "stem_length", "organ_count", "node_count"):
        if k not in plant and _num(ph.get(k)) is not None:
            plant[k] = ph[k]
    seq = ph.get("sequence") or {}
    angles = ph.get("angles_deg", seq.get("angles_deg")) or []
    inter = ph.get("internodes") or seq.get("internodes") or []
    rows = []
    for i, it in enumerate(inter):
        if isinstance(it, dict):
            row = {"internode": it.get("index", i + 1)}
            for k, v in it.items():
                if k != "index" and (_num(v) is not None or v is None):
                    row[f"internode_{k}" if not k.startswith("internode") else k] = v
            if "internode_angle_deg" not in row and i < len(angles):
                row["internode_angle_deg"] = _num(angles[i])
        else:
            row = {"internode": i + 1, "internode_length": _num(it),
                   "internode_angle_deg": _num(angles[i]) if i < len(angles) else None}
        rows.append(row)
    if "organ_count" not in plant and isinstance(ph.get("organs"), list) and ph.get("method") == "geometry":
        plant["organ_count"] = len(ph["organs"]) or None
    plant["internode_count"] = len(rows)
    plant["units"] = ph.get("units")
    plant["measured_by"] = ph.get("measured_by", ph.get("method"))
    return plant, rows


def collect_results(out: Path, plants: list[Plant], state: dict) -> list[dict]:
    """One row per plant (``scope`` "plant": status, time, error, traits) and one per internode
    (``scope`` "internode"), each with the manifest's columns."""
    rows = []
    for p in plants:
        r = state["plants"].get(p.plant_id, {})
        base = {"plant_id": p.plant_id, **p.columns}
        plant = {"scope": "plant", **base, "status": r.get("status"), "seconds": r.get("seconds"),
                 "tries": r.get("tries"), "error": r.get("error") or None, "input": str(p.input)}
        inter: list[dict] = []
        f = out / p.plant_id / "run" / "phenotypes.json"
        if r.get("status") == "done" and f.is_file():
            try:
                traits, inter = _plant_traits(json.loads(f.read_text()))
                plant.update(traits)
            except (OSError, json.JSONDecodeError) as exc:
                plant["error"] = f"{f}: unreadable ({exc})"
        rows.append(plant)
        rows += [{"scope": "internode", **base, **i} for i in inter]
    return rows


def write_tables(out: Path, rows: list[dict]) -> dict:
    """OUT/phenotypes.csv and OUT/phenotypes.parquet (the same rows and columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    csv_path = atomic_write_text(out / "phenotypes.csv", buf.getvalue())
    data = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        kinds = {type(v) for v in vals if v is not None}
        if kinds and kinds <= {int, float} and float in kinds:
            vals = [None if v is None else float(v) for v in vals]
        elif kinds and not kinds <= {int, float}:
            vals = [None if v is None else str(v) for v in vals]
        data[c] = vals
    table = pa.table(data)
    pq_path = atomic_write(out / "phenotypes.parquet", lambda tmp: pq.write_table(table, tmp))
    return {"csv": csv_path, "parquet": pq_path}


def _thumbnail(folder: Path) -> Optional[Path]:
    for d, pat in (("run/renders", "*.png"), ("run/renders", "*.jpg"), ("run", "phenotypes.png"),
                   ("scene/images", "*.png"), ("scene/images", "*.jpg")):
        found = sorted((folder / d).glob(pat)) if (folder / d).is_dir() else []
        if found:
            return found[0]
    return None


def _fmt(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _date(v: str):
    import datetime

    try:
        return datetime.date.fromisoformat(str(v)[:10])
    except ValueError:
        return None


def trait_plots(rows: list[dict]) -> list[tuple[str, str]]:
    """(title, base64 PNG) per numeric plant trait: by group (genotype/treatment) and over date."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plant_rows = [r for r in rows if r["scope"] == "plant" and r.get("status") == "done"]
    skip = {"seconds", "tries", "internode_count"}
    traits = [k for k in dict.fromkeys(k for r in plant_rows for k in r)
              if k not in skip and any(_num(r.get(k)) is not None for r in plant_rows)]
    group = next((g for g in GROUP_COLUMNS if any(r.get(g) for r in plant_rows)), None)
    has_date = any(_date(r.get("date", "")) for r in plant_rows)
    out = []
    for t in traits:
        pts = [r for r in plant_rows if _num(r.get(t)) is not None]
        ncol = 2 if has_date else 1
        fig, axes = plt.subplots(1, ncol, figsize=(4.2 * ncol, 3.0), squeeze=False)
        ax = axes[0][0]
        groups = sorted({str(r.get(group, "")) for r in pts}) if group else ["all plants"]
        for gi, g in enumerate(groups):
            ys = [r[t] for r in pts if not group or str(r.get(group, "")) == g]
            ax.scatter([gi] * len(ys), ys, s=18, alpha=0.8)
            if ys:
                ax.hlines(sorted(ys)[len(ys) // 2], gi - 0.25, gi + 0.25, color="k")
        ax.set_xticks(range(len(groups)), groups, rotation=20)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_title(f"{t} by {group}" if group else t, fontsize=9)
        if has_date:
            ax2 = axes[0][1]
            for g in groups:
                sel = sorted((_date(r.get("date", "")), r[t]) for r in pts if _date(r.get("date", "")) and
                             (not group or str(r.get(group, "")) == g))
                if sel:
                    ax2.plot([d for d, _ in sel], [y for _, y in sel], "o-", ms=4, label=g)
            ax2.set_title(f"{t} over date", fontsize=9)
            ax2.tick_params(axis="x", labelrotation=30, labelsize=7)
            if group:
                ax2.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        out.append((t, base64.b64encode(buf.getvalue()).decode()))
    return out


def write_index(out: Path, plants: list[Plant], state: dict, rows: list[dict]) -> Path:
    """OUT/index.html: the plants' table and the trait plots (PNG embedded; links relative)."""
    e = html.escape
    by_id = {r["plant_id"]: r for r in rows if r["scope"] == "plant"}
    user_cols = list(dict.fromkeys(k for p in plants for k in p.columns))
    traits = [k for k in KEY_TRAITS if any(_num(r.get(k)) is not None for r in by_id.values())]
    head = ["plant", *user_cols, "status", "time", *traits, "internodes", "thumbnail", "report"]
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}.failed{background:#fdd}"
             "img.t{height:64px}.err{color:#a00;max-width:28em}")
    n_done = sum(1 for r in by_id.values() if r["status"] == "done")
    lines = ["<!doctype html><html><head><meta charset='utf-8'><title>s3dgs batch</title>",
             f"<style>{style}</style></head><body>",
             f"<h1>s3dgs batch: {len(plants)} plants</h1>",
             (f"<p>{n_done} done, {len(by_id) - n_done} not done. Tables: <a href='phenotypes.csv'>phenotypes.csv</a>, "
              "<a href='phenotypes.parquet'>phenotypes.parquet</a>; state: <a href='batch.json'>batch.json</a>.</p>"),
             "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for p in plants:
        r = by_id[p.plant_id]
        folder = out / p.plant_id
        thumb = _thumbnail(folder)
        report = folder / "run" / "report.html"
        status = r.get("status") or ""
        cells = [e(p.plant_id), *[e(str(p.columns.get(c, ""))) for c in user_cols],
                 e(status) + (f"<div class='err'>{e(str(r.get('error')))}</div>" if r.get("error") else ""),
                 e(f"{r['seconds']:.1f} s") if _num(r.get("seconds")) is not None else "",
                 *[e(_fmt(r.get(t))) for t in traits], e(_fmt(r.get("internode_count"))),
                 f"<img class='t' src='{e(thumb.relative_to(out).as_posix())}'>" if thumb else "",
                 f"<a href='{e(report.relative_to(out).as_posix())}'>report</a>" if report.is_file() else ""]
        cls = " class='failed'" if status != "done" else ""
        lines.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    plots = trait_plots(rows)
    if plots:
        lines.append("<h2>Traits</h2>")
        lines += [f"<figure style='display:inline-block'><img alt='{e(t)}' src='data:image/png;base64,{b}'>"
                  f"<figcaption>{e(t)}</figcaption></figure>" for t, b in plots]
    lines.append("</body></html>")
    return atomic_write_text(out / "index.html", "\n".join(lines))


def batch_main(cfg: BatchConfig) -> int:
    """CLI: `s3dgs batch PLANTS OUT`. Exit status 0 when every plant is done, 1 when any failed."""
    cfg.validate()
    try:
        res = run_batch(cfg)
    except KeyboardInterrupt:
        print("\ns3dgs batch: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130
    print(f"index: {Path(res['index']).resolve()}")
    return 0 if res["failed"] == 0 else 1
