"""The ROMI virtual plant study (issue 21): traits of a plant someone else made, with and without masks.

ROMI's virtual Arabidopsis (shared/data/romi_virtual_plant: 18 views of 896x896, exact cameras, a
mask per organ class, the true mesh and the generator's phyllotaxis) is read as a user would
(`s3dgs prepare SCAN`: known poses, organ masks as class masks, space-carved initial points) and
trained at full resolution (the black margins that no photo shows anything in are cropped) with
every training seed, two rows:

1. ``masks``     the class masks supervise the semantic channels (Arabidopsis table: stem, pedicel,
                 fruit, flower, leaf), phenotypes from the geometry sharpened by the stem class;
2. ``geometry``  no semantic supervision at all (``no_semantics``), phenotypes from geometry only.

Per run: held-out PSNR and class IoU per class against the masks (every 8th view, as
`s3dgs eval`), geometry against the true mesh (accuracy: the opaque Gaussians' distance to the
surface; completeness: the share of the surface within a tolerance of a Gaussian), and the organ
sequence (`s3dgs phenotype --method geometry --reference`) aligned to the true one: organs found
/ missed / extra, median angle error, median internode error. Beside them, what a model that
measures nothing scores: a constant golden angle with the true mean internode, aligned the same
way. Targets (the issue): >= 90 % of the 41 organs found with < 10 % extra, median angle error
< 8 degrees, median internode error < 8 % of the mean internode, stem IoU >= 0.6.

    P=.venv/bin/python; S=benchmarks/romi_study.py; O=bench_out/romi_study
    $P $S --iterations 3000 --seeds 0,1,2 --threads 1 --out $O --only masks &
    $P $S --iterations 3000 --seeds 0,1,2 --threads 1 --out $O --only geometry; wait
    $P $S --iterations 3000 --seeds 0,1,2 --out $O          # reuses every run, writes the tables

Writes OUT/romi_study.json and OUT/romi_study.md; runs stay in OUT/runs/<row>/seed<k> (a run with
metrics.json is reused).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_runs import fmt_spread, machine, now_iso, spread, train_and_evaluate  # noqa: E402

SCAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "romi_virtual_plant"
ROWS = {
    "masks": {},
    "geometry": {"no_semantics": True},
}
TOLERANCES = (0.25, 0.5)  # mesh units: about 1 and 2 px at the cameras' distance (f 371 px, ~90 units)


def read_obj_y_up(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangles [T, 3] of a Wavefront OBJ exported by Blender (Y up), in the
    scan's world frame (Z up): (x, y, z)_obj -> (x, -z, y). Polygons are split into fans.
    Hand-written: three lines of the format, no mesh library in the project's dependencies."""
    verts, tris = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            idx = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
            tris += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    v = np.asarray(verts, np.float64)
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1), np.asarray(tris, np.int64)


def sample_surface(v: np.ndarray, t: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniformly on the triangle mesh (area-weighted)."""
    rng = np.random.default_rng(seed)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    pick = rng.choice(len(t), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return (1 - s)[:, None] * a[pick] + (s * (1 - r2))[:, None] * b[pick] + (s * r2)[:, None] * c[pick]


def mesh_scores(run: Path, surface: np.ndarray, min_opacity: float = 0.5) -> dict:
    """Accuracy and completeness of a run's opaque Gaussians against the true surface samples."""
    from scipy.spatial import cKDTree

    from s3dgs.gaussians.model import load_ply

    params, _ = load_ply(run / "point_cloud.ply")
    op = 1 / (1 + np.exp(-params["opacities"].numpy().reshape(-1)))
    means = params["means"].numpy()[op > min_opacity]
    d_acc = cKDTree(surface).query(means)[0] if len(means) else np.zeros(0)
    d_comp = cKDTree(means).query(surface)[0] if len(means) else np.full(len(surface), np.inf)
    out = {"gaussians": int(len(means)), "accuracy_median": float(np.median(d_acc)) if len(d_acc) else None}
    for tol in TOLERANCES:
        out[f"accuracy_within_{str(tol).replace('.', 'p')}"] = float((d_acc <= tol).mean()) if len(d_acc) else None
        out[f"completeness_within_{str(tol).replace('.', 'p')}"] = float((d_comp <= tol).mean())
    return out


def mesh_sequence(obj: Path) -> dict:
    """The organ sequence of the true mesh itself, in the convention of `s3dgs.organs`: each
    pedicel (a connected piece of the mesh's pedicel object) is one organ, inserted where it comes
    nearest to the stem object, pointing from the stem's axis at that height to the pedicel's far
    end; ordered by insertion height; divergence angles counter-clockwise seen from above. What a
    perfect reconstruction measured perfectly would give."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    objs: dict[str, list[list[int]]] = {}
    verts, cur = [], None
    for line in obj.read_text().splitlines():
        if line.startswith("o "):
            cur = line.split()[1]
            objs[cur] = []
        elif line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f ") and cur is not None:
            objs[cur].append([int(tok.split("/")[0]) - 1 for tok in line.split()[1:]])
    v = np.asarray(verts, np.float64)
    v = np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1)
    stem_name = next(n for n in objs if n.startswith("stem"))
    ped_name = next(n for n in objs if n.startswith("pedicel"))
    stem = v[np.unique(np.concatenate([np.asarray(f) for f in objs[stem_name]]))]
    edges = np.asarray([(f[k], f[(k + 1) % len(f)]) for f in objs[ped_name] for k in range(len(f))])
    g = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(v), len(v)))
    lab = connected_components(g, directed=False)[1]
    used = np.unique(edges)
    tree = cKDTree(stem)
    rows = []
    for comp in np.unique(lab[used]):
        p = v[used[lab[used] == comp]]
        d, idx = tree.query(p)
        ins = stem[idx[np.argmin(d)]]
        far = p[np.argmax(np.linalg.norm(p - ins, axis=1))]
        axis = stem[np.abs(stem[:, 2] - ins[2]) < 0.3].mean(0)
        rows.append((ins[2], np.degrees(np.arctan2(*(far - axis)[1::-1]))))
    rows.sort()
    z = np.array([r[0] for r in rows])
    az = np.array([r[1] for r in rows])
    return {"organs": len(rows), "angles_deg": (np.diff(az) % 360).tolist(), "internodes": np.diff(z).tolist()}


def _scores(cmp: dict) -> dict:
    return {"found": cmp["organs"]["found"], "missed": cmp["organs"]["missed"], "extra": cmp["organs"]["extra"],
            "reference_organs": cmp["organs"]["reference"], "measured_organs": cmp["organs"]["measured"],
            "angle_error_deg": cmp["angle_error_deg_median"],
            "internode_error_pct": cmp["internode_error_pct_of_mean"]}


def baselines(truth: dict, mesh: dict, scale: float) -> dict:
    """What a model that measures nothing scores (a constant 137.5-degree divergence with the
    reference's mean internode, as many organs as the reference), against the generator's file and
    the mesh's own sequence; and the mesh's own sequence against the generator's file."""
    from s3dgs.sequence import align_sequences

    gen_a, gen_i = np.degrees(truth["angles"]).tolist(), truth["internodes"]
    out = {}
    for name, (ra, ri) in {"generator": (gen_a, gen_i), "mesh": (mesh["angles_deg"], mesh["internodes"])}.items():
        n = len(ra)
        out[f"golden_vs_{name}"] = _scores(align_sequences([137.5] * n, [float(np.mean(ri))] * n, ra, ri))
    out["mesh_vs_generator"] = _scores(align_sequences(mesh["angles_deg"], mesh["internodes"], gen_a, gen_i,
                                                       internode_scale=scale))
    return out


def organ_scores(run: Path, gt_path: Path, method: str, mesh: dict, scale: float) -> dict:
    from s3dgs.phenotype import run_phenotype
    from s3dgs.sequence import align_sequences

    res = run_phenotype(run, method=method, reference=gt_path, reference_scale=scale)
    out = {"method_used": res.get("method"), "notes": res.get("notes", [])}
    if res.get("method") != "geometry":
        return out
    seq = res["sequence"]
    out.update({"organs": len(res["organs"]), "height": res["plant"]["plant_height"],
                "stem_length": res["plant"]["stem_length"],
                "generator": _scores(res["reference_comparison"]),
                "mesh": _scores(align_sequences(seq["angles_deg"], seq["internodes"], mesh["angles_deg"],
                                                mesh["internodes"]))})
    return out


def run_row(name: str, scene: Path, out: Path, iterations: int, seeds: list[int], threads: int,
            surface: np.ndarray, gt_path: Path, mesh: dict, scale: float, train_only: bool = False) -> list[dict]:
    runs = []
    for seed in seeds:
        rd = out / "runs" / name / f"seed{seed}"
        opts = {"num_iterations": iterations, "seed": seed, **ROWS[name]}
        t = time.perf_counter()
        m, rec = train_and_evaluate(rd, scene, opts, threads=threads, label=f"{name} seed {seed}")
        if train_only:
            continue
        org = organ_scores(rd, gt_path, "geometry", mesh, scale)
        runs.append({"row": name, "seed": seed, "options": opts, "record": rec, "metrics": m,
                     "mesh": mesh_scores(rd, surface), "organs": org,
                     "wall_s": time.perf_counter() - t})
        (rd / "romi_scores.json").write_text(json.dumps(runs[-1], indent=2, default=str))
        g = org.get("generator", {})
        print(f"[{name} seed {seed}] organs {g.get('found')}/{g.get('reference_organs')} (+{g.get('extra')}), "
              f"angle error {g.get('angle_error_deg')} deg, internodes {g.get('internode_error_pct')} %", flush=True)
    return runs


def _get(d: dict, path: str):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


FIGURES = [  # (label, path in a run record, format)
    ("PSNR", "metrics.images.psnr", "{:.2f}"),
    ("stem IoU", "metrics.semantics.masks.iou.stem", "{:.3f}"),
    ("pedicel IoU", "metrics.semantics.masks.iou.pedicel", "{:.3f}"),
    ("fruit IoU", "metrics.semantics.masks.iou.fruit", "{:.3f}"),
    ("leaf IoU", "metrics.semantics.masks.iou.leaf", "{:.3f}"),
    ("mIoU", "metrics.semantics.masks.miou", "{:.3f}"),
    ("opaque Gaussians", "mesh.gaussians", "{:.0f}"),
    ("accuracy: median distance to the mesh", "mesh.accuracy_median", "{:.3f}"),
    ("accuracy: share within 0.5", "mesh.accuracy_within_0p5", "{:.3f}"),
    ("completeness: mesh within 0.5", "mesh.completeness_within_0p5", "{:.3f}"),
    ("organs measured", "organs.organs", "{:.1f}"),
    ("organs found (generator, of 42)", "organs.generator.found", "{:.1f}"),
    ("organs missed", "organs.generator.missed", "{:.1f}"),
    ("organs extra", "organs.generator.extra", "{:.1f}"),
    ("angle error, deg (generator)", "organs.generator.angle_error_deg", "{:.1f}"),
    ("internode error, % (generator)", "organs.generator.internode_error_pct", "{:.1f}"),
    ("organs found (mesh)", "organs.mesh.found", "{:.1f}"),
    ("organs extra (mesh)", "organs.mesh.extra", "{:.1f}"),
    ("angle error, deg (mesh)", "organs.mesh.angle_error_deg", "{:.1f}"),
    ("internode error, % (mesh)", "organs.mesh.internode_error_pct", "{:.1f}"),
    ("plant height", "organs.height", "{:.1f}"),
]


def markdown(result: dict) -> str:
    rows = result["rows"]
    b = result["baselines"]
    lines = [f"ROMI virtual plant study ({result['date']}): {result['iterations']} iterations, seeds "
             f"{result['seeds']}, full resolution ({result['scene_size']} after cropping the black margins); "
             "mean [min, max] over seeds.", "",
             "| figure | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for label, path, fmt in FIGURES:
        cells = [fmt_spread(spread([_get(r, path) for r in rows[name]]), fmt) for name in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Reference internodes: the generator's file times {result['reference_scale']:.3f} (mesh units "
              "per file unit: the span of the mesh's own pedicel insertions over the file's sum).", "",
              "| reference sequences | found | missed | extra | angle error, deg | internode error, % |",
              "|---|---|---|---|---|---|"]
    for name, label in (("golden_vs_generator", "constant 137.5 deg + mean internode vs generator"),
                        ("golden_vs_mesh", "constant 137.5 deg + mean internode vs mesh"),
                        ("mesh_vs_generator", "the mesh's own organs vs generator")):
        x = b[name]
        lines.append(f"| {label} | {x['found']} | {x['missed']} | {x['extra']} | {x['angle_error_deg']:.1f} | "
                     f"{x['internode_error_pct']:.1f} |")
    lines += ["", "Targets (against the generator's file): >= 90 % of the organs found with < 10 % extra, "
              "median angle error < 8 deg, median internode error < 8 % of the mean internode, stem IoU >= 0.6.", ""]
    for name in rows:
        t = result.get("targets", {}).get(name, {})
        lines.append(f"- {name}: " + ", ".join(f"{k} **{v}**" for k, v in t.items()))
    return "\n".join(lines) + "\n"


def targets(runs: list[dict], n_ref: int) -> dict:
    def mean(path):
        s = spread([_get(r, path) for r in runs])
        return None if s is None else s["mean"]

    found, extra = mean("organs.generator.found"), mean("organs.generator.extra")
    ang, inter = mean("organs.generator.angle_error_deg"), mean("organs.generator.internode_error_pct")
    stem = mean("metrics.semantics.masks.iou.stem")

    def met(ok):
        return "met" if ok else "not met"

    out = {}
    if found is not None:
        out["organs found >= 90 %"] = f"{met(found >= 0.9 * n_ref)} ({found:.1f}/{n_ref})"
        out["extra < 10 %"] = f"{met(extra < 0.1 * n_ref)} ({extra:.1f})"
    if ang is not None:
        out["angle error < 8 deg"] = f"{met(ang < 8)} ({ang:.1f})"
    if inter is not None:
        out["internode error < 8 %"] = f"{met(inter < 8)} ({inter:.1f} %)"
    out["stem IoU >= 0.6"] = f"{met(stem >= 0.6)} ({stem:.3f})" if stem is not None else "not measured (no classes)"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", type=Path, default=SCAN, help="the ROMI virtual scan (default: shared/data)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/romi_study"))
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=",".join(ROWS), help="rows to run (comma-separated)")
    ap.add_argument("--surface-samples", type=int, default=200_000)
    ap.add_argument("--train-only", action="store_true", help="train and evaluate the runs, score nothing")
    a = ap.parse_args(argv)
    if not (a.scan / "metadata").is_dir():
        print(f"{a.scan}: not a ROMI scan (metadata/ missing)", file=sys.stderr)
        return 2
    seeds = [int(s) for s in a.seeds.split(",")]
    only = [r for r in a.only.split(",") if r]
    bad = set(only) - set(ROWS)
    if bad:
        print(f"--only: unknown rows {sorted(bad)}; rows are {', '.join(ROWS)}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    scene = a.out / "scene"
    if not (scene / "prepare.json").is_file():
        from s3dgs.scene.romi import prepare_romi

        print(prepare_romi(a.scan, scene, progress=False, overwrite=True).text(), flush=True)
    prep = json.loads((scene / "prepare.json").read_text())
    gt_path = a.scan / "ground_truth" / "angles_internodes.json"
    truth = json.loads(gt_path.read_text())
    v, t = read_obj_y_up(a.scan / "mesh" / "VirtualPlant.obj")
    surface = sample_surface(v, t, a.surface_samples)
    mesh = mesh_sequence(a.scan / "mesh" / "VirtualPlant.obj")
    scale = float(np.sum(mesh["internodes"]) / np.sum(truth["internodes"]))
    t0 = time.perf_counter()
    rows = {name: run_row(name, scene, a.out, a.iterations, seeds, a.threads, surface, gt_path, mesh, scale,
                          a.train_only) for name in only}
    if a.train_only:
        return 0
    result = {"date": now_iso(), "machine": machine(), "command": " ".join(sys.argv), "iterations": a.iterations,
              "seeds": seeds, "scene_size": f"{prep['width']}x{prep['height']}", "rows": rows,
              "baselines": baselines(truth, mesh, scale), "reference_scale": scale, "mesh_sequence": mesh,
              "wall_s": time.perf_counter() - t0,
              "targets": {n: targets(r, len(truth["angles"]) + 1) for n, r in rows.items()}}
    path = a.out / "romi_study.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if set(only) != set(ROWS) and old.get("rows"):  # a partial invocation keeps the other rows
        result["rows"] = {**old["rows"], **rows}
        result["targets"] = {n: targets(r, len(truth["angles"]) + 1) for n, r in result["rows"].items()}
    path.write_text(json.dumps(result, indent=2, default=str))
    (a.out / "romi_study.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
