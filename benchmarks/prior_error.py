"""Where the depth prior is wrong on a plant, part by part (issue 12: why the prior breaks stems).

For a synthetic scene with ground truth (``s3dgs synth``): each view's prior (``SCENE/depths``,
disparity) is fitted to the true disparity by one least-squares scale and shift over the whole image
(what the scale-invariant depth loss does, up to its robust weights), turned back into depth, and
read at every visible vertex of the true stem centrelines (``gt/stems.json``, ``gt/visibility.json``)
and at every pixel of leaf and fruit (``gt/masks``). Per part (main stem, node, petiole, peduncle,
pedicel, leaf, fruit) it prints the median relative depth error of the aligned prior (positive: the
prior puts the surface farther away than it is), the share of samples where it is more than 5 %
farther (at the closeup preset's 0.6 m that is 3 cm, six times the main stem's diameter), and the
share lying on a stem heatmap pixel (U, D or P channel > 0.5: the pixels ``--depth-stem-one-sided``
and ``--depth-stem-aware`` act on).

With ``--study OUT/stem_study.json`` the same table gets each study row's mean centreline coverage
of that part (any class), so the prior's error and the parts the prior run loses sit side by side.

    .venv/bin/python benchmarks/prior_error.py bench_out/stem_study/scenes/closeup \\
        --study bench_out/stem_study/stem_study.json --md benchmarks/results/stem_study/prior_error.md

Prints JSON (and writes the markdown table with ``--md``). Hand-written because no library reads
this project's ground-truth files; the projection is the synthetic plant's own (``s3dgs.scene.synth.project``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARTS = ("main stem", "node", "petiole", "peduncle", "pedicel")
FAR = 0.05


def aligned_prior_depth(prior: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """``[H, W]`` depth implied by ``prior`` (disparity, any scale and shift) after the least-squares
    affine fit of the prior to the true disparity ``1 / depth`` over the whole image."""
    d = 1.0 / depth.astype(np.float64).ravel()
    A = np.stack([prior.astype(np.float64).ravel(), np.ones(d.size)], 1)
    (s, t), *_ = np.linalg.lstsq(A, d, rcond=None)
    disp = s * prior.astype(np.float64) + t
    return 1.0 / np.clip(disp, 1e-6, None)


def collect(scene: Path) -> dict[str, dict[str, list]]:
    """Per part: the relative depth errors of the aligned prior and whether each sample lies on a
    stem heatmap pixel, over every view of ``scene`` (lists of arrays, one per view and stem)."""
    from s3dgs.classes import GT_LABELS, stem_classes
    from s3dgs.depth.io import load_depth_png
    from s3dgs.scene.groundtruth import load_ground_truth
    from s3dgs.scene.synth import project

    gt = load_ground_truth(scene)
    cams = gt.cameras()
    K = np.asarray(cams["K"], np.float64)
    vis = gt.visibility()
    mask_parts = {p: GT_LABELS[p] for p in ("leaf", "fruit")}
    out = {p: {"err": [], "on_stem_map": []} for p in (*PARTS, *mask_parts)}
    for view in cams["views"]:
        stem = Path(view["name"]).stem
        prior_path = scene / "depths" / f"{stem}.png"
        if not prior_path.exists() or stem not in vis:
            continue
        depth = gt.depth(stem)
        zp = aligned_prior_depth(load_depth_png(prior_path), depth)
        rel = zp / depth - 1.0
        hm_path = scene / "heatmaps" / f"{stem}.npy"
        # the trainer's stem map: the max over the stem classes' channels (U, D, P)
        stem_map = np.load(hm_path)[..., stem_classes()].max(-1) > 0.5 if hm_path.exists() else np.zeros_like(depth, bool)
        H, W = depth.shape
        for s, seen in zip(gt.stems, vis[stem]):
            if not seen.any():
                continue
            uv, _ = project(K, np.asarray(view["viewmat"], np.float64), s["points"][seen])
            x, y = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)  # as gt/visibility.json
            ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
            out[s["part"]]["err"].append(rel[y[ok], x[ok]])
            out[s["part"]]["on_stem_map"].append(stem_map[y[ok], x[ok]])
        mask = gt.mask(stem)
        for part, label in mask_parts.items():
            sel = mask == label
            out[part]["err"].append(rel[sel])
            out[part]["on_stem_map"].append(stem_map[sel])
    return out


def summarise(samples: dict, study: dict | None) -> dict:
    """Per part of ``collect``'s samples: count, median relative error, share more than ``FAR`` too
    far, share on stem heatmap pixels, and (with a study preset's result) each row's mean coverage."""
    rows = {}
    for part, s in samples.items():
        if not s["err"]:
            continue
        e, on = np.concatenate(s["err"]), np.concatenate(s["on_stem_map"])
        if not e.size:
            continue
        rows[part] = {"samples": int(e.size), "median_rel_err": float(np.median(e)),
                      "share_far": float((e > FAR).mean()), "share_on_stem_map": float(on.mean())}
        key = "cover_part_" + part.replace(" ", "_")
        for row in (study or {}).get("rows", []):
            vals = [r[key] for r in row["runs"] if r.get(key) is not None]
            if vals:
                rows[part].setdefault("cover", {})[row["name"]] = float(np.mean(vals))
    return rows


def markdown(rows: dict, scene: Path) -> str:
    study_rows = list(dict.fromkeys(n for r in rows.values() for n in r.get("cover", {})))  # the study's order
    head = ["part", "samples", "aligned prior: median depth error", f"share > {FAR:.0%} too far",
            "share on a stem heatmap pixel", *[f"cover {n}" for n in study_rows]]
    lines = [f"Scene `{scene}`.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for part, r in rows.items():
        cells = [part, str(r["samples"]), f"{r['median_rel_err']:+.1%}", f"{r['share_far']:.0%}",
                 f"{r['share_on_stem_map']:.0%}",
                 *[f"{r['cover'][n]:.3f}" if n in r.get("cover", {}) else "-" for n in study_rows]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", type=Path, help="a synthetic scene folder with gt/ and depths/ (s3dgs synth)")
    ap.add_argument("--study", type=Path, default=None,
                    help="a stem study's stem_study.json: add each row's mean coverage of every part")
    ap.add_argument("--preset", default=None, help="the study preset to read (default: the scene folder's name)")
    ap.add_argument("--md", type=Path, default=None, help="also write the table as markdown to this file")
    a = ap.parse_args(argv)
    for need in ("gt/stems.json", "gt/cameras.json", "depths"):
        if not (a.scene / need).exists():
            print(f"prior_error: {a.scene / need} not found: give a scene made by `s3dgs synth`", file=sys.stderr)
            return 2
    study = None
    if a.study is not None:
        if not a.study.exists():
            print(f"prior_error: {a.study} not found (--study): run benchmarks/stem_study.py first", file=sys.stderr)
            return 2
        study = json.loads(a.study.read_text())["presets"].get(a.preset or a.scene.name)
    rows = summarise(collect(a.scene), study)
    print(json.dumps({"scene": str(a.scene), "far_threshold": FAR, "parts": rows}, indent=2))
    if a.md:
        a.md.parent.mkdir(parents=True, exist_ok=True)
        a.md.write_text(markdown(rows, a.scene))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
