#!/usr/bin/env python
"""Generate Depth Anything V2 depth priors for a folder of frames (the seed's command line).

    python preprocess/generate_depth.py IMAGES OUT [--verify] [--num_samples N]
        [--backend gradio|transformers|auto] [--space ID_OR_URL] [--model ID_OR_PATH] ...

A thin wrapper around `s3dgs depth` (s3dgs.depth.generate). As in the seed it uses the public
Space by default; `--backend transformers` runs the model locally. The maps are 16-bit PNGs of
*disparity* (near = bright) normalised to [0, 1] per image; OUT/meta.json records the raw ranges.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s3dgs.depth.backends import DEFAULT_MODEL, DEFAULT_SPACE
from s3dgs.depth.generate import DepthConfig, depth_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", type=Path, help="folder of input frames")
    ap.add_argument("out", type=Path, help="output folder for the 16-bit depth PNGs")
    ap.add_argument("--verify", action="store_true", help="check every map after generating")
    ap.add_argument("--num_samples", "--num-samples", type=int, default=0,
                    help="with --verify: write a contact sheet of N samples")
    ap.add_argument("--backend", "--depth-backend", dest="backend", choices=["gradio", "transformers", "auto"],
                    default="gradio", help="gradio: the public Space (default, as in the seed); transformers: "
                    "local model (--depth-backend: the name `s3dgs depth` and `s3dgs run` use)")
    ap.add_argument("--space", default=DEFAULT_SPACE, help="Space id or URL (gradio backend)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="hub id or folder (transformers backend)")
    ap.add_argument("--device", default="auto", help="transformers device: auto, cpu, cuda")
    ap.add_argument("--batch_size", "--batch-size", type=int, default=0,
                    help="transformers batch size (0 = 1 on CPU, 8 on CUDA)")
    ap.add_argument("--input_size", "--input-size", type=int, default=518,
                    help="transformers model input short side (multiple of 14)")
    ap.add_argument("--retries", type=int, default=5, help="gradio retries per image")
    ap.add_argument("--overwrite", action="store_true", help="regenerate existing valid maps")
    a = ap.parse_args(argv)
    cfg = DepthConfig(images=a.images, out=a.out, backend=a.backend, model=a.model, device=a.device,
                      batch_size=a.batch_size, input_size=a.input_size, space=a.space, retries=a.retries, overwrite=a.overwrite,
                      verify=a.verify, num_samples=a.num_samples)
    return depth_main(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
