"""Depth-prior generation speed: images/s, peak memory, and the pipeline's own overhead.

A Depth-Anything-V2-Small-sized model with random weights (same architecture and size: DINOv2-S
backbone, DPT head, ~25M parameters; speed does not depend on the weight values) runs on synthetic
frames at the model's 518 short side. Measured:

- model_s_per_image: the forward pass alone on already resized, normalised tensors;
- pipeline_s_per_image: `generate_depth()` end to end (decode, resize, model, resize back,
  normalise, 16-bit PNG write, meta.json) with the model already loaded;
- overhead_share: (pipeline - model) / model, the target is <= 5 %;
- overhead_parts_share: the pipeline's own steps timed one by one (serial upper bound; the PNG
  write runs in a second thread beside the model);
- peak_rss_mb: the process's peak resident memory.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/depth.py [--images 6] [--width 960 --height 540]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def small_sized_model():
    """Depth-Anything-V2-Small's architecture (hub config) with random weights."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                            patch_size=14, image_size=518, reshape_hidden_states=False,
                            out_features=["stage3", "stage6", "stage9", "stage12"])
    cfg = DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=64, head_hidden_size=32,
                              neck_hidden_sizes=[48, 96, 192, 384], reassemble_hidden_size=384,
                              depth_estimation_type="relative")
    return DepthAnythingForDepthEstimation(cfg).eval()


def frames(folder: Path, n: int, w: int, h: int) -> list[Path]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        base = np.stack([(x + 7 * i) % 256, (y * 2) % 256, (x + y) % 256], -1)
        img = np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        p = folder / f"frame_{i:04d}.jpg"
        Image.fromarray(img).save(p, quality=92)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=540)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    import torch

    from s3dgs.depth import generate as gen
    from s3dgs.depth.backends import TransformersBackend, load_rgb, processed_size
    from s3dgs.depth.io import encode_disparity, save_depth_png

    torch.set_num_threads(a.threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory(prefix="s3dgs-bench-depth-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = frames(tmp / "images", a.images, a.width, a.height)
        model = small_sized_model()
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp / "model")
        engine = TransformersBackend(str(tmp / "model"), device=a.device, batch_size=1)
        th, tw = processed_size(a.height, a.width)

        def model_only() -> float:
            xs = [engine.preprocess([load_rgb(p)]) for p in paths]
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.inference_mode():
                for x in xs:
                    engine.model(pixel_values=x).predicted_depth.cpu()
            return time.perf_counter() - t

        with torch.inference_mode():  # warm-up
            engine.model(pixel_values=engine.preprocess([load_rgb(paths[0])]))
        m1 = model_only()
        t = time.perf_counter()
        s = gen.generate_depth(tmp / "images", tmp / "depths", backend=engine, progress=False,
                               log=lambda m: None)
        pipe = time.perf_counter() - t
        m2 = model_only()
        assert s.generated == a.images and not s.failed, s.failed
        model_s = (m1 + m2) / 2

        # the pipeline's own steps, one by one, on one frame
        parts = {}
        t = time.perf_counter(); rgb = load_rgb(paths[0]); parts["decode"] = time.perf_counter() - t
        t = time.perf_counter(); x = engine.preprocess([rgb]); parts["resize_normalise"] = time.perf_counter() - t
        with torch.inference_mode():
            pred = engine.model(pixel_values=x).predicted_depth
        t = time.perf_counter()
        up = torch.nn.functional.interpolate(pred[:, None], size=(a.height, a.width), mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        parts["resize_back"] = time.perf_counter() - t
        t = time.perf_counter(); u16, lo, hi = encode_disparity(up); parts["normalise"] = time.perf_counter() - t
        t = time.perf_counter()
        save_depth_png(tmp / "x.png", u16, info={"raw_min": lo, "raw_max": hi}, compress_level=gen.PNG_COMPRESS_LEVEL)
        parts["png_write"] = time.perf_counter() - t
        per_img_parts = sum(parts.values())

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_model = model_s / a.images
    per_pipe = pipe / a.images
    print(json.dumps({
        "benchmark": "depth",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, torch threads {a.threads}, device {a.device}",
        "model": f"Depth-Anything-V2-Small-sized, random weights, {params / 1e6:.1f}M parameters",
        "image_size": [a.width, a.height],
        "model_input": [tw, th],
        "images": a.images,
        "model_s_per_image": round(per_model, 3),
        "pipeline_s_per_image": round(per_pipe, 3),
        "pipeline_images_per_s": round(1 / per_pipe, 3),
        "overhead_share": round((per_pipe - per_model) / per_model, 4),
        "overhead_parts_s": {k: round(v, 4) for k, v in parts.items()},
        "overhead_parts_share": round(per_img_parts / per_model, 4),
        "peak_rss_mb": round(peak),
        "rss_before_model_mb": round(rss0),
        "space_s_per_image_reference": 1.25,
    }, indent=2))


if __name__ == "__main__":
    main()
