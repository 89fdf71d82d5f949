"""Phenotypes measured on trained runs of the synthetic plant against its ground truth (issue 15).

    .venv/bin/python benchmarks/phenotype.py OUT [--preset default] [--seeds 0,1,2] [--iterations 3000]
    .venv/bin/python benchmarks/phenotype.py OUT --runs RUN [RUN ...]    # existing runs, no training

1. OUT/scene: the synthetic plant of ``--preset`` (scene seed 0), made when missing (or ``--scene``).
2. OUT/runs/seed<k>, one per training seed: trained through the public ``s3dgs.train.train(...)``
   on the scene's true (metric) poses when the folder has no point_cloud.ply, reused otherwise.
   ``--runs`` measures the given run folders instead (their scene from config.json, or --scene).
3. Each run: `s3dgs.phenotype.run_phenotype` (writes RUN/phenotypes.json, .csv, .png; up from the
   camera ring, scale from the known poses), compared with gt/stems.json:

   - node count: exact match (per run, and the rate over runs); model nodes are matched to true
     nodes by height (scipy linear_sum_assignment, at most half the shortest true internode apart);
   - internode length: absolute percentage error of each model internode whose two nodes match
     consecutive true nodes, against the true arc length along the true centreline; MAPE per run;
   - plant height: model minus truth (m and %); truth = the main stem's top above the ground z = 0;
   - stem diameter: absolute percentage error per matched internode against twice the true radius
     averaged over the internode's middle half (the part the model's diameter is measured on);
   - peduncles: the model's count against the true number of peduncles (the fruit trusses' stalks,
     class P; the synthetic plant's petioles are leaf tissue, and only peduncles carry a P keypoint).

Prints one JSON object (also OUT/phenotype_benchmark.json): per run the figures and the model's
notes, and over runs the exact-match rate, mean MAPE, mean absolute height error, mean diameter
error and peduncle count error. What the figures depend on: the semantic accuracy of the runs
(a short CPU run labels only ~50-200 Gaussians per class, so nodes go missing), the resolution
(the default preset's 4 mm stem is 1-2 px wide at half resolution: diameters then measure the
pixel footprint, not the stem), and the number of seeds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# ------------------------------------------------------------------------------ ground truth

def _polyline_s(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def ground_truth_phenotypes(scene: Path) -> dict:
    """The true traits of a synthetic scene from gt/stems.json (metres, z up, ground z = 0)."""
    from s3dgs.scene.groundtruth import load_ground_truth

    gt = load_ground_truth(scene)
    main = sorted((s for s in gt.stems if s["part"] == "main stem"), key=lambda s: s["points"][0][2])
    pts, rad = [], []
    for s in main:
        p, r = np.asarray(s["points"]), np.broadcast_to(np.asarray(s["radius"]), (len(s["points"]),))
        if pts and np.linalg.norm(pts[-1][-1] - p[0]) < 1e-9:
            p, r = p[1:], r[1:]
        pts.append(p)
        rad.append(r)
    pts, rad = np.concatenate(pts), np.concatenate(rad)
    s = _polyline_s(pts)
    # dense resampling for projections
    ss = np.linspace(0, s[-1], 20001)
    dense = np.stack([np.interp(ss, s, pts[:, k]) for k in range(3)], 1)
    node_xyz = np.stack([n["N"] for n in gt.nodes])
    from scipy.spatial import cKDTree

    _, i = cKDTree(dense).query(node_xyz)
    node_s = ss[i]
    order = np.argsort(node_s)
    node_s, node_xyz = node_s[order], node_xyz[order]
    inter = []
    for a, b in zip(node_s[:-1], node_s[1:]):
        L = b - a
        mid = np.linspace(a + 0.25 * L, b - 0.25 * L, 50)
        inter.append({"length": float(L), "diameter": float(2 * np.interp(mid, s, rad).mean())})
    branches = [st for st in gt.stems if st["class"] == "P" and st["part"] == "peduncle"]
    return {
        "plant_height": float(pts[:, 2].max() - 0.0),
        "stem_length": float(s[-1]),
        "node_count": len(node_s),
        "node_heights": node_xyz[:, 2].tolist(),
        "internodes": inter,
        "p_branches": len(branches),
        "peduncles_only": sum(st["part"] == "peduncle" for st in branches),
        "p_branches_per_node": [sum(st["node"] == k for st in branches) for k in range(len(gt.nodes))],
    }


# ------------------------------------------------------------------------------ comparison

def compare(res: dict, truth: dict) -> dict:
    """Model phenotypes (run_phenotype's dict, metres) against the truth."""
    from scipy.optimize import linear_sum_assignment

    p = res["plant"]
    row: dict = {"units": res["units"], "scale_source": res["scale"]["source"], "notes": res["notes"]}
    row["node_count"] = p["node_count"]
    row["node_count_true"] = truth["node_count"]
    row["node_count_exact"] = p["node_count"] == truth["node_count"]
    row["plant_height"] = p["plant_height"]
    row["plant_height_true"] = truth["plant_height"]
    if p["plant_height"] is not None:
        row["plant_height_error_m"] = p["plant_height"] - truth["plant_height"]
        row["plant_height_error_pct"] = 100 * row["plant_height_error_m"] / truth["plant_height"]
    row["peduncle_count"] = p["peduncle_count"]
    row["p_branches_true"] = truth["p_branches"]
    row["peduncles_only_true"] = truth["peduncles_only"]
    row["stem_diameter_median"] = p["stem_diameter_median"]

    # nodes matched by height (heights above the ground; the model's are above its base)
    m_nodes = res["nodes"]
    t_h = np.asarray(truth["node_heights"])
    matches = {}
    if m_nodes and all(n["height"] is not None for n in m_nodes):
        m_h = np.array([n["height"] for n in m_nodes])
        tol = 0.5 * min(i["length"] for i in truth["internodes"]) if truth["internodes"] else 0.05
        cost = np.abs(m_h[:, None] - t_h[None, :])
        ri, ci = linear_sum_assignment(cost)
        matches = {int(r) + 1: int(c) for r, c in zip(ri, ci) if cost[r, c] <= tol}
        row["node_height_mae_m"] = float(np.mean([abs(m_h[r - 1] - t_h[c]) for r, c in matches.items()])) \
            if matches else None
    row["nodes_matched"] = len(matches)
    ape_len, ape_d, pairs = [], [], []
    for it in res["internodes"]:
        a, b = matches.get(it["from_node"]), matches.get(it["to_node"])
        if a is None or b is None or b != a + 1:
            continue
        tr = truth["internodes"][a]
        pair = {"model": [it["from_node"], it["to_node"]], "true": [a + 1, b + 1],
                "length": it["length"], "length_true": tr["length"],
                "diameter": it["stem_diameter"], "diameter_true": tr["diameter"]}
        if it["length"] is not None:
            ape_len.append(100 * abs(it["length"] - tr["length"]) / tr["length"])
        if it["stem_diameter"] is not None:
            ape_d.append(100 * abs(it["stem_diameter"] - tr["diameter"]) / tr["diameter"])
        pairs.append(pair)
    row["internodes_matched"] = len(pairs)
    row["internodes_true"] = len(truth["internodes"])
    row["internode_mape_pct"] = float(np.mean(ape_len)) if ape_len else None
    row["stem_diameter_mape_pct"] = float(np.mean(ape_d)) if ape_d else None
    row["internode_pairs"] = pairs
    return row


def summarise(rows: list[dict]) -> dict:
    def vals(k):
        return [r[k] for r in rows if r.get(k) is not None]

    def mean(k, f=lambda v: v):
        v = vals(k)
        return float(np.mean([f(x) for x in v])) if v else None

    def span(k):
        v = vals(k)
        return [float(min(v)), float(max(v))] if v else None

    return {
        "runs": len(rows),
        "node_count_exact_rate": float(np.mean([bool(r["node_count_exact"]) for r in rows])) if rows else None,
        "node_counts": [r["node_count"] for r in rows], "node_count_true": rows[0]["node_count_true"] if rows else None,
        "internode_mape_pct_mean": mean("internode_mape_pct"), "internode_mape_pct_range": span("internode_mape_pct"),
        "internodes_matched": [r["internodes_matched"] for r in rows],
        "plant_height_abs_error_m_mean": mean("plant_height_error_m", abs),
        "plant_height_error_pct_range": span("plant_height_error_pct"),
        "stem_diameter_mape_pct_mean": mean("stem_diameter_mape_pct"),
        "stem_diameter_mape_pct_range": span("stem_diameter_mape_pct"),
        "peduncle_counts": [r["peduncle_count"] for r in rows],
        "p_branches_true": rows[0]["p_branches_true"] if rows else None,
        "peduncle_count_abs_error_mean": mean("peduncle_count_error"),
        "node_height_mae_m_mean": mean("node_height_mae_m"),
    }


# ------------------------------------------------------------------------------ runs

def make_scene(out: Path, preset: str) -> Path:
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

    scene = out / "scene"
    if not (scene / "gt" / "stems.json").is_file():
        print(f"[scene] making the synthetic plant ({preset} preset) in {scene}", flush=True)
        make_synthetic_scene(SynthConfig(out=scene, preset=preset, seed=0, progress=False))
    return scene


def train_run(scene: Path, run: Path, seed: int, iterations: int, resolution_scale: float, threads: int) -> dict:
    """Train one run through the public `s3dgs.train.train` on the scene's true poses."""
    from s3dgs.train import train

    t = time.perf_counter()
    train(scene=scene, out_dir=run, seed=seed, num_iterations=iterations, resolution_scale=resolution_scale,
          num_threads=threads, progress=False, save_renders=False, log_every=max(10, iterations // 5),
          ckpt_every=10 * iterations + 1)
    dt = time.perf_counter() - t
    print(f"[seed {seed}] trained {iterations} iterations in {dt:.0f} s", flush=True)
    return {"train_time_s": dt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="benchmark folder (scene/, runs/seed<k>/, phenotype_benchmark.json)")
    ap.add_argument("--preset", default="default", help="synthetic preset (default, thin, tiny, closeup)")
    ap.add_argument("--scene", type=Path, default=None, help="use this synthetic scene instead of OUT/scene")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--resolution-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for training (0: default)")
    ap.add_argument("--runs", type=Path, nargs="*", default=None,
                    help="measure these existing run folders instead of training")
    a = ap.parse_args(argv)

    from s3dgs.config import load_run_config
    from s3dgs.phenotype import run_phenotype

    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, Path, Path, dict]] = []
    if a.runs:
        for r in a.runs:
            scene = a.scene or load_run_config(r)["scene"]
            if scene is None or not (scene / "gt" / "stems.json").is_file():
                ap.error(f"{r}: no synthetic scene with gt/stems.json found; pass --scene")
            runs.append((r.name, r, scene, {"reused": True}))
    else:
        scene = a.scene or make_scene(out, a.preset)
        for seed in [int(s) for s in a.seeds.split(",") if s.strip()]:
            run = out / "runs" / f"seed{seed}"
            info = {"reused": True}
            if not (run / "point_cloud.ply").is_file():
                info = {"reused": False, **train_run(scene, run, seed, a.iterations, a.resolution_scale,
                                                      a.threads)}
            runs.append((f"seed{seed}", run, scene, info))

    rows = []
    truths: dict[str, dict] = {}
    for name, run, scene, info in runs:
        truth = truths.setdefault(str(scene), ground_truth_phenotypes(scene))
        t = time.perf_counter()
        res = run_phenotype(run)
        row = {"run": name, "path": str(run), **info, "phenotype_time_s": time.perf_counter() - t,
               **compare(res, truth)}
        if row["peduncle_count"] is not None:
            row["peduncle_count_error"] = abs(row["peduncle_count"] - row["p_branches_true"])
        tc = load_run_config(run)["train"]
        ts = json.loads((run / "train_summary.json").read_text()) if (run / "train_summary.json").is_file() else {}
        row["training"] = {"iterations": ts.get("iterations"), "gaussians": ts.get("gaussians"),
                           "resolution_scale": tc.data.resolution_scale, "seed": tc.seed,
                           "semantic_warmup": tc.semantics.warmup_iterations}
        row["class_gaussians"] = res["counts"]
        rows.append(row)
        print(f"[{name}] nodes {row['node_count']}/{row['node_count_true']}, internode MAPE "
              f"{row['internode_mape_pct']}, height error {row.get('plant_height_error_m')}, diameter "
              f"MAPE {row['stem_diameter_mape_pct']}, P branches {row['peduncle_count']}/{row['p_branches_true']}",
              flush=True)
    result = {"date": _dt.date.today().isoformat(), "preset": a.preset if not a.runs else None,
              "iterations": a.iterations if not a.runs else None,
              "resolution_scale": a.resolution_scale if not a.runs else None,
              "truth": next(iter(truths.values())) if len(truths) == 1 else truths,
              "summary": summarise(rows), "runs": rows}
    text = json.dumps(result, indent=2)
    (out / "phenotype_benchmark.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
