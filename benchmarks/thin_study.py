"""The thin-stem study (issue 22): a depth term that trusts the prior only where it resolves the plant.

The stem study (issue 12, ``benchmarks/stem_study.py``) found that the simulated Depth Anything V2
prior blurs thin structures into what lies behind them and that the depth loss then fades thin
stems. This study measures the answers built for it, each on the same synthetic plant, the same
held-out views, the same iterations and every training seed:

1. ``rgb``              RGB + semantics, no depth term;
2. ``prior``            the depth prior as shipped before this study (``--depth-thin off``; the
   default became ``one-sided`` on this study's evidence, so the row names it);
3. the depth-term methods, each alone on ``prior``: ``+thin_one_sided`` (``--depth-thin
   one-sided``: thin structures found in the frame by a Hessian ridge filter leave the alignment
   and are never pulled back toward the background), ``+thin_down`` (``--depth-thin down``: they
   weigh 0.1), ``+gate`` (``--depth-gate-disagreement 3``: pixels whose residual is over 3x the
   view's median leave the loss), ``+patch`` (``--depth-alignment patch``: scale and shift fitted in
   32 px windows);
4. ``tiled``            ``prior``'s options on a prior that resolves more: the same plant and images, the
   prior simulated as ``s3dgs depth --tiles N`` would give it (``s3dgs synth --prior-tiles N``:
   each tile seen at the network's 518 px input, its own scale and shift, merged onto the full
   frame). On a 400x300 frame N = 3 shrinks the blur as ``--tiles auto`` does on a frame about
   3.2x larger (a 1296x972 photo gets 3 tiles);
5. ``tiled+thin_one_sided`` ``--depth-thin one-sided`` on the tiled prior: the training option and
   the prior a user can both have, trained whatever the combination rule below picks;
6. ``best_combo``       the methods whose mean score beat ``prior``'s, together (``--depth-thin`` takes
   one value: the larger gain of one-sided / down), on the better prior of ``prior`` and
   ``tiled`` by mean score; with one ingredient it is that row's runs, not trained again.

**Score** (as in the stem study): ``stem coverage - plant-region floaters - 0.01 x breaks - 0.05 x
max(0, PSNR_rgb - PSNR)``.

**Verdicts** from the seed ranges [min, max]: "shown" (ranges apart in the promised direction),
"worse" (apart in the other), "not shown" (overlapping or touching), for every row against rgb and
against prior, on stem coverage, breaks, peduncle cover (peduncles and pedicels, the thinnest
stalks), plant-region floaters, PSNR and depth AbsRel.

**The issue's targets**, per row, on the means of the seeds:

- *not worse than rgb on stems*: stem coverage, breaks and peduncle cover each "not shown" or
  "shown" against rgb (none "worse");
- *keeps half of the prior's gains*: PSNR gain over rgb at least half of prior's, and AbsRel
  reduction at least half of prior's (when prior gains nothing there, the row must not lose to rgb);
- *the promise*: floaters or breaks lower than rgb's, "shown".

Writes OUT/thin_study.json (every run's figures, each row's options and scene, the machine, date,
command and wall times), OUT/thin_study.md (table, verdicts, targets per preset) and
OUT/plots/thin_<preset>.png. Runs stay in OUT/runs/<preset>/<row>/seed<k> (the layout of the stem
study, so its rgb and prior runs with the same iterations are reused); a finished run of other
options stops the study naming its folder.

    P=.venv/bin/python; S=benchmarks/thin_study.py; O=bench_out/thin_study
    $P $S --preset closeup --iterations 1500 --threads 1 --out $O --only rgb &
    $P $S --preset closeup --iterations 1500 --threads 1 --out $O --only prior; wait
    $P $S --preset closeup --iterations 1500 --threads 1 --out $O --only +thin_one_sided,+gate &
    $P $S --preset closeup --iterations 1500 --threads 1 --out $O --only +thin_down,+patch; wait
    $P $S --preset closeup --iterations 1500 --threads 1 --out $O --only tiled
    $P $S --preset closeup --iterations 1500 --threads 1 --out $O          # best_combo, then the report

    $P $S --tiny --out bench_out/thin_tiny     # every row on the tiny preset in about a minute
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stem_study import class_coverage, figures, plot, score, verdict  # noqa: E402
from study_runs import StudyError, ensure_scene, fmt_spread, machine, now_iso, spread, train_and_evaluate  # noqa: E402
from study_runs import earlier_presets, write_study  # noqa: E402

RGB = {"lambda_depth": 0.0, "no_depth": True}
PRIOR = {"depth_thin": "off"}  # the prior as shipped before this study (explicit: the default changed after it)
# method -> its own options (each goes on the prior)
METHODS = {
    "+thin_one_sided": {"depth_thin": "one-sided"},
    "+thin_down": {"depth_thin": "down"},
    "+gate": {"depth_gate_disagreement": 3.0},
    "+patch": {"depth_alignment": "patch"},
}
ROWS = ("rgb", "prior", *METHODS, "tiled", "tiled+thin_one_sided", "best_combo")
# (figure, direction: +1 higher is better, -1 lower is better)
FIGURES = [("score", +1), ("stem_cover", +1), ("stem_breaks", -1), ("cover_peduncle", +1), ("floaters", -1),
           ("psnr", +1), ("depth_abs_rel", -1)]
LABELS = {"score": "score", "stem_cover": "stem cover", "stem_breaks": "breaks", "cover_peduncle": "peduncle cover",
          "floaters": "floaters", "psnr": "PSNR", "depth_abs_rel": "AbsRel", "miou": "mIoU"}
FORMATS = {"psnr": "{:.2f}", "stem_breaks": "{:.1f}", "gaussians": "{:.0f}", "train_wall_s": "{:.0f}"}
COLUMNS = [("PSNR", "psnr"), ("depth AbsRel", "depth_abs_rel"), ("mIoU", "miou"), ("floaters", "floaters"),
           ("stem cover", "stem_cover"), ("peduncle cover", "cover_peduncle"), ("breaks", "stem_breaks"),
           ("Gaussians", "gaussians"), ("train s", "train_wall_s"), ("score", "score")]
TARGETS = ("not worse than rgb on stems", "keeps half of prior's PSNR gain", "keeps half of prior's AbsRel gain",
           "floaters or breaks lower than rgb (shown)")


# -------------------------------------------------------------------------------------------------
# verdicts and targets (pure functions of the summaries)
# -------------------------------------------------------------------------------------------------


def compare(summary: dict, row: str, ref: str) -> dict:
    """``{figure: verdict}`` of ``row`` against ``ref`` on every figure of :data:`FIGURES`."""
    def vals(r, k):
        s = summary[r].get(k)
        return s["values"] if s else []

    return {k: verdict(vals(row, k), vals(ref, k), d) for k, d in FIGURES}


def _half_gain(row: float | None, rgb: float | None, prior: float | None, direction: int) -> tuple[str, str]:
    """Whether ``row`` keeps at least half of ``prior``'s gain over ``rgb`` (means; ``direction``
    +1: higher is better). When prior gains nothing, ``row`` must not be below rgb."""
    if row is None or rgb is None or prior is None:
        return "not measured", ""
    g_row, g_prior = direction * (row - rgb), direction * (prior - rgb)
    fig = f"gain {g_row:+.3g} vs prior's {g_prior:+.3g}"
    if g_prior <= 0:
        return ("met" if g_row >= 0 else "not met"), fig + " (prior gains nothing: not below rgb)"
    return ("met" if g_row >= 0.5 * g_prior else "not met"), fig


def targets(summary: dict) -> dict:
    """The issue's targets for every row but rgb: ``{row: [{"target", "status", "figure"}]}``."""
    if "rgb" not in summary:
        return {}

    def mean(r, k):
        s = summary.get(r, {}).get(k)
        return None if s is None else s["mean"]

    out = {}
    for row in summary:
        if row == "rgb":
            continue
        v = compare(summary, row, "rgb")
        stems = [v[k] for k in ("stem_cover", "stem_breaks", "cover_peduncle")]
        t1 = ("met" if "worse" not in stems else "not met",
              ", ".join(f"{LABELS[k]} {v[k]}" for k in ("stem_cover", "stem_breaks", "cover_peduncle")))
        t2 = _half_gain(mean(row, "psnr"), mean("rgb", "psnr"), mean("prior", "psnr"), +1)
        t3 = _half_gain(mean(row, "depth_abs_rel"), mean("rgb", "depth_abs_rel"), mean("prior", "depth_abs_rel"), -1)
        t4 = ("met" if "shown" in (v["floaters"], v["stem_breaks"]) else "not met",
              f"floaters {v['floaters']}, breaks {v['stem_breaks']}")
        out[row] = [{"target": name, "status": s, "figure": f} for name, (s, f) in zip(TARGETS, (t1, t2, t3, t4))]
    return out


def combo(gains: dict, base_scores: dict) -> tuple[dict, list[str], str, dict]:
    """``best_combo`` from ``gains {method: mean score - prior's}`` and ``base_scores {"prior": s,
    "tiled": s}``: returns ``(options, methods used, base row, {method: why left out})``. One
    ``--depth-thin`` value: the larger gain of one-sided and down is kept."""
    used = [m for m, g in gains.items() if g is not None and g > 0]
    left = {}
    thin = [m for m in used if METHODS[m].get("depth_thin")]
    if len(thin) > 1:
        keep = max(thin, key=lambda m: gains[m])
        for m in thin:
            if m != keep:
                used.remove(m)
                left[m] = f"--depth-thin takes one value; {keep} gained more"
    base = "tiled" if (base_scores.get("tiled") is not None and base_scores.get("prior") is not None
                       and base_scores["tiled"] > base_scores["prior"]) else "prior"
    opts = dict(PRIOR)
    for m in used:
        opts.update(METHODS[m])
    return opts, used, base, left


# -------------------------------------------------------------------------------------------------
# one preset
# -------------------------------------------------------------------------------------------------


class ThinStudy:
    def __init__(self, preset: str, scene: Path, tiled_scene: Path, out: Path, iterations: int, seeds: list[int],
                 threads: int, max_views: int, only: set[str]):
        from s3dgs.scene.groundtruth import load_ground_truth

        self.preset, self.scene, self.tiled_scene, self.out = preset, scene, tiled_scene, out
        self.iterations, self.seeds, self.threads, self.max_views, self.only = iterations, seeds, threads, max_views, only
        self.gt = load_ground_truth(scene)
        self.rows: dict[str, dict] = {}

    def row(self, name: str, options: dict, scene: Path, note: str, dirname: str | None = None) -> None:
        """Train (when in ``--only`` or no ``--only``) or read (when finished) every seed of a row."""
        runs = []
        for seed in self.seeds:
            d = self.out / "runs" / self.preset / (dirname or name) / f"seed{seed}"
            if not ((not self.only or name in self.only) or (d / "metrics.json").exists()):
                continue
            opts = {"num_iterations": self.iterations, **options, "seed": seed}
            m, rec = train_and_evaluate(d, scene, opts, threads=self.threads, max_views=self.max_views,
                                        log_every=max(1, self.iterations // 10), check=True,
                                        label=f"{self.preset}/{name}/seed{seed}")
            fig = figures(m, class_coverage(d, self.gt, m["geometry"]["tolerances"]))
            runs.append({"seed": seed, "run": str(d.relative_to(self.out)), **fig,
                         **{k: rec.get(k) for k in ("date", "train_wall_s", "eval_wall_s", "threads", "load_average",
                                                    "reused")}})
            print(f"[{self.preset}/{name}/seed{seed}] " + "  ".join(
                f"{LABELS[k]} {fmt_spread(spread([fig.get(k)]), FORMATS.get(k, '{:.3f}'))}" for k, _ in FIGURES[1:]),
                flush=True)
        if runs:
            self.rows[name] = {"name": name, "config": options, "scene": str(scene), "note": note, "runs": runs}

    def complete(self, name: str) -> bool:
        return name in self.rows and len(self.rows[name]["runs"]) == len(self.seeds)

    def rescore(self) -> None:
        ref = spread([r["psnr"] for r in self.rows["rgb"]["runs"]]) if "rgb" in self.rows else None
        for row in self.rows.values():
            for r in row["runs"]:
                r["score"] = score(r, ref["mean"] if ref else None)
            keys = [k for k in row["runs"][0] if k not in ("seed", "run", "date", "load_average", "reused")]
            row["summary"] = {k: spread([r.get(k) for r in row["runs"]]) for k in keys}

    def mean(self, name: str, key: str = "score") -> float | None:
        s = self.rows[name]["summary"].get(key) if name in self.rows else None
        return None if s is None else s["mean"]

    def run(self) -> dict:
        t0 = time.perf_counter()
        self.row("rgb", RGB, self.scene, "RGB + semantics, no depth term")
        self.row("prior", PRIOR, self.scene, "the prior as shipped before issue 22 (--depth-thin off)")
        for name, opts in METHODS.items():
            self.row(name, opts, self.scene, "on prior: " + " ".join(f"{k}={v}" for k, v in opts.items()))
        self.row("tiled", PRIOR, self.tiled_scene, f"prior's options on the tiled prior ({self.tiled_scene})")
        self.row("tiled+thin_one_sided", METHODS["+thin_one_sided"], self.tiled_scene,
                 "+thin_one_sided on the tiled prior (the candidate default: a term and a prior, not a rule's pick)")
        gains: dict = {}
        if self.rows:
            self.rescore()
        missing = [n for n in ("rgb", "prior", *METHODS, "tiled") if not self.complete(n)]
        if missing and "best_combo" in self.only:
            raise StudyError(f"{self.preset}: best_combo needs rows {', '.join(missing)} finished for seeds "
                             f"{self.seeds}: train them first (--only ...)")
        if not missing and (not self.only or "best_combo" in self.only
                            or (self.out / "runs" / self.preset / "best_combo").exists()):
            gains = {m: self.mean(m) - self.mean("prior") for m in METHODS}
            opts, used, base, left = combo(gains, {"prior": self.mean("prior"), "tiled": self.mean("tiled")})
            note = f"on {base}: " + (" + ".join(used) if used else "no method beat prior's score")
            if left:
                note += "; left out: " + "; ".join(f"{k} ({v})" for k, v in left.items())
            same = base if not used else (used[0] if len(used) == 1 and base == "prior" else None)
            if same is not None:
                self.rows["best_combo"] = {**self.rows[same], "name": "best_combo",
                                           "note": note + f" (the runs of {same})", "same_as": same}
            else:
                self.row("best_combo", opts, self.tiled_scene if base == "tiled" else self.scene, note)
                self.rows["best_combo"]["same_as"] = None
            self.rows["best_combo"]["combo"] = {"methods": used, "base": base, "left_out": left}
            self.rescore()
        rows = [self.rows[n] for n in ROWS if n in self.rows]
        summary = {r["name"]: r["summary"] for r in rows}
        vs = {ref: {r: compare(summary, r, ref) for r in summary if r != ref} for ref in ("rgb", "prior")
              if ref in summary}
        return {"preset": self.preset, "scene": str(self.scene), "tiled_scene": str(self.tiled_scene),
                "iterations": self.iterations, "seeds": self.seeds, "threads": self.threads,
                "held_out_views": rows[0]["runs"][0]["held_out_views"] if rows else None,
                "gains_over_prior": gains, "rows": rows, "verdicts": vs, "targets": targets(summary),
                "study_wall_s": time.perf_counter() - t0}


# -------------------------------------------------------------------------------------------------
# output
# -------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    lines = ["# Thin-stem study (issue 22)", "",
             f"Command: `{result['command']}`  ", f"Date: {result['date']}; machine: {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores.", "",
             "Each cell: mean [min, max] over the training seeds. Verdicts from the seed ranges: *shown* (apart in "
             "the promised direction), *worse* (apart in the other), *not shown* (overlapping). stem cover / breaks: "
             "true centrelines covered by opaque Gaussians of any class; peduncle cover: the same on peduncles and "
             "pedicels; floaters: opacity-weighted, plant region. Score: stem cover - floaters - 0.01 x breaks - "
             "0.05 x (dB below rgb)."]
    for name, r in result["presets"].items():
        lines += ["", f"## Preset `{name}`", "",
                  f"Scene `{r['scene']}` (tiled prior: `{r['tiled_scene']}`), {r['iterations']} iterations, seeds "
                  f"{', '.join(map(str, r['seeds']))}, {r['held_out_views']} held-out views, {r['threads']} thread(s) "
                  f"per run; `{r['command']}`.", "",
                  "| row | seeds | " + " | ".join(c for c, _ in COLUMNS) + " | note |",
                  "|---|---:|" + "---:|" * len(COLUMNS) + "---|"]
        for row in r["rows"]:
            s = row["summary"]
            lines.append(f"| {row['name']} | {len(row['runs'])} | "
                         + " | ".join(fmt_spread(s.get(k), FORMATS.get(k, "{:.3f}")) for _, k in COLUMNS)
                         + f" | {row['note']} |")
        for ref, table in r["verdicts"].items():
            lines += ["", f"**Against {ref}**:", "", "| row | " + " | ".join(LABELS[k] for k, _ in FIGURES) + " |",
                      "|---|" + "---|" * len(FIGURES)]
            for row, v in table.items():
                lines.append(f"| {row} | " + " | ".join(v[k] for k, _ in FIGURES) + " |")
        if r["targets"]:
            lines += ["", "**The issue's targets** (means of the seeds):", "",
                      "| row | " + " | ".join(TARGETS) + " |", "|---|" + "---|" * len(TARGETS)]
            for row, ts in r["targets"].items():
                lines.append(f"| {row} | " + " | ".join(f"{t['status']} ({t['figure']})" if t["figure"] else t["status"]
                                                        for t in ts) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="closeup", help="comma-separated synthetic presets: closeup, default")
    ap.add_argument("--out", type=Path, default=Path("bench_out/thin_study"), help="output folder")
    ap.add_argument("--scenes", type=Path, default=None,
                    help="folder of the scenes, one per preset named after it (default OUT/scenes); made when missing")
    ap.add_argument("--tiled-scenes", type=Path, default=None,
                    help="folder of the same scenes with a tiled prior (default OUT/scenes_tiled<N>); made when missing")
    ap.add_argument("--prior-tiles", type=int, default=3, help="tiles per side of the tiled prior (at least 2)")
    ap.add_argument("--scene-seed", type=int, default=0, help="seed of the synthetic plant")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds; every row runs with each")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: torch's default)")
    ap.add_argument("--max-views", type=int, default=0, help="evaluate only the first n held-out views (0: all)")
    ap.add_argument("--only", default="", help=f"comma-separated rows to train (default: all): {', '.join(ROWS)}; "
                    "finished runs of the others are read")
    ap.add_argument("--tiny", action="store_true", help="the tiny preset, 10 iterations, seeds 0,1, one held-out view")
    a = ap.parse_args(argv)
    if a.tiny:
        a.preset, a.max_views = "tiny", a.max_views or 1
        if not any(x.startswith("--iterations") for x in argv):
            a.iterations = 10
        if not any(x.startswith("--seeds") for x in argv):
            a.seeds = "0,1"
    presets = [p.strip() for p in a.preset.split(",") if p.strip()]
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    bad = sorted(only - set(ROWS)) + [p for p in presets if p not in ("closeup", "default", "tiny")]
    if bad or not seeds or not presets or a.iterations < 1 or a.prior_tiles < 2:
        what = bad or "check --seeds, --preset, --iterations, --prior-tiles"
        print(f"thin_study: unknown rows/presets or nothing to do: {what}", file=sys.stderr)
        return 2
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([".venv/bin/python", "benchmarks/thin_study.py", *argv])
    result = {"study": "thin-stem study (issue 22)", "presets": {}}
    result["presets"] = earlier_presets(out / "thin_study.json")
    try:
        for preset in presets:
            scene = ensure_scene((a.scenes or out / "scenes") / preset, preset, a.scene_seed)
            tiled = (a.tiled_scenes or out / f"scenes_tiled{a.prior_tiles}") / preset
            if not (tiled / "sparse").exists():
                from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

                print(f"{tiled}: making the plant with a tiled prior ({a.prior_tiles} tiles per side)", flush=True)
                make_synthetic_scene(SynthConfig(out=tiled, preset=preset, seed=a.scene_seed,
                                                 prior_tiles=a.prior_tiles, progress=False))
            r = ThinStudy(preset, scene, tiled, out, a.iterations, seeds, a.threads, a.max_views, only).run()
            result["presets"][preset] = {**r, "machine": machine(), "date": now_iso(), "command": command}
            if r["rows"]:
                plot(r, out / "plots" / f"thin_{preset}.png")
    except StudyError as exc:
        print(f"thin_study: {exc}", file=sys.stderr)
        return 2
    write_study(out, "thin_study", result, markdown, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
