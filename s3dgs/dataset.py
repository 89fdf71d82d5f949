"""The integration guide's dataset API, kept working: `TomatoDataset` and `create_dataloader(...)`.

Both are thin layers over `s3dgs.scene.dataset.SceneDataset`, which holds the logic.
"""

from __future__ import annotations

from pathlib import Path

import torch

from s3dgs.scene.dataset import SceneDataset, collate, split_indices

__all__ = ["TomatoDataset", "SceneDataset", "create_dataloader", "collate", "split_indices"]


class TomatoDataset(SceneDataset):
    """The integration guide's name for the dataset: `TomatoDataset(colmap_dir, images_dir, heatmap_dir,
    confidence_path, depth_dir=None, ...)`. Same items and options as `SceneDataset`."""


def create_dataloader(
    colmap_dir: str | Path,
    images_dir: str | Path,
    heatmap_dir: str | Path | None,
    confidence_path: str | Path | None,
    depth_dir: str | Path | None = None,
    batch_size: int = 1,
    shuffle: bool = True,
    num_workers: int = 0,
    resolution_scale: float = 1.0,
    split: str = "train",
    test_every: int = 8,
    **dataset_kwargs,
) -> torch.utils.data.DataLoader:
    """The integration guide's loader. Returns a DataLoader over `TomatoDataset` whose batches are dicts of
    stacked tensors (see `SceneDataset` for the keys); `depth` is present when the frames have
    priors. By default every 8th frame (sorted by name) is held out (`split="train"`); pass
    `split="all"` to train on every frame as the integration guide did."""
    ds = TomatoDataset(colmap_dir, images_dir, heatmap_dir, confidence_path, depth_dir,
                       resolution_scale=resolution_scale, split=split, test_every=test_every,
                       **dataset_kwargs)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle,
                                       num_workers=num_workers, collate_fn=collate)
