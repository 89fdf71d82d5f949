"""Depth Anything V2 backends: a local transformers model, or the public gradio Space.

Both return, for one input image of size [H, W], the model's raw prediction at the input
resolution as float [H, W]: relative *disparity* (inverse depth, near = large), known only up to
scale and shift. Normalisation to [0, 1] and file writing happen in `generate.py`.

- `TransformersBackend`: `DepthAnythingForDepthEstimation` from a hub id or a local folder. The
  preprocessing is done here, on the device, without torchvision: resize so the short side is 518
  and both sides are multiples of 14 (bicubic, antialiased when shrinking), ImageNet mean/std; the
  prediction is resized back to the input size (bilinear).
- `GradioBackend`: the Depth Anything V2 Space (or any gradio app exposing the same `/on_submit`
  endpoint), called with `gradio_client` as the Space documents it. It reads the "16-bit raw"
  output when that carries enough distinct levels, otherwise the 8-bit gray one, and says which.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from s3dgs.errors import S3dgsError

DEFAULT_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
DEFAULT_SPACE = "depth-anything/Depth-Anything-V2"
API_NAME = "/on_submit"
SHORT_SIDE = 518
MULTIPLE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DepthBackendError(S3dgsError, RuntimeError):
    """A backend cannot be set up or used; the message says why and what to do."""


@dataclass
class Prediction:
    """One image's raw prediction.

    raw: float64 [H, W] disparity at the input resolution (model units, near = large).
    source: where it came from: "model" (transformers), "raw16" or "gray8" (the Space's outputs).
    note: anything the user should know (e.g. why the gray output was used), else None.
    """

    raw: np.ndarray
    source: str
    note: str | None = None


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3]. Raises ValueError naming the file if unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except Exception as exc:  # PIL raises several types for bad files
        raise ValueError(f"cannot read image {path.name} ({type(exc).__name__}: {exc}); "
                         "re-export it or move it out of the images folder") from exc
    return np.asarray(rgb)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    with Image.open(path) as im:
        return im.size


def processed_size(height: int, width: int, short: int = SHORT_SIDE,
                   multiple: int = MULTIPLE) -> tuple[int, int]:
    """Model input size (h, w): short side `short`, aspect kept, both sides multiples of `multiple`.

    As Depth Anything V2's own preprocessing ("lower_bound", ensure_multiple_of=14): the long side
    is rounded to the nearest multiple and never falls below `short`. 1080x1920 -> (518, 924).
    """
    scale = short / min(height, width)

    def fit(x: int) -> int:
        y = int(round(x * scale / multiple)) * multiple
        return max(y, int(np.ceil(short / multiple)) * multiple)

    return fit(height), fit(width)


# --------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------

def offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for offline mode (no hub downloads, no hub Space)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def model_availability(model: str) -> tuple[bool, str]:
    """Whether `model` (hub id or folder) can be loaded now, and a one-line reason.

    A local folder with config.json, a hub id already in the Hugging Face cache, or (when not
    offline) any hub id, which transformers will download.
    """
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return False, f"transformers/torch not importable ({exc}); pip install 's3dgs[depth]'"
    p = Path(model).expanduser()
    if p.exists():
        if (p / "config.json").exists():
            return True, f"local folder {p}"
        return False, f"{p} has no config.json (not a saved transformers model)"
    if "/" not in model or model.count("/") > 1:
        return False, f"{model!r} is neither an existing folder nor a hub id like {DEFAULT_MODEL}"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
        if isinstance(cached, str):
            return True, "in the Hugging Face cache"
    except Exception:
        pass
    if offline():
        return False, "not in the Hugging Face cache and HF_HUB_OFFLINE=1"
    return True, "will be downloaded from the Hugging Face hub"


def _is_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not Path(model).expanduser().exists()


def missing_model_message(model: str, reason: str) -> str:
    hub_id = model if _is_hub_id(model) else DEFAULT_MODEL
    space = ("  or, where the Hugging Face hub is reachable (HF_HUB_OFFLINE unset), use the public "
             "Space instead: --depth-backend gradio" if offline() else
             "  or use the public Space instead: --depth-backend gradio")
    return (f"Depth Anything V2 model {model!r} is not available: {reason}.\n"
            f"  Get it once where the hub is reachable:  hf download {hub_id}\n"
            f"  (then it is used offline from the cache), or pass a local folder saved with "
            f"save_pretrained: --model /local/folder,\n{space}")


# Errors a retry cannot cure: offline mode, a Space or repository that does not exist, no access.
_PERMANENT_ERRORS = ("OfflineModeIsEnabled", "RepositoryNotFoundError", "GatedRepoError",
                     "RevisionNotFoundError", "EntryNotFoundError", "LocalEntryNotFoundError")


def is_permanent_error(exc: BaseException) -> bool:
    """Whether `exc` (or its cause) is an error no retry can cure (offline mode, missing Space)."""
    while exc is not None:
        if any(t.__name__ in _PERMANENT_ERRORS for t in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def permanent_error_message(space: str, exc: BaseException) -> str:
    if offline():
        return (f"cannot reach the depth {space_label(space)}: HF_HUB_OFFLINE=1 (offline mode) is set "
                f"({_first_line(exc)}).\n"
                "  Run locally instead: get the model once where the hub is reachable with "
                f"`hf download {DEFAULT_MODEL}` (then it is used offline from the cache), or pass a "
                "local folder with --model /local/folder and --depth-backend transformers;\n"
                "  or unset HF_HUB_OFFLINE where the hub is reachable to use the Space.")
    return (f"the depth {space_label(space)} cannot be used: {_first_line(exc)}.\n"
            "  Check the Space id (--space owner/name or a URL), or run locally: --depth-backend transformers")


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DepthBackendError(f"--device {device}: CUDA is not available here; use --device cpu")
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class TransformersBackend:
    """Local Depth Anything V2 (`DepthAnythingForDepthEstimation`), batched, CPU or CUDA."""

    name = "transformers"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 0,
                 input_size: int = SHORT_SIDE):
        ok, reason = model_availability(model)
        if not ok:
            raise DepthBackendError(missing_model_message(model, reason))
        import torch
        from transformers import AutoModelForDepthEstimation

        if input_size < MULTIPLE or input_size % MULTIPLE:
            raise DepthBackendError(f"input size {input_size} must be a positive multiple of {MULTIPLE} "
                                    f"(Depth Anything V2 uses {SHORT_SIDE})")
        self.model_id = model
        self.input_size = input_size
        self.device = resolve_device(device)
        self.batch_size = batch_size if batch_size > 0 else (8 if self.device.startswith("cuda") else 1)
        src = str(Path(model).expanduser()) if Path(model).expanduser().exists() else model
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(src)
        except (OSError, ValueError) as exc:
            raise DepthBackendError(missing_model_message(model, str(exc).splitlines()[0])) from exc
        self.model.to(self.device).eval()
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def describe(self) -> str:
        return (f"{self.model_id} on {self.device}, batch size {self.batch_size}, "
                f"short side {self.input_size}")

    def preprocess(self, images: list[np.ndarray]):
        """uint8 [H, W, 3] images of one size -> normalised float [B, 3, h, w] on the device."""
        import torch
        import torch.nn.functional as F

        h, w = images[0].shape[:2]
        th, tw = processed_size(h, w, self.input_size)
        x = torch.from_numpy(np.stack(images)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if (th, tw) != (h, w):
            x = F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False,
                              antialias=th < h).clamp_(0.0, 1.0)
        return (x - self._mean) / self._std

    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        """Predict disparity for images of one size; returns one float [H, W] each."""
        import torch
        import torch.nn.functional as F

        h, w = images[0].shape[:2]
        if any(im.shape[:2] != (h, w) for im in images):
            raise ValueError("predict_batch wants images of one size; group them first")
        with torch.inference_mode():
            x = self.preprocess(images)
            pred = self.model(pixel_values=x).predicted_depth  # [B, h', w']
            pred = F.interpolate(pred[:, None].float(), size=(h, w), mode="bilinear",
                                 align_corners=False)[:, 0]
            out = pred.cpu().numpy()
        return [Prediction(raw=o, source="model") for o in out]

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# gradio Space
# --------------------------------------------------------------------------------------------

_RETRY_IN = re.compile(r"(?:retry|try again)\D{0,20}(\d+):(\d\d):(\d\d)", re.IGNORECASE)


def _retry_after(msg: str) -> float | None:
    """Seconds to wait when the error says so ("... Try again in 0:01:05"), else None."""
    m = _RETRY_IN.search(msg)
    if not m:
        return None
    h, mi, s = (int(g) for g in m.groups())
    return float(h * 3600 + mi * 60 + s)


def _as_path(item) -> str | None:
    if isinstance(item, dict):
        item = item.get("path") or item.get("name")
    return item if isinstance(item, str) else None


def _read_png_array(path: str) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return np.asarray(im)
        if im.mode == "L":
            return np.asarray(im)
        return np.asarray(im.convert("L"))


def space_label(space: str) -> str:
    return space if space.startswith(("http://", "https://")) else f"Space {space}"


class GradioBackend:
    """The Depth Anything V2 Space (or a URL serving the same `/on_submit` endpoint).

    `predict(path)` sends one image, reads the three outputs (image-slider pair, 8-bit gray PNG,
    16-bit raw PNG) and returns the raw output when it has at least `min_raw_levels` distinct
    values, else the gray one. Errors (rate limits, queue full, network) are retried up to
    `retries` times with exponential back-off (honouring "try again in H:MM:SS" when given).
    """

    name = "gradio"

    def __init__(self, space: str = DEFAULT_SPACE, retries: int = 5, backoff: float = 2.0,
                 max_backoff: float = 120.0, timeout: float = 300.0, min_raw_levels: int = 256,
                 log: Callable[[str], None] = print):
        try:
            from gradio_client import Client  # noqa: F401
        except ImportError as exc:
            raise DepthBackendError(f"the gradio backend needs gradio_client ({exc}); "
                                    "pip install gradio_client") from exc
        self.space = space
        self.model_id = space
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.min_raw_levels = min_raw_levels
        self.log = log
        self._tmp = Path(tempfile.mkdtemp(prefix="s3dgs-depth-gradio-"))
        self.client = self._connect()

    def describe(self) -> str:
        return f"{space_label(self.space)} (endpoint {API_NAME})"

    def _sleep_for(self, attempt: int, msg: str) -> float:
        hinted = _retry_after(msg)
        if hinted is not None:
            return min(hinted + 1.0, self.max_backoff * 4)
        return min(self.max_backoff, self.backoff * (2 ** attempt)) * (0.75 + 0.5 * random.random())

    def _connect(self):
        from gradio_client import Client

        kwargs = {"verbose": False, "download_files": str(self._tmp)}
        last = None
        for attempt in range(self.retries + 1):
            try:
                try:
                    return Client(self.space, analytics_enabled=False, **kwargs)
                except TypeError:  # older gradio_client without analytics_enabled
                    return Client(self.space, **kwargs)
            except Exception as exc:
                last = exc
                if is_permanent_error(exc):  # no retry cures offline mode or a missing Space
                    self.close()
                    raise DepthBackendError(permanent_error_message(self.space, exc)) from exc
                if attempt < self.retries:
                    wait = self._sleep_for(attempt, str(exc))
                    self.log(f"  cannot reach {space_label(self.space)} yet ({_first_line(exc)}); "
                             f"retry {attempt + 1}/{self.retries} in {wait:.1f} s")
                    time.sleep(wait)
        self.close()
        raise DepthBackendError(
            f"cannot reach the depth {space_label(self.space)} after {self.retries + 1} attempts: "
            f"{_first_line(last)}.\n"
            "  Check the network and the Space's status page (it may be sleeping, over quota or "
            "down),\n  pass another Space id or URL with --space, or run locally: --depth-backend transformers")

    def call(self, path: str | Path):
        """One raw API call; returns gradio_client's result (a tuple of three)."""
        from gradio_client import handle_file

        job = self.client.submit(image=handle_file(str(path)), api_name=API_NAME)
        return job.result(timeout=self.timeout)

    def call_with_retries(self, path: str | Path, on_retry: Callable[[str], None] | None = None):
        name = Path(path).name
        for attempt in range(self.retries + 1):
            try:
                return self.call(path)
            except Exception as exc:
                if is_permanent_error(exc):
                    raise DepthBackendError(permanent_error_message(self.space, exc)) from exc
                if attempt >= self.retries:
                    raise DepthBackendError(f"{space_label(self.space)} failed {self.retries + 1} times "
                                            f"for {name}: {_first_line(exc)}") from exc
                wait = self._sleep_for(attempt, str(exc))
                (on_retry or self.log)(f"  {name}: {_first_line(exc)}; retry {attempt + 1}/"
                                       f"{self.retries} in {wait:.1f} s")
                time.sleep(wait)

    def parse(self, result, size: tuple[int, int]) -> Prediction:
        """Turn the Space's three outputs into a Prediction at `size` = (width, height)."""
        if not isinstance(result, (tuple, list)) or len(result) < 3:
            raise DepthBackendError(f"unexpected answer from {API_NAME}: {type(result).__name__} "
                                    f"{str(result)[:200]}; expected (slider pair, gray PNG, raw PNG)")
        gray_p, raw_p = _as_path(result[1]), _as_path(result[2])
        try:
            note = None
            arr, source = None, None
            if raw_p:
                raw = _read_png_array(raw_p)
                levels = int(np.unique(raw).size)
                if raw.dtype != np.uint8 and levels >= self.min_raw_levels:
                    arr, source = raw, "raw16"
                else:
                    note = (f"16-bit raw output has {levels} distinct levels (< {self.min_raw_levels}); "
                            "using the 8-bit gray output")
            if arr is None:
                if not gray_p:
                    raise DepthBackendError(f"{API_NAME} returned no usable depth file: {result!r}")
                arr, source = _read_png_array(gray_p), "gray8"
            if arr.ndim == 3:
                arr = arr[..., 0]
            arr = arr.astype(np.float64)
            if (arr.shape[1], arr.shape[0]) != tuple(size):
                got = f"{arr.shape[1]}x{arr.shape[0]}"
                arr = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F")
                                 .resize(tuple(size), Image.BILINEAR), dtype=np.float64)
                note = ((note + "; ") if note else "") + f"resized from {got}"
            return Prediction(raw=arr, source=source, note=note)
        finally:
            self._cleanup(result)

    def predict(self, path: str | Path, size: tuple[int, int],
                on_retry: Callable[[str], None] | None = None) -> Prediction:
        return self.parse(self.call_with_retries(path, on_retry), size)

    def _cleanup(self, result) -> None:
        items = list(result) if isinstance(result, (tuple, list)) else [result]
        flat = []
        for it in items:
            flat.extend(it if isinstance(it, (tuple, list)) else [it])
        for it in flat:
            p = _as_path(it)
            if not p:
                continue
            p = Path(p)
            try:
                if self._tmp in p.parents:
                    # gradio_client puts each file in its own hashed folder under download_files
                    target = p.parent if p.parent != self._tmp else p
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink()
            except OSError:
                pass

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _first_line(exc) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return f"{type(exc).__name__}: {line}" if type(exc).__name__ not in line else line
