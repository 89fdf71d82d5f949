"""s3dgs: depth-supervised semantic 3D Gaussian splatting for plants."""

__version__ = "0.1.0"

CLASSES = ("U", "N", "D", "P")
"""Semantic stem classes: stem above a node, node, stem below a node, peduncle."""
