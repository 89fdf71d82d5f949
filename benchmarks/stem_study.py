"""The stem study (issue 12): keep stems whole and floaters gone, measured where stems are visible.

One synthetic plant per preset (``closeup``: 60 views of 400x300 close to the plant, main stem
>= 6 px wide, petioles >= 3 px, peduncles >= 2 px; ``default``: 48 views of 320x240, stems 1-3 px),
every row trained at the preset's full resolution with the same iterations and every training seed,
and evaluated by ``s3dgs.evaluate.evaluate_run`` on the same held-out views (every 8th). Rows:

1. ``rgb``             RGB + semantics, no depth term (lambda_depth 0, no_depth);
2. ``prior``           the trainer's defaults (the depth prior as shipped);
3. each method alone on the *best base* (the better of rows 1-2 by the score below):
   ``+stem_one_sided`` (depth_stem_one_sided), ``+stem_aware`` (depth_stem_aware),
   ``+stem_densify`` (grow_grad2d_stem 2e-4: stem pixels split/clone from a 4x lower gradient),
   ``+prune_floaters`` (prune_floaters: depth-guided floater pruning), ``+mcmc`` (strategy mcmc with
   mcmc_cap_max = the base row's mean final Gaussian count, recorded in the row's config). The
   methods that act through the depth prior (one-sided, stem-aware, floater pruning) go on
   ``prior`` when the best base is ``rgb`` (a note says so; they are then compared with ``prior``);
4. ``best_combo``      the methods whose mean score beat their base's, together on the best base
   (stem densification belongs to the default strategy: when +mcmc and +stem_densify both improve,
   the larger gain is kept; floater pruning under MCMC is mcmc_prune_floaters). With no such method
   it is the best base, with one it is that method's row: the same runs, not trained again.

**Score** (the issue's aim: stem coverage up, breaks down, plant-region floaters down, PSNR not
lower), per run: ``stem coverage (any class) - floater fraction - 0.01 x breaks
- 0.05 x max(0, PSNR_rgb - PSNR)``, PSNR_rgb the rgb row's mean over seeds: one break costs as
much as 1 % of the stems' length uncovered, a dB below RGB-only as much as 5 %. Rows compare by
their mean score over seeds.

**Verdicts** are computed from the seed ranges [min, max]: "shown" when the two ranges do not
overlap in the promised direction, "worse" when they do not overlap in the other, "not shown"
otherwise (touching ranges overlap). The seed's promises (``prior`` and ``best_combo`` against
``rgb``): fewer broken stems (coverage up and breaks down, both needed), fewer floaters, thin
structures kept (centreline coverage of the peduncles and pedicels, the fruit stalks and the
class P, by any Gaussian), RGB quality not lower (PSNR);
and every method against its base (score and each figure). The issue's targets (set for the
closeup preset, the mean of three seeds): stem coverage >= 0.9 with at most one break (one plant),
plant-region floaters at most half of rgb's, mIoU of U, N, D, P >= 0.6, held-out PSNR not below
rgb's: "met" / "not met" with the figure, for every row.

Writes OUT/stem_study.json (every run's figures, each row's config, the machine, date, command and
wall time per run; presets of earlier invocations into the same OUT are kept), OUT/stem_study.md
(one table per preset, mean [min, max] over seeds, verdicts, targets) and OUT/plots/<preset>.png
(stem coverage, floaters and PSNR per row, the seed range as error bars). Runs stay in
OUT/runs/<preset>/<row>/seed<k>; a run with metrics.json is reused, not trained again (it must have
been trained with the row's options, else the study stops naming the folder).

The full study (hours of CPU; the method rows need rgb and prior finished, best_combo needs every
method row; rows can be split over parallel processes with --only, one thread each, and one row's
seeds with ``--seeds k --base-seeds 0,1,2``, so that every process picks the best base from all seeds):

    P=.venv/bin/python; S=benchmarks/stem_study.py; O=bench_out/stem_study
    $P $S --preset closeup --iterations 3000 --seeds 0,1,2 --threads 1 --out $O --only rgb &
    $P $S --preset closeup --iterations 3000 --seeds 0,1,2 --threads 1 --out $O --only prior; wait
    $P $S --preset closeup --iterations 3000 --seeds 0,1,2 --threads 1 --out $O \\
        --only +stem_one_sided,+stem_aware,+stem_densify &
    $P $S --preset closeup --iterations 3000 --seeds 0,1,2 --threads 1 --out $O --only +prune_floaters,+mcmc; wait
    $P $S --preset closeup --iterations 3000 --seeds 0,1,2 --threads 1 --out $O   # best_combo, then the report
    # the same five commands with --preset default; a last `--preset closeup,default` run reuses every
    # run and writes both tables

    $P $S --tiny --out bench_out/stem_tiny      # the whole study on the tiny preset in about a minute

Cost, measured 2026-11-30 on the 2-core CPU (load average 2.5-5 from other jobs): one closeup run of
3000 iterations (``prior``, one thread) trained in 55 min, ending with 349k Gaussians (6k until
iteration 500, 43k at 1000, 157k at 1500, 276k at 2000), 0.45-1.9 s per iteration depending on the
Gaussian count and the load, 1.3 GB peak memory; its evaluation took 2.5 min. With the native
projection and SSIM kernels (same day, two runs in parallel on the 2 cores, one thread each): 19-21
min of training per closeup run (about 345k Gaussians at the end), so a preset of 21-24 runs is
about 4-5 hours with two processes in parallel (three in parallel: 25-33 min each). A default-preset
run (320x240, about 305-315k Gaussians at the end) trained in 14-17 min beside another, plus 2-3 min
of evaluation; its +mcmc runs in about 5.5 min (13k Gaussians). Every row of the closeup preset but
+stem_aware, and every row of the default preset but +stem_aware (best_combo: rgb itself) are in
BENCHMARKS.md ("The stem study"), with benchmarks/prior_error.py's diagnosis of why the prior breaks
stems.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_runs import (  # noqa: E402
    StudyError,
    ensure_scene,
    fmt_spread,
    machine,
    now_iso,
    spread,
    train_and_evaluate,
    write_study,
    earlier_presets,
)

CLASSES = ("U", "N", "D", "P")
THIN_PARTS = ("peduncle", "pedicel")  # the fruit stalks: the plant's thinnest stems
# "prior": the trainer's defaults as they were for this study (--depth-thin became one-sided after
# issue 22's study, benchmarks/thin_study.py; named here so that the study reproduces its tables)
BASE_ROWS = {"rgb": {"lambda_depth": 0.0, "no_depth": True}, "prior": {"depth_thin": "off"}}
# method -> (options, acts through the depth prior)
METHODS = {
    "+stem_one_sided": ({"depth_stem_one_sided": True}, True),
    "+stem_aware": ({"depth_stem_aware": True}, True),
    "+stem_densify": ({"grow_grad2d_stem": 2e-4}, False),
    "+prune_floaters": ({"prune_floaters": True}, True),
    "+mcmc": ({"strategy": "mcmc"}, False),
    # issue 22: the depth term that trusts the prior only where it resolves the plant (not yet run
    # at full size: BENCHMARKS.md says so)
    "+thin_one_sided": ({"depth_thin": "one-sided"}, True),
    "+thin_down": ({"depth_thin": "down"}, True),
    "+gate": ({"depth_gate_disagreement": 3.0}, True),
    "+patch": ({"depth_alignment": "patch"}, True),
}
ROWS = (*BASE_ROWS, *METHODS, "best_combo")
SCORE_RULE = ("score = stem coverage (any class) - plant-region floater fraction - 0.01 x breaks "
              "- 0.05 x max(0, PSNR_rgb - PSNR), PSNR_rgb = rgb's mean PSNR over seeds")
# (key, direction: +1 higher is better, -1 lower is better)
PROMISES = [
    ("fewer broken stems", [("stem_cover", +1), ("stem_breaks", -1)]),
    ("fewer floaters", [("floaters", -1)]),
    ("thin structures kept (peduncle coverage)", [("cover_peduncle", +1)]),
    ("RGB quality not lower (PSNR)", [("psnr", +1)]),
]
METHOD_FIGURES = [("score", +1), ("stem_cover", +1), ("stem_breaks", -1), ("floaters", -1), ("cover_peduncle", +1),
                  ("psnr", +1)]
LABELS = {"score": "score", "stem_cover": "stem cover", "stem_breaks": "breaks", "floaters": "floaters",
          "cover_peduncle": "peduncle cover", "psnr": "PSNR", "miou": "mIoU"}
COLUMNS = [("PSNR", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.3f}"), ("depth AbsRel", "depth_abs_rel", "{:.3f}"),
           ("mIoU", "miou", "{:.3f}"), *((f"IoU {c}", f"iou_{c}", "{:.3f}") for c in CLASSES),
           ("floaters", "floaters", "{:.3f}"), ("stem cover", "stem_cover", "{:.3f}"),
           ("peduncle cover", "cover_peduncle", "{:.3f}"), ("breaks", "stem_breaks", "{:.1f}"),
           ("Chamfer mm", "chamfer_mm", "{:.2f}"), ("Gaussians", "gaussians", "{:.0f}"),
           ("train s", "train_time_s", "{:.0f}"), ("score", "score", "{:.3f}")]
TARGET_NAMES = ["stems whole (cover >= 0.9, breaks <= 1)", "floaters <= rgb / 2", "mIoU >= 0.6", "PSNR >= rgb"]


# -------------------------------------------------------------------------------------------------
# figures, score, verdicts, targets (pure functions)
# -------------------------------------------------------------------------------------------------


def score(fig: dict, psnr_ref: float | None) -> float | None:
    """The study's score of one run's figures (module docstring); None when a figure is missing."""
    cover, fl, br, p = fig.get("stem_cover"), fig.get("floaters"), fig.get("stem_breaks"), fig.get("psnr")
    if cover is None or fl is None or br is None or p is None:
        return None
    return cover - fl - 0.01 * br - 0.05 * max(0.0, (psnr_ref if psnr_ref is not None else p) - p)


def verdict(new, ref, direction: int = +1) -> str:
    """"shown" when every value of ``new`` is better than every value of ``ref`` (the seed ranges
    do not overlap in the promised direction; ``direction`` +1: higher is better, -1: lower),
    "worse" when every value is worse, "not shown" otherwise (overlapping or touching ranges, or
    no values)."""
    a = [float(x) for x in new if x is not None]
    b = [float(x) for x in ref if x is not None]
    if not a or not b:
        return "not shown"
    if direction < 0:
        a, b = [-x for x in a], [-x for x in b]
    if min(a) > max(b):
        return "shown"
    if max(a) < min(b):
        return "worse"
    return "not shown"


def combine_verdicts(parts: list[str]) -> str:
    """A promise with several parts: "shown" when every part is, "worse" when a part is worse and
    none is shown, else "not shown"."""
    if parts and all(p == "shown" for p in parts):
        return "shown"
    if "worse" in parts and "shown" not in parts:
        return "worse"
    return "not shown"


def targets(summary: dict, ref: str = "rgb") -> dict:
    """The issue's targets for every row of ``summary`` (``{row: {figure: spread}}``), on the
    means: ``{row: [{"target", "status": "met" | "not met" | "not measured", "figure"}]}`` (the
    targets relative to ``ref`` are "reference" on ``ref`` itself)."""
    def mean(row, k):
        s = summary.get(row, {}).get(k)
        return None if s is None else s["mean"]

    out = {}
    for row in summary:
        cover, br, fl, miou, p = (mean(row, k) for k in ("stem_cover", "stem_breaks", "floaters", "miou", "psnr"))
        fl_ref, p_ref = mean(ref, "floaters"), mean(ref, "psnr")
        checks = [
            (cover is not None and br is not None, lambda: cover >= 0.9 and br <= 1,
             lambda: f"cover {cover:.3f}, breaks {br:.1f}"),
            (fl is not None and fl_ref is not None, lambda: fl <= 0.5 * fl_ref,
             lambda: f"{fl:.3f} vs rgb {fl_ref:.3f}"),
            (miou is not None, lambda: miou >= 0.6, lambda: f"{miou:.3f}"),
            (p is not None and p_ref is not None, lambda: p >= p_ref, lambda: f"{p:.2f} vs rgb {p_ref:.2f}"),
        ]
        out[row] = [{"target": name, "status": ("reference" if row == ref and i in (1, 3) else
                                                "met" if ok() else "not met") if have else "not measured",
                     "figure": fig() if have else None}
                    for i, (name, (have, ok, fig)) in enumerate(zip(TARGET_NAMES, checks))]
    return out


def combine_methods(gains: dict, bases: dict, best: str, options: dict) -> tuple[dict, list, dict]:
    """``best_combo``: the methods with a positive mean-score gain over their base, on ``best``.

    ``gains {method: mean score - its base's mean score}``, ``bases {method: base row}``,
    ``options {method: the method's own options}``. Returns ``(train options, methods used,
    {method left out: why})``."""
    used = [m for m in gains if gains[m] is not None and gains[m] > 0 and bases[m] == best]
    left = {m: f"trained on {bases[m]}, not on the best base {best}"
            for m in gains if gains[m] is not None and gains[m] > 0 and bases[m] != best}
    if "+mcmc" in used and "+stem_densify" in used:
        drop = "+stem_densify" if gains["+mcmc"] >= gains["+stem_densify"] else "+mcmc"
        used.remove(drop)
        left[drop] = ("stem-aware densification is the default strategy's, MCMC replaces that strategy; "
                      "the larger gain is kept")
    cfg = dict(BASE_ROWS[best])
    for m in used:
        cfg.update(options[m])
    if cfg.get("strategy") == "mcmc" and cfg.pop("prune_floaters", False):
        cfg["mcmc_prune_floaters"] = True  # the MCMC strategy's own switch
    return cfg, used, left


def class_coverage(run_dir: Path, gt, tolerances: dict) -> dict:
    """Centreline coverage and breaks of the true stems by Gaussians of any class, per class
    (``cover_<C>``, ``breaks_<C>``), per part of the plant (``cover_part_<part>``: main stem, node,
    petiole, peduncle, pedicel) and for the thin fruit stalks together (``cover_peduncle``:
    peduncles and pedicels, the thinnest structures), with the rule and tolerances of the run's
    metrics.json (s3dgs.metrics.stem_continuity with every Gaussian accepted). None where the plant
    has no such stems. evaluate_run reports per-class coverage only by Gaussians of the stem's own
    class, and none per part."""
    import torch

    from s3dgs import metrics as M
    from s3dgs.gaussians.model import load_ply

    params, _ = load_ply(Path(run_dir) / "point_cloud.ply")
    means = params["means"].numpy().astype(np.float64)
    opac = torch.sigmoid(params["opacities"].reshape(-1)).numpy().astype(np.float64)
    st = M.stem_continuity([{**s, "class": None} for s in gt.stems], means, np.zeros(len(means)), opac,
                           tol=tolerances["stem_cover_tol_m"], min_opacity=tolerances["opaque_threshold"],
                           break_factor=tolerances["break_factor"])

    def cover(select) -> tuple[float | None, int | None]:
        idx = [i for i, s in enumerate(gt.stems) if select(s)]
        length = sum(st["stems"][i]["length"] for i in idx)
        if not idx or length <= 0:
            return None, None
        return (sum(st["stems"][i]["covered_length"] for i in idx) / length,
                sum(st["stems"][i]["breaks"] for i in idx))

    out = {}
    for c in CLASSES:
        out[f"cover_{c}"], out[f"breaks_{c}"] = cover(lambda s: s["class"] == c)
    for part in sorted({s.get("part") for s in gt.stems} - {None}):
        out[f"cover_part_{part.replace(' ', '_')}"] = cover(lambda s: s.get("part") == part)[0]
    out["cover_peduncle"], out["breaks_peduncle"] = cover(lambda s: s.get("part") in THIN_PARTS)
    return out


def figures(m: dict, class_cov: dict) -> dict:
    """One run's figures: ``s3dgs.evaluate.headline`` plus per-class IoU, per-class coverage by
    Gaussians of the right class (``cover_class_<C>``) and of any class (``cover_<C>``)."""
    from s3dgs.evaluate import headline

    h = headline(m)
    sem, geo = m.get("semantics", {}), m.get("geometry", {})
    by_class = (geo.get("stems") or {}).get("covered_fraction_by_class") or {}
    for i, c in enumerate(CLASSES):
        h[f"iou_{c}"] = (sem.get("iou") or {}).get(c)
        # evaluate_run keys this by the class's index in the run's classes ("0" = U), or by name
        h[f"cover_class_{c}"] = by_class.get(c, by_class.get(str(i)))
    return {**h, **class_cov}


# -------------------------------------------------------------------------------------------------
# one preset
# -------------------------------------------------------------------------------------------------


class PresetStudy:
    def __init__(self, preset: str, scene: Path, out: Path, iterations: int, seeds: list[int], threads: int,
                 max_views: int, only: set[str], base_seeds: list[int] | None = None, gt=None):
        from s3dgs.scene.groundtruth import load_ground_truth

        self.preset, self.scene, self.out = preset, scene, out
        self.iterations, self.seeds, self.threads, self.max_views, self.only = iterations, seeds, threads, max_views, only
        self.base_seeds = sorted(base_seeds or seeds)
        self.gt = gt if gt is not None else load_ground_truth(scene)
        self.rows: dict[str, dict] = {}

    def wanted(self, name: str) -> bool:
        return not self.only or name in self.only

    def run_dir(self, name: str, seed: int) -> Path:
        return self.out / "runs" / self.preset / name / f"seed{seed}"

    def row(self, name: str, options: dict, base: str | None = None, note: str = "") -> dict:
        """Train (when wanted) or load (when finished) every seed of row ``name``."""
        runs = []
        for seed in self.seeds:
            d = self.run_dir(name, seed)
            if not (self.wanted(name) or (d / "metrics.json").exists()):
                continue
            opts = {"num_iterations": self.iterations, **options, "seed": seed}
            m, rec = train_and_evaluate(d, self.scene, opts, threads=self.threads, max_views=self.max_views,
                                        log_every=max(1, self.iterations // 10), check=True,
                                        label=f"{self.preset}/{name}/seed{seed}")
            fig = figures(m, class_coverage(d, self.gt, m["geometry"]["tolerances"]))
            runs.append({"seed": seed, "run": str(d.relative_to(self.out)), **fig,
                         **{k: rec.get(k) for k in ("date", "train_wall_s", "eval_wall_s", "wall_s", "threads",
                                                    "load_average", "reused")}})
            print(f"[{self.preset}/{name}/seed{seed}] PSNR {fig['psnr']:.2f}  stem cover {fig['stem_cover']:.3f}  "
                  f"breaks {fig['stem_breaks']}  floaters {fig['floaters']:.3f}  mIoU {fig['miou']}  "
                  f"Gaussians {fig['gaussians']}" + ("  (reused)" if rec.get("reused") else ""), flush=True)
        r = {"name": name, "base": base, "config": options, "note": note, "same_as": None, "runs": runs}
        if runs:
            self.rows[name] = r
        return r

    def complete(self, name: str) -> bool:
        return name in self.rows and len(self.rows[name]["runs"]) == len(self.seeds)

    def rescore(self) -> None:
        """Score every run against rgb's mean PSNR and summarise every row over its seeds."""
        ref = spread([r["psnr"] for r in self.rows["rgb"]["runs"]]) if "rgb" in self.rows else None
        for row in self.rows.values():
            for r in row["runs"]:
                r["score"] = score(r, ref["mean"] if ref else None)
            keys = [k for k in row["runs"][0] if k not in ("seed", "run", "date", "load_average", "reused")]
            row["summary"] = {k: spread([r.get(k) for r in row["runs"]]) for k in keys}

    def _budget_note(self) -> None:
        """Say so in the +mcmc row's note when no seed's model grew to the budget: MCMC adds 5 % per
        refinement, so from a few thousand SfM points a short run ends far below it, and the row then
        compares fewer Gaussians, not another strategy at the same count."""
        row = self.rows.get("+mcmc")
        cap = row and row["config"].get("mcmc_cap_max")
        if cap and row["summary"]["gaussians"]["max"] < cap:
            row["note"] += (f"; the budget was not reached: at most {row['summary']['gaussians']['max']:,.0f} "
                            "Gaussians at the end (MCMC adds 5 % per refinement)")

    def choose_base(self) -> tuple[str, dict]:
        """The best base (rgb or prior, by mean score) and each base's mean final Gaussian count (the
        +mcmc budget), over ``base_seeds``: the same choice whichever subset of seeds this process
        trains, so one row's seeds can be split over processes (each ``--seeds k`` with
        ``--base-seeds`` the full list). Those base runs must be finished."""
        study = self
        if self.base_seeds != sorted(self.seeds):
            # a study of the base seeds that trains nothing: no row is in its `only`, finished runs are read
            study = PresetStudy(self.preset, self.scene, self.out, self.iterations, self.base_seeds, self.threads,
                                self.max_views, only={"--base-seeds: read only"}, gt=self.gt)
            for name, opts in BASE_ROWS.items():
                study.row(name, opts)
            if not (study.complete("rgb") and study.complete("prior")):
                raise StudyError(f"{self.preset}: --base-seeds {','.join(map(str, self.base_seeds))}: rgb and prior "
                                 "must be finished for every one of them (run --only rgb,prior with those seeds)")
            study.rescore()
        best = max(BASE_ROWS, key=lambda n: study.mean_score(n))
        return best, {n: study.rows[n]["summary"]["gaussians"]["mean"] for n in BASE_ROWS}

    def mean_score(self, name: str) -> float | None:
        s = self.rows[name]["summary"].get("score") if name in self.rows else None
        return None if s is None else s["mean"]

    def run(self) -> dict:
        t0 = time.perf_counter()
        for name, opts in BASE_ROWS.items():
            self.row(name, opts, note="RGB + semantics, no depth term" if name == "rgb" else "the trainer's defaults")
        later = [n for n in (*METHODS, "best_combo") if self.wanted(n)] if self.only else []
        bases_done = self.complete("rgb") and self.complete("prior")
        if later and not bases_done:
            raise StudyError(f"{self.preset}: rows {', '.join(later)} need rgb and prior finished for seeds "
                             f"{self.seeds} (the best base is chosen from them): run --only rgb,prior first")
        best, gains, bases = None, {}, {}
        if bases_done:
            self.rescore()
            best, base_gaussians = self.choose_base()
            for name, (opts, needs_prior) in METHODS.items():
                base = "prior" if needs_prior and best == "rgb" else best
                opts = dict(opts)
                note = f"on {base}"
                if base != best:
                    note += f" (acts through the depth prior; the best base {best} has none)"
                if name == "+mcmc":
                    opts["mcmc_cap_max"] = int(round(base_gaussians[base]))
                    note += f"; Gaussian budget = {base}'s mean final count"
                self.row(name, {**BASE_ROWS[base], **opts}, base=base, note=note)
                bases[name] = base
            self.rescore()
            self._budget_note()
            for name in METHODS:
                if self.complete(name):
                    gains[name] = self.mean_score(name) - self.mean_score(bases[name])
            missing = [n for n in METHODS if not self.complete(n)]
            if missing and "best_combo" in self.only:
                raise StudyError(f"{self.preset}: best_combo needs every method row finished for seeds "
                                 f"{self.seeds}; missing: {', '.join(missing)}")
            if not missing:
                own = {n: {k: v for k, v in self.rows[n]["config"].items() if k not in BASE_ROWS[bases[n]]}
                       for n in METHODS}
                cfg, used, left = combine_methods(gains, bases, best, own)
                note = f"on {best}: " + (" + ".join(used) if used else "no method improved the score")
                if left:
                    note += "; left out: " + "; ".join(f"{k} ({v})" for k, v in left.items())
                same = best if not used else used[0] if len(used) == 1 else None
                if same is not None:
                    self.rows["best_combo"] = {**self.rows[same], "name": "best_combo", "base": best,
                                               "note": note + f" (the runs of {same})", "same_as": same}
                else:
                    self.row("best_combo", cfg, base=best, note=note)
                if "best_combo" in self.rows:
                    self.rows["best_combo"]["combo"] = {"methods": used, "left_out": left}
        if self.rows:
            self.rescore()
        rows = [self.rows[n] for n in ROWS if n in self.rows]
        summary = {r["name"]: r["summary"] for r in rows}
        return {
            "preset": self.preset, "scene": str(self.scene), "iterations": self.iterations, "seeds": self.seeds,
            "threads": self.threads, "max_views": self.max_views,
            "held_out_views": rows[0]["runs"][0]["held_out_views"] if rows else None,
            "score_rule": SCORE_RULE, "best_base": best, "base_seeds": self.base_seeds,
            "base_scores": {n: self.rows[n]["summary"].get("score") for n in BASE_ROWS if n in self.rows},
            "gains": gains, "rows": rows, "verdicts": verdicts(summary, {r["name"]: r["base"] for r in rows}),
            "targets": targets(summary) if "rgb" in summary else {},
            "heatmaps": self.heatmap_reference(rows),
            "study_wall_s": time.perf_counter() - t0,
        }

    def heatmap_reference(self, rows: list[dict]) -> dict | None:
        """The scene's training heatmaps scored like a render on the held-out views of the runs
        (`s3dgs.evaluate.heatmap_iou`): the mIoU the supervision itself reaches, beside the target."""
        from s3dgs.evaluate import heatmap_iou

        if not rows:
            return None
        m = json.loads((self.out / rows[0]["runs"][0]["run"] / "metrics.json").read_text())
        return heatmap_iou(self.scene, [Path(n).stem for n in m["views"]["names"]])


def verdicts(summary: dict, bases: dict) -> dict:
    """The seed's promises (prior and best_combo vs rgb) and every method vs its base, computed
    from the seed ranges in ``summary`` (``{row: {figure: spread}}``)."""
    def vals(row, k):
        s = summary[row].get(k)
        return s["values"] if s else []

    promises, methods = [], []
    for row in ("prior", "best_combo"):
        if row not in summary or "rgb" not in summary:
            continue
        for promise, parts in PROMISES:
            pv = [{"figure": k, "verdict": verdict(vals(row, k), vals("rgb", k), d),
                   "row": summary[row].get(k), "ref": summary["rgb"].get(k)} for k, d in parts]
            promises.append({"row": row, "ref": "rgb", "promise": promise,
                             "verdict": combine_verdicts([p["verdict"] for p in pv]), "parts": pv})
    for row in METHODS:
        base = bases.get(row)
        if row not in summary or base not in summary:
            continue
        pv = [{"figure": k, "verdict": verdict(vals(row, k), vals(base, k), d),
               "row": summary[row].get(k), "ref": summary[base].get(k)} for k, d in METHOD_FIGURES]
        methods.append({"row": row, "ref": base, "verdict": pv[0]["verdict"], "parts": pv})
    return {"promises": promises, "methods": methods}


# -------------------------------------------------------------------------------------------------
# output
# -------------------------------------------------------------------------------------------------


def _seeds_note(parts: list[dict]) -> str:
    n = min(min(p["row"]["n"], p["ref"]["n"]) if p["row"] and p["ref"] else 0 for p in parts)
    return "" if n >= 3 else f" ({n} seed{'s' if n != 1 else ''}: fewer than three, not a claim)"


def _part(p: dict) -> str:
    f = {"psnr": "{:.2f}", "stem_breaks": "{:.1f}"}.get(p["figure"], "{:.3f}")
    return f"{LABELS[p['figure']]} {fmt_spread(p['row'], f)} vs {fmt_spread(p['ref'], f)}: {p['verdict']}"


def markdown(result: dict) -> str:
    lines = ["# Stem study (issue 12)", "",
             f"Command: `{result['command']}`  ", f"Date: {result['date']}; machine: {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores, load average {result['machine']['load_average']}.", "",
             f"Score: {SCORE_RULE}. Verdicts from the seed ranges: *shown* when the ranges do not overlap in the "
             "promised direction, *worse* when they do not overlap in the other, *not shown* otherwise (for "
             "'RGB quality not lower', *not shown* means no measurable difference either way). Each cell is "
             "mean [min, max] over the training seeds. stem cover / breaks: true centrelines covered by opaque "
             "Gaussians of any class; peduncle cover: the same on the peduncles and pedicels (the fruit stalks, the "
             "thinnest stems; per class and per part in the JSON); floaters: "
             "opacity-weighted, plant region."]
    for name in sorted(result["presets"], key=lambda p: ("closeup", "default", "tiny").index(p)
                       if p in ("closeup", "default", "tiny") else 9):
        r = result["presets"][name]
        lines += ["", f"## Preset `{name}`", "",
                  f"Scene `{r['scene']}`, {r['iterations']} iterations, seeds {', '.join(map(str, r['seeds']))}, "
                  f"{r['held_out_views']} held-out views, {r['threads']} thread(s) per run; {r['date']}; "
                  f"`{r['command']}`.", "",
                  f"Best base: **{r['best_base']}** (mean score "
                  + ", ".join(f"{k} {fmt_spread(v)}" for k, v in r["base_scores"].items()) + ").", "",
                  "| row | seeds | " + " | ".join(c[0] for c in COLUMNS) + " | note |",
                  "|---|---:|" + "---:|" * len(COLUMNS) + "---|"]
        for row in r["rows"]:
            s = row["summary"]
            lines.append(f"| {row['name']} | {len(row['runs'])} | "
                         + " | ".join(fmt_spread(s.get(k), f) for _, k, f in COLUMNS) + f" | {row['note']} |")
        v = r["verdicts"]
        if v["promises"]:
            lines += ["", "**The seed's promises** (against rgb):", ""]
            for p in v["promises"]:
                lines.append(f"- {p['row']}: {p['promise']}: **{p['verdict']}** ("
                             + "; ".join(_part(x) for x in p["parts"]) + ")" + _seeds_note(p["parts"]))
        if v["methods"]:
            lines += ["", "**Each method against its base** (verdict on the score):", ""]
            for p in v["methods"]:
                lines.append(f"- {p['row']} vs {p['ref']}: **{p['verdict']}** ("
                             + "; ".join(_part(x) for x in p["parts"]) + ")" + _seeds_note(p["parts"]))
        if r["targets"]:
            lines += ["", "**The issue's targets** (set for the closeup preset, mean of three seeds):", "",
                      "| row | " + " | ".join(TARGET_NAMES) + " |", "|---|" + "---|" * len(TARGET_NAMES)]
            for row, ts in r["targets"].items():
                lines.append(f"| {row} | " + " | ".join(
                    f"{t['status']} ({t['figure']})" if t["figure"] else t["status"] for t in ts) + " |")
        hm = r.get("heatmaps") or {}
        if hm.get("available"):
            lines += ["", f"The scene's own training heatmaps, scored like a render on the same held-out views, "
                          f"reach mIoU {hm['miou']:.3f} (" + ", ".join(f"{c} {v:.3f}" for c, v in hm["iou"].items()
                                                                  if v is not None)
                      + "): skeleton lines between keypoints, not masks, so this is the supervision's own "
                        "agreement with the true class masks."]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    """Stem coverage, floaters and PSNR per row, bars at the mean, the seed range as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["rows"]
    names = [x["name"] for x in rows]
    colors = ["tab:grey" if n == "rgb" else "tab:blue" if n == "prior" else "tab:orange" if n == "best_combo"
              else "tab:green" for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (k, label) in zip(axes, [("stem_cover", "stem coverage (any class)"),
                                     ("floaters", "floater fraction (plant region)"), ("psnr", "held-out PSNR (dB)")]):
        s = [x["summary"].get(k) for x in rows]
        mean = np.array([v["mean"] if v else np.nan for v in s])
        err = np.array([[v["mean"] - v["min"], v["max"] - v["mean"]] if v else [0, 0] for v in s]).T
        ax.bar(range(len(rows)), mean, yerr=err, capsize=4, color=colors)
        if k == "psnr" and np.isfinite(mean).any():
            ax.set_ylim(np.nanmin(mean - err[0]) - 1, np.nanmax(mean + err[1]) + 0.5)
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label)
    fig.suptitle(f"{r['preset']}: {r['iterations']} iterations, seeds {', '.join(map(str, r['seeds']))} "
                 "(bar: mean, whiskers: min-max)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="closeup",
                    help="comma-separated synthetic presets, each its own scene: closeup, default (tiny: --tiny)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/stem_study"), help="output folder")
    ap.add_argument("--scenes", type=Path, default=None,
                    help="folder of the scenes, one per preset named after it (default OUT/scenes); made when missing")
    ap.add_argument("--scene-seed", type=int, default=0, help="seed of the synthetic plant")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds; every row runs with each")
    ap.add_argument("--base-seeds", default="",
                    help="seeds over which the best base and the +mcmc budget are chosen (default: --seeds); give "
                         "the full list when one row's seeds are split over processes (--seeds 2 --base-seeds 0,1,2)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: torch's default)")
    ap.add_argument("--max-views", type=int, default=0, help="evaluate only the first n held-out views (0: all)")
    ap.add_argument("--only", default="", help=f"comma-separated rows to train (default: all): {', '.join(ROWS)}; "
                    "finished runs of the others are read")
    ap.add_argument("--tiny", action="store_true",
                    help="the tiny preset, 10 iterations, seeds 0,1, one held-out view: the whole study in a minute")
    a = ap.parse_args(argv)
    seeds_given = any(x == "--seeds" or x.startswith("--seeds=") for x in argv)
    iters_given = any(x == "--iterations" or x.startswith("--iterations=") for x in argv)
    if a.tiny:
        a.preset, a.max_views = "tiny", a.max_views or 1
        a.iterations = a.iterations if iters_given else 10
        a.seeds = a.seeds if seeds_given else "0,1"
    presets = [p.strip() for p in a.preset.split(",") if p.strip()]
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    base_seeds = [int(x) for x in a.base_seeds.split(",") if x.strip()] or None
    bad = sorted(only - set(ROWS)) + [p for p in presets if p not in ("closeup", "default", "tiny")]
    if bad or not seeds or not presets or a.iterations < 1:
        print(f"stem_study: nothing to do or unknown rows/presets: {bad or 'check --seeds, --preset, --iterations'}",
              file=sys.stderr)
        return 2
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([".venv/bin/python", "benchmarks/stem_study.py", *argv])
    result = {"study": "stem study (issue 12)", "presets": {}}
    result["presets"] = earlier_presets(out / "stem_study.json")
    try:
        for preset in presets:
            scene = ensure_scene((a.scenes or out / "scenes") / preset, preset, a.scene_seed)
            mach, date = machine(), now_iso()
            r = PresetStudy(preset, scene, out, a.iterations, seeds, a.threads, a.max_views, only, base_seeds).run()
            result["presets"][preset] = {**r, "machine": mach, "date": date, "command": command}
            if r["rows"]:
                plot(r, out / "plots" / f"{preset}.png")
    except StudyError as exc:
        print(f"stem_study: {exc}", file=sys.stderr)
        return 2
    write_study(out, "stem_study", result, markdown, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
