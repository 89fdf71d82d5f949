#!/usr/bin/env python
"""Check that the Depth Anything V2 Space answers (the seed's API test).

    python preprocess/test_depth_api.py [IMAGE] [--space ID_OR_URL]

Sends IMAGE (or a generated test image) to the Space's /on_submit endpoint through gradio_client
and prints the connection status, the result type and the output paths. Exit status 0 when it works.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s3dgs.depth.backends import DEFAULT_SPACE
from s3dgs.depth.generate import check_space


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", type=Path, default=None,
                    help="image to send (default: a generated test image)")
    ap.add_argument("--space", default=DEFAULT_SPACE, help="Space id or URL")
    ap.add_argument("--retries", type=int, default=2, help="retries on rate limits / errors")
    a = ap.parse_args(argv)
    return check_space(a.space, a.image, retries=a.retries)


if __name__ == "__main__":
    raise SystemExit(main())
