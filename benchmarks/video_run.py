"""`s3dgs run` on a video of the synthetic plant vs training on its true poses (issue 8).

    .venv/bin/python benchmarks/video_run.py [--out bench_out/video_run] [--iterations 1000]
    .venv/bin/python benchmarks/video_run.py --tiny        # tiny plant, 24 views, a smoke test in a minute

1. The synthetic plant (`--preset`, seed 0) is made in OUT/synthetic (reused when there).
2. Its frames, in view order, become an H.264 video (OUT/plant.mp4, 8 fps, imageio-ffmpeg's
   ffmpeg), the kind of input a grower films.
3. OUT/reference is the same scene with its views renamed as `s3dgs prepare` names video frames
   (view_007.png -> frame_00007.jpg, JPEG quality 95 like the extracted frames): true poses, true
   depth, masks, stems, keypoints, heatmaps, depth priors. Alignment and evaluation match cameras by
   name, so the video run is aligned to and evaluated against it.
4. ``video``: `s3dgs run OUT/plant.mp4 OUT/video --keypoints ... --depth-dir ... --reference ...`
   (frame extraction, pycolmap SfM, undistortion, Sim3 alignment, heatmaps, training, evaluation).
5. ``true_poses``: the same training configuration (the pipeline's own) on OUT/reference, whose
   poses are the true ones, evaluated on the same held-out views.

Prints one JSON object (also OUT/video_run.json): registration, alignment error, and for both runs
PSNR/SSIM, depth AbsRel, mIoU, floaters, stem coverage and breaks, Chamfer, time; for the video run
also PSNR/SSIM rendered from its own SfM cameras against its own frames (how a real capture, with
no true poses, is evaluated). `--reuse` re-evaluates the runs already in OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def renamed_reference(synth: Path, dest: Path) -> dict[str, str]:
    """Copy synthetic scene `synth` to `dest` with view i named ``frame_{i:05d}`` (the names `s3dgs
    prepare` gives the i-th frame of a video). Returns {old stem: new stem}."""
    import pycolmap
    from PIL import Image

    from s3dgs.scene.colmap import find_model_dir

    if dest.exists():
        shutil.rmtree(dest)
    names = sorted(p.name for p in (synth / "images").iterdir())
    stems = {Path(n).stem: f"frame_{i:05d}" for i, n in enumerate(names)}
    (dest / "images").mkdir(parents=True)
    for n in names:
        with Image.open(synth / "images" / n) as im:
            im.convert("RGB").save(dest / "images" / f"{stems[Path(n).stem]}.jpg", quality=95)
    rec = pycolmap.Reconstruction(str(find_model_dir(synth)))
    for img in rec.images.values():
        img.name = f"{stems[Path(img.name).stem]}.jpg"
    (dest / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(dest / "sparse" / "0"))
    shutil.copy2(synth / "points3D.ply", dest / "points3D.ply")

    def per_view(sub: str, ext: str) -> None:
        if not (synth / sub).is_dir():
            return
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for old, new in stems.items():
            src = synth / sub / f"{old}{ext}"
            if src.exists():
                shutil.copy2(src, dest / sub / f"{new}{ext}")

    for sub, ext in (("depths", ".png"), ("heatmaps", ".npy"), ("keypoints", ".json"),
                     ("gt/depth", ".npy"), ("gt/masks", ".png")):
        per_view(sub, ext)
    meta = json.loads((synth / "depths" / "meta.json").read_text())
    meta["per_image"] = {stems.get(k, k): v for k, v in meta.get("per_image", {}).items()}
    (dest / "depths" / "meta.json").write_text(json.dumps(meta, indent=1))
    conf = json.loads((synth / "confidence.json").read_text())
    (dest / "confidence.json").write_text(json.dumps({stems.get(k, k): v for k, v in conf.items()}, indent=1))
    for f in ("meta.json", "primitives.json", "stems.json"):
        shutil.copy2(synth / "gt" / f, dest / "gt" / f)
    cams = json.loads((synth / "gt" / "cameras.json").read_text())
    for v in cams["views"]:
        v["name"] = f"{stems[Path(v['name']).stem]}.jpg"
    (dest / "gt" / "cameras.json").write_text(json.dumps(cams))
    vis = json.loads((synth / "gt" / "visibility.json").read_text())
    vis["views"] = {stems.get(k, k): v for k, v in vis["views"].items()}
    (dest / "gt" / "visibility.json").write_text(json.dumps(vis))
    return stems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/video_run"))
    ap.add_argument("--preset", default="default", choices=["default", "thin", "tiny"])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--resolution-scale", type=float, default=0.5)
    ap.add_argument("--sh-degree", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--reuse", action="store_true",
                    help="re-evaluate the runs already in OUT instead of training again")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny preset at 24 views of 320x240, 30 iterations: a smoke test")
    a = ap.parse_args(argv)
    if a.tiny:
        a.preset, a.iterations = "tiny", min(a.iterations, 30)

    import torch

    from s3dgs.config import DataConfig, TrainConfig
    from s3dgs.evaluate import evaluate_run, headline
    from s3dgs.losses import SemanticConfig
    from s3dgs.pipeline import RunConfig, StageOptions, run_pipeline, train_config
    from s3dgs.scene.frames import write_video
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene
    from s3dgs.train import SceneInputs, run_training

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    synth = out / "synthetic"
    if not (synth / "gt" / "meta.json").exists():
        # the tiny preset's own 160x120 frames are too small for SfM: 24 views of 320x240 on one ring
        size = {"views": 24, "width": 320, "height": 240, "rings": 1} if a.tiny else {}
        make_synthetic_scene(SynthConfig(out=synth, preset=a.preset, seed=0, progress=False, **size))
    names = sorted(p.name for p in (synth / "images").iterdir())
    from PIL import Image

    video, ref, true_run = out / "plant.mp4", out / "reference", out / "true_poses"
    rcfg = RunConfig(input=video, out=out / "video", keypoints=ref / "keypoints", depth_dir=ref / "depths",
                     depth_backend="none", reference=ref, fps=8.0, min_registered=0.5,
                     stages=StageOptions(train=TrainConfig(
                         num_iterations=a.iterations, sh_degree=a.sh_degree, ckpt_every=10 * a.iterations + 1,
                         progress=False, data=DataConfig(resolution_scale=a.resolution_scale),
                         semantics=SemanticConfig(warmup_iterations=a.iterations * 2 // 5))))
    prev_file = out / "video_run.json"
    reuse = (a.reuse and prev_file.exists() and (rcfg.out / "run" / "metrics.json").exists()
             and (true_run / "point_cloud.ply").exists())
    prev = json.loads(prev_file.read_text()) if reuse else {}
    if reuse:
        print(f"--reuse: re-evaluating the runs in {out} (times from the earlier {prev_file.name})")
        video_s = prev["video"]["pipeline_time_s"]
        run_dir = rcfg.out / "run"
    else:
        frames = [np.asarray(Image.open(synth / "images" / n).convert("RGB")) for n in names]
        write_video(video, frames, fps=8)
        renamed_reference(synth, ref)
        if rcfg.out.exists():
            shutil.rmtree(rcfg.out)  # a fresh measurement every time
        t = time.perf_counter()
        run_dir = run_pipeline(rcfg, say=lambda s: print(s, flush=True))["run"]
        video_s = time.perf_counter() - t
    # the video run also on its own structure-from-motion cameras and frames (how real captures,
    # which have no true poses, are evaluated): the same held-out frames, no ground truth there
    m_own = evaluate_run(run_dir, out / "video" / "scene", write=False)
    prep = json.loads((out / "video" / "scene" / "prepare.json").read_text())
    align = json.loads((out / "video" / "scene" / "alignment.json").read_text())
    m_video = json.loads((run_dir / "metrics.json").read_text())

    t = time.perf_counter()
    if not reuse:
        if true_run.exists():
            shutil.rmtree(true_run)
        run_training(train_config(rcfg, use_depth=True), SceneInputs(scene=ref), true_run)
    m_true = evaluate_run(true_run, ref)
    true_s = time.perf_counter() - t

    result = {
        "machine": "2-core x86_64 CPU (no GPU)", "preset": a.preset, "views": len(names),
        "iterations": a.iterations, "resolution_scale": a.resolution_scale, "sh_degree": a.sh_degree,
        "video": {"file": str(video), "fps": 8, "codec": "H.264 (imageio-ffmpeg)",
                  "registered": prep.get("registered"), "frames_used": prep.get("frames_used"),
                  "frames_blurred": prep.get("frames_blurred"), "prepare_timings_s": prep.get("timings"),
                  "mean_reprojection_error_px": prep.get("mean_reprojection_error"),
                  "alignment": {k: align[k] for k in ("matched_cameras", "scale", "centre_error_median",
                                                      "centre_error_max", "centre_error_median_pct_of_spread",
                                                      "centre_error_max_pct_of_spread")},
                  "pipeline_time_s": round(video_s, 1), **headline(m_video),
                  "own_poses": {"psnr": m_own["images"]["psnr"], "ssim": m_own["images"]["ssim"],
                                "note": "rendered from its own SfM cameras, against its own (video) frames"}},
        "true_poses": {"time_s": prev["true_poses"]["time_s"] if reuse else round(true_s, 1),
                       **headline(m_true)},
        "reused_runs": reuse,
    }
    (out / "video_run.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
