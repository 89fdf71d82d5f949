"""s3dgs: depth-supervised semantic 3D Gaussian splatting for plants."""

import os as _os

# OpenMP threads that spin while waiting make torch's CPU kernels several times slower as soon as
# another process shares the cores (measured on 2 cores: 20k Gaussians at 256x256, forward +
# backward, 0.83 s with the default policy vs 0.24 s with PASSIVE under the same load). It only
# takes effect when s3dgs is imported before torch (the CLI, the tests and the benchmarks do so);
# an explicit OMP_WAIT_POLICY in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from s3dgs.classes import CLASSES  # the one class table: s3dgs/classes.py

__all__ = ["CLASSES", "__version__"]
