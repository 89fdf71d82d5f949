"""The depth-prior study (issue 7, item 2): one scene, every depth option, the same held-out views.

    .venv/bin/python benchmarks/depth_study.py SCENE [--iterations 3000] [--preset default] [--out DIR]
    .venv/bin/python benchmarks/depth_study.py SCENE --tiny        # end to end in a minute or so

SCENE is made (the synthetic plant of `--preset`, seed 0) when it does not exist. Rows, in order,
each trained with the same seed and iterations and evaluated by `s3dgs.evaluate.evaluate_run` on
the same held-out views (every 8th):

1. ``rgb``            no depth term (lambda_depth 0; semantics as usual);
2. ``seed``           the seed's literal loss: depth_loss="seed" (depth space, per-view least squares);
3. ``disparity``      depth_loss="prior" in disparity space, per-view least-squares alignment;
4. ``disparity_sfm``  disparity with the robust alignment against the SfM points (depth_alignment="sfm");
5. ``best+multiscale``, ``best+edge_aware``, ``best+confidence``, ``best+stem_aware``: each option
   alone on top of the best of rows 2-4 (when that is ``seed``, whose literal loss takes no options,
   on the same formula through depth_loss="prior": depth space, per-view plain least squares);
6. ``lambda=0.02 ... 0.2``: the best row so far (2-5) at each lambda_depth;
7. ``prior_perfect``, ``prior_worse``: the best configuration on copies of the scene whose depth
   priors were regenerated with the synthetic scene's knobs (perfect_prior; 3x warp and 5x noise).

"Best" = highest ``stem coverage (any class) - floater fraction`` (the two things the prior is
meant to fix), ties broken by PSNR; `--select-by psnr|depth` picks by PSNR or plant-depth AbsRel.
`--seeds 1,2` trains rgb, disparity, the best base row and the best row again with those training
seeds (same scene) and reports each figure's mean and range, so a difference between rows can be
told from run-to-run noise.
Writes OUT/study.json, OUT/study.md (one table) and OUT/plots/*.png; the runs stay in OUT/runs/.
A row whose run already has metrics.json is reused (delete OUT/runs/<row> to redo it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_runs import ensure_scene, fmt_spread, spread, train_and_evaluate  # noqa: E402

LAMBDAS = (0.02, 0.05, 0.1, 0.2)
ADDONS = {"multiscale": {"depth_multiscale": True}, "edge_aware": {"depth_edge_aware": True},
          "confidence": {"depth_confidence": True}, "stem_aware": {"depth_stem_aware": True}}
# depth options every row sets explicitly, so that trainer defaults do not leak into the base rows
BASE_DEPTH = {"lambda_depth": 0.1, "depth_loss": "prior", "depth_space": "disparity",
              "depth_alignment": "per_view", "depth_robust": False, "depth_multiscale": False,
              "depth_edge_aware": False, "depth_confidence": False, "depth_stem_aware": False}
BASE_ROWS = {
    "seed": {**BASE_DEPTH, "depth_loss": "seed", "depth_space": "depth"},
    "disparity": dict(BASE_DEPTH),
    "disparity_sfm": {**BASE_DEPTH, "depth_alignment": "sfm", "depth_robust": True},
}
# the seed's literal formula (rendered depth fitted to the prior value per view by plain least
# squares) through the loss that takes the add-on options
SEED_WITH_OPTIONS = {**BASE_DEPTH, "depth_space": "depth"}
PRIOR_KNOBS = {"prior_perfect": {"perfect_prior": True},
               "prior_worse": {"prior_warp_size": 0.45, "prior_noise_sigma": 0.05}}


def schedule(iterations: int) -> dict:
    """Trainer settings scaled to a run of `iterations` (the trainer's defaults suit 7000+)."""
    it = iterations
    return {"num_iterations": it, "sem_warmup_iterations": min(4000, it // 3),
            "refine_start_iter": max(10, min(500, it // 6)), "refine_every": 100 if it >= 1000 else 50,
            "refine_stop_iter": int(0.8 * it), "reset_every": 3000 if it >= 6000 else 10 * it + 1,
            "sh_degree_interval": max(1, min(1000, it // 8))}


def make_prior_copy(scene: Path, dest: Path, knobs: dict) -> Path:
    """A copy of synthetic `scene` whose depths/ were regenerated with the prior knobs `knobs`
    (SynthConfig fields). Everything else is symlinked, so images, poses, heatmaps and gt are
    shared. The prior is simulated from the scene's true depth, as `s3dgs synth` does."""
    from s3dgs.depth.io import save_depth_png, write_meta
    from s3dgs.scene.synth import SynthConfig, simulate_prior

    meta = json.loads((scene / "gt" / "meta.json").read_text())
    names = {f.name for f in fields(SynthConfig)}
    base = {k: v for k, v in meta["config"].items() if k in names}
    cfg = SynthConfig(out=dest, **{**base, **knobs, "progress": False, "preview": False}).resolved()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in scene.iterdir():
        if p.name != "depths":
            os.symlink(p.resolve(), dest / p.name)
    (dest / "depths").mkdir()
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 5]))
    per_image = {}
    for f in sorted((scene / "gt" / "depth").glob("*.npy")):
        v, rec = simulate_prior(cfg, np.load(f), rng)
        per_image[f.stem] = rec
        save_depth_png(dest / "depths" / f"{f.stem}.png", v)
    write_meta(dest / "depths", {"kind": "disparity", "simulated": True,
                                 "model": "s3dgs synth prior regenerated by benchmarks/depth_study.py",
                                 "knobs": {k: (str(v) if isinstance(v, Path) else v) for k, v in knobs.items()},
                                 "config": {k: v for k, v in asdict(cfg).items() if k != "out"},
                                 "per_image": per_image})
    return dest


def prior_error(scene: Path) -> float | None:
    """Mean AbsRel of the scene's prior against the true disparity after a per-view affine fit
    (least squares), so the rows of the prior knobs can say how wrong the prior was."""
    from s3dgs.depth.io import load_depth_png

    errs = []
    for f in sorted((scene / "gt" / "depth").glob("*.npy")):
        png = scene / "depths" / f"{f.stem}.png"
        if not png.exists():
            continue
        d = 1.0 / np.load(f).astype(np.float64).ravel()
        v = load_depth_png(png).astype(np.float64).ravel()
        A = np.stack([v, np.ones_like(v)], 1)
        coef, *_ = np.linalg.lstsq(A, d, rcond=None)
        errs.append(float(np.mean(np.abs(A @ coef - d) / d)))
    return float(np.mean(errs)) if errs else None


def score(h: dict, by: str) -> float:
    if by == "psnr":
        return h["psnr"] or -1e9
    if by == "depth":
        v = h["plant_abs_rel"] if h["plant_abs_rel"] is not None else h["depth_abs_rel"]
        return -(v if v is not None else 1e9)
    cover, fl = h["stem_cover"], h["floaters"]
    if cover is None or fl is None:
        return h["psnr"] or -1e9
    return cover - fl + 1e-4 * (h["psnr"] or 0)


class Study:
    def __init__(self, scene: Path, out: Path, iterations: int, seed: int, threads: int, max_views: int,
                 extra: dict | None = None):
        self.scene, self.out, self.seed = scene, out, seed
        self.iterations, self.threads, self.max_views = iterations, threads, max_views
        self.extra = extra or {}
        self.rows: dict[str, dict] = {}

    def run(self, name: str, overrides: dict, scene: Path | None = None, note: str = "",
            seed: int | None = None, record: bool = True) -> dict:
        from s3dgs.evaluate import headline

        scene = scene or self.scene
        kw = {**schedule(self.iterations), **self.extra, **overrides,
              "seed": self.seed if seed is None else seed}
        m, _ = train_and_evaluate(self.out / "runs" / name, scene, kw, threads=self.threads,
                                  max_views=self.max_views, label=name)
        row = {"name": name, "config": {k: v for k, v in overrides.items()}, "scene": str(scene),
               "note": note, **headline(m)}
        if record:
            self.rows[name] = row
        print(f"[{name}] PSNR {row['psnr']:.2f}  stem cover {row['stem_cover']}  floaters {row['floaters']}"
              f"  depth AbsRel {row['depth_abs_rel']}", flush=True)
        return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", type=Path, help="scene folder (made with --preset when missing)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default SCENE_depth_study)")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--preset", default="default", choices=["default", "thin", "tiny"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--max-views", type=int, default=0, help="evaluate only the first n held-out views")
    ap.add_argument("--resolution-scale", type=float, default=1.0, help="train and evaluate at this scale")
    ap.add_argument("--select-by", default="score", choices=["score", "psnr", "depth"])
    ap.add_argument("--seeds", default="",
                    help="comma-separated extra training seeds: rgb, disparity, the best base row and the best "
                         "row are trained again with each (runs/<row>@seed<k>) and the spread is reported")
    ap.add_argument("--only", default="", help="comma-separated row names to run (default: all)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny preset, 20 iterations, one held-out view: a smoke test of the whole study")
    a = ap.parse_args(argv)
    if a.tiny:
        a.preset, a.iterations, a.max_views = "tiny", min(a.iterations, 20), a.max_views or 1
    only = {s.strip() for s in a.only.split(",") if s.strip()}

    def want(name: str) -> bool:
        return not only or name in only

    def have(name: str) -> bool:
        """Wanted, or already run (by an earlier or a parallel invocation with --only): rows that
        exist take part in choosing the best configuration."""
        return want(name) or (out / "runs" / name / "metrics.json").exists()

    scene = ensure_scene(a.scene, a.preset, a.seed)
    out = a.out or scene.parent / f"{scene.name}_depth_study"
    (out / "plots").mkdir(parents=True, exist_ok=True)
    extra = {"sh_degree": 1} if a.tiny else {}
    if a.resolution_scale != 1.0:
        extra["resolution_scale"] = a.resolution_scale
    st = Study(scene, out, a.iterations, a.seed, a.threads, a.max_views, extra)
    t0 = time.perf_counter()
    has_conf = any((scene / "depths").glob("*.conf.png")) if (scene / "depths").is_dir() else False
    synthetic = (scene / "gt" / "meta.json").exists()

    if want("rgb"):
        st.run("rgb", {"lambda_depth": 0.0, "no_depth": True})
    base = [st.run(n, cfg) for n, cfg in BASE_ROWS.items() if have(n)]
    best = max(base, key=lambda r: score(r, a.select_by)) if base else None
    best_cfg = dict(best["config"]) if best else dict(BASE_ROWS["disparity_sfm"])
    addon_cfg, addon_note = best_cfg, ""
    if best_cfg.get("depth_loss") == "seed":
        # the seed's literal loss takes no options: the add-ons go on the same formula through the
        # configurable loss (depth space, per-view plain least squares)
        addon_cfg, addon_note = dict(SEED_WITH_OPTIONS), " (the seed's formula through depth_loss=prior)"
    tried = list(base)
    for n, opt in ADDONS.items():
        name = f"best+{n}"
        if have(name):
            note = f"on top of {best['name'] if best else 'disparity_sfm'}{addon_note}"
            if n == "confidence" and not has_conf:
                note += "; no depths/*.conf.png in the scene, so this equals its base"
            tried.append(st.run(name, {**addon_cfg, **opt}, note=note))
    top = max(tried, key=lambda r: score(r, a.select_by)) if tried else None
    top_cfg = dict(top["config"]) if top else best_cfg
    for lam in LAMBDAS:
        name = f"lambda={lam}"
        if want(name) and top is not None and lam == top_cfg.get("lambda_depth"):
            st.rows[name] = {**top, "name": name, "note": f"the same run as {top['name']} (lambda {lam})"}
        elif want(name):
            st.run(name, {**top_cfg, "lambda_depth": lam}, note=f"{top['name'] if top else 'default'} at lambda {lam}")
    for name, knobs in PRIOR_KNOBS.items():
        if not want(name):
            continue
        if not synthetic:
            print(f"[{name}] skipped: {scene} is not a synthetic scene (no gt/meta.json)")
            continue
        copy = out / "scenes" / name
        if not ((out / "runs" / name / "metrics.json").exists() and (copy / "depths" / "meta.json").exists()):
            copy = make_prior_copy(scene, copy, knobs)  # kept when its row is done (parallel --only runs)
        st.run(name, dict(top_cfg), scene=copy, note=f"{top['name'] if top else 'default'} config; prior {knobs}")

    spread = {}
    extra_seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    if extra_seeds:
        for name in dict.fromkeys(["rgb", "disparity", best["name"] if best else "", top["name"] if top else ""]):
            if name not in st.rows:
                continue
            reps = [st.rows[name]] + [st.run(f"{name}@seed{k}", st.rows[name]["config"], seed=k,
                                             scene=Path(st.rows[name]["scene"]), record=False)
                                      for k in extra_seeds]
            spread[name] = {"seeds": [a.seed] + extra_seeds,
                            **{k: [r[k] for r in reps] for k in SPREAD_KEYS}}
    prior_err = {"scene": prior_error(scene)} if synthetic else {}
    for name in PRIOR_KNOBS:
        if (out / "scenes" / name).exists():
            prior_err[name] = prior_error(out / "scenes" / name)
    result = {"scene": str(scene), "iterations": a.iterations, "seed": a.seed, "select_by": a.select_by,
              "best_base": best["name"] if best else None, "best_overall": top["name"] if top else None,
              "prior_abs_rel_after_affine_fit": prior_err, "schedule": schedule(a.iterations),
              "study_time_s": time.perf_counter() - t0, "rows": list(st.rows.values()),
              "seed_spread": spread}
    (out / "study.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "study.md").write_text(markdown(result))
    plots(result, out / "plots")
    print(markdown(result))
    print(f"-> {out / 'study.md'}, {out / 'study.json'}, {out / 'plots'}")
    return 0


def _fmt(v, f="{:.3f}"):
    return "–" if v is None else f.format(v)


COLUMNS = [("PSNR", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.3f}"), ("depth AbsRel", "depth_abs_rel", "{:.3f}"),
           ("depth δ<1.25", "depth_delta1", "{:.3f}"), ("plant AbsRel", "plant_abs_rel", "{:.3f}"),
           ("mIoU", "miou", "{:.3f}"), ("floaters", "floaters", "{:.3f}"), ("stem cover", "stem_cover", "{:.3f}"),
           ("breaks", "stem_breaks", "{}"), ("stem cover (class)", "stem_cover_class", "{:.3f}"),
           ("Chamfer mm", "chamfer_mm", "{:.2f}"), ("Gaussians", "gaussians", "{}"),
           ("train s", "train_time_s", "{:.0f}")]


SPREAD_KEYS = ("psnr", "depth_abs_rel", "miou", "floaters", "stem_cover", "chamfer_mm")


def markdown(r: dict) -> str:
    head = (f"Depth-prior study on `{r['scene']}`: {r['iterations']} iterations, seed {r['seed']}, "
            f"best base row `{r['best_base']}`, best overall `{r['best_overall']}` (by {r['select_by']}).")
    lines = [head, "",
             "| row | " + " | ".join(c[0] for c in COLUMNS) + " | note |",
             "|---|" + "---:|" * len(COLUMNS) + "---|"]
    for row in r["rows"]:
        lines.append(f"| {row['name']} | " + " | ".join(_fmt(row[k], f) for _, k, f in COLUMNS)
                     + f" | {row['note']} |")
    if r["prior_abs_rel_after_affine_fit"]:
        errs = ", ".join(f"{k} {_fmt(v)}" for k, v in r["prior_abs_rel_after_affine_fit"].items())
        lines += ["", f"Prior error (AbsRel of the prior vs true disparity after a per-view affine fit): {errs}"]
    if r.get("seed_spread"):
        seeds = next(iter(r["seed_spread"].values()))["seeds"]
        lines += ["", f"Training-seed spread (seeds {', '.join(map(str, seeds))}; same scene): mean [min, max]", "",
                  "| row | " + " | ".join(SPREAD_KEYS) + " |", "|---|" + "---:|" * len(SPREAD_KEYS)]
        for name, sp in r["seed_spread"].items():
            lines.append(f"| {name} | " + " | ".join(fmt_spread(spread(sp[k])) for k in SPREAD_KEYS) + " |")
    lines += ["", ("stem cover / breaks: any class, opacity >= 0.5; (class): Gaussians of the stem's class; "
                   "floaters: opacity-weighted, Gaussians in the box around the plant; tolerances in each run's metrics.json.")]
    return "\n".join(lines) + "\n"


def plots(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["rows"]
    if not rows:
        return
    keys = [("psnr", "PSNR (dB)"), ("stem_cover", "stem coverage"), ("floaters", "floater fraction"),
            ("depth_abs_rel", "depth AbsRel")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = [x["name"] for x in rows]
    for ax, (k, label) in zip(axes.ravel(), keys):
        vals = np.array([x[k] if x[k] is not None else np.nan for x in rows], float)
        colors = ["tab:grey" if n == "rgb" else "tab:orange" if n.startswith("prior_") else "tab:green"
                  for n in names]
        ax.bar(range(len(rows)), vals, color=colors)
        if k == "psnr" and np.isfinite(vals).any():
            ax.set_ylim(np.nanmin(vals) - 1, np.nanmax(vals) + 0.5)
        if k in ("stem_cover", "floaters"):
            ax.set_ylim(0, max(1e-3, 1.1 * np.nanmax(vals)) if k == "floaters" and np.isfinite(vals).any() else 1)
        ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(out / "rows.png", dpi=110)
    plt.close(fig)
    lam = [x for x in rows if x["name"].startswith("lambda=")]
    if lam:
        xs = [float(x["name"].split("=")[1]) for x in lam]
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
        for ax, (k, label) in zip(axes, keys):
            ax.plot(xs, [x[k] if x[k] is not None else np.nan for x in lam], "o-")
            rgb = next((x for x in rows if x["name"] == "rgb"), None)
            if rgb is not None and rgb[k] is not None:
                ax.axhline(rgb[k], color="grey", ls="--", label="RGB only")
                ax.legend(fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("lambda_depth")
            ax.set_title(label)
        fig.tight_layout()
        fig.savefig(out / "lambda.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
