"""Training configuration: one nested dataclass, the CLI generated from it, one rule for short runs.

``TrainConfig`` holds every option that shapes a training run, grouped as nerfstudio and gsplat
group them: the scene inputs it reads (``DataConfig``), the depth-prior term (``DepthLossConfig``,
passed whole to :func:`s3dgs.losses.depth_prior_loss`), the semantic term (``SemanticConfig``),
the learning rates (``LearningRates``) and the densification strategy (gsplat's own
``DefaultStrategy`` / ``MCMCStrategy`` dataclasses, used as they are). ``s3dgs train``,
``s3dgs run`` and ``s3dgs demo`` all nest the same ``TrainConfig``, so every option has one name
on every command (``--num-iterations``, ``--lambda-depth``, ``--depth-stem-aware``, ...): the
nested groups omit their prefixes and each field carries its command-line name.

**Short runs.** The integration guide's schedule is written for 7,000 iterations (semantic warm-up 4,000, SH
degree raised every 1,000, densification from 500, opacity reset every 3,000). A shorter run with
those literal values never switches the semantic term on and never resets opacity.
:func:`resolve_schedule` scales them to the run (the one rule, used by every command): for
``n < 7000`` iterations,

- semantic warm-up ``round(4000 n / 7000)`` (4/7 of the run),
- opacity reset every ``round(3000 n / 7000)`` (two resets, as in 7,000 iterations),
- densification from ``min(500, max(50, n // 5))``, still every ``refine_every`` (not scaled:
  refining every 10-20 iterations made the Gaussian count explode),
- SH degree raised every ``max(1, min(1000, n // (sh_degree + 1)))``,
- a log line every ``max(10, min(100, n // 50))`` iterations.

These options are "auto" (None) until set: :func:`resolve_schedule` returns a resolved copy in which
every auto value is filled (scaled as above, or the guide's literal value for 7,000 iterations and
more, or with ``--no-scale-schedule``), and never changes the configuration it is given. A value the
user set is kept whatever it equals (the integration guide's literal ``warmup_iterations=4000`` stays
4,000 in a 1,000-iteration run). The initial opacity is auto too: 0.1, or 0.5 with ``--strategy mcmc``
(gsplat's MCMC trainer). RUN/config.json holds the resolved configuration under ``"train"`` and the
options as the user gave them (None for auto) under ``"options"``. :func:`schedule_warnings` names a
setting that means a term never switches on.

See ``docs/ARCHITECTURE.md`` for how the configuration flows through a run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import tyro

from s3dgs.gaussians.mcmc import MCMCStrategy
from s3dgs.gaussians.strategy import DefaultStrategy
from s3dgs.losses import DepthLossConfig, SemanticConfig
from s3dgs.options import auto_opt, opt
from s3dgs.validate import at_least, flag, in_range, non_negative, positive

__all__ = [
    "SEED_ITERATIONS",
    "DataConfig",
    "DensifyConfig",
    "DepthLossConfig",
    "LearningRates",
    "SemanticConfig",
    "TrainConfig",
    "check_renamed_options",
    "config_from_flat",
    "config_to_dict",
    "flat_names",
    "given_paths",
    "load_run_config",
    "resolve_schedule",
    "schedule_warnings",
]

SEED_ITERATIONS = 7000
"""The run length the integration guide's schedule was written for."""


def _arg(name: str, metavar: str | None = None) -> Any:
    """The field's command-line name, the same on every command (no group prefix)."""
    return opt(metavar, name=name, flat=True)


@dataclass
class DataConfig:
    """What the run reads from the scene, and at which resolution."""

    resolution_scale: Annotated[float, _arg("resolution-scale")] = 1.0
    """Rescale frames, heatmaps, depth maps and intrinsics by this factor (0 < s <= 1, e.g. 0.5)."""
    test_every: Annotated[int, _arg("test-every")] = 8
    """Hold out every n-th frame (sorted by name) for evaluation; 0 trains on every frame."""
    no_depth: Annotated[bool, _arg("no-depth"), tyro.conf.FlagCreatePairsOff] = False
    """Ignore depth priors even when the scene has them (RGB + semantics only)."""
    no_semantics: Annotated[bool, _arg("no-semantics"), tyro.conf.FlagCreatePairsOff] = False
    """Ignore heatmaps even when the scene has them."""
    allow_weak_depth: Annotated[bool, _arg("allow-weak-depth"), tyro.conf.FlagCreatePairsOff] = False
    """Use depth maps that `s3dgs depth verify` flags as weak (8-bit, constant) instead of stopping."""
    class_table: Annotated[Optional[str], opt("NAME|FILE", "SCENE/classes.json, else tomato",
                                               name="class-table", flat=True)] = None
    """Semantic classes: a built-in table (tomato, arabidopsis) or a JSON table file (s3dgs/classes.py)."""

    def validate(self) -> None:
        in_range(flag(self, "resolution_scale"), self.resolution_scale, 0.0, 1.0, lo_open=True)
        non_negative(flag(self, "test_every"), self.test_every)
        if self.class_table is not None:
            from s3dgs.classes import load_class_table
            from s3dgs.errors import S3dgsError, UsageError

            try:
                load_class_table(self.class_table)
            except S3dgsError as exc:
                raise UsageError(f"{flag(self, 'class_table')}: {exc}") from None


@dataclass
class LearningRates:
    """Adam learning rates, one per parameter group (gsplat's and 3DGS's defaults)."""

    means: Annotated[float, _arg("lr-means")] = 1.6e-4
    """Means, times the scene scale, decayed exponentially to 1 % over the run."""
    scales: Annotated[float, _arg("lr-scales")] = 5e-3
    """Log-scales."""
    quats: Annotated[float, _arg("lr-quats")] = 1e-3
    """Rotations (quaternions)."""
    opacities: Annotated[float, _arg("lr-opacities")] = 5e-2
    """Opacity logits."""
    sh0: Annotated[float, _arg("lr-sh0")] = 2.5e-3
    """Degree-0 colour (SH DC term)."""
    shN: Annotated[float, _arg("lr-shN")] = 2.5e-3 / 20
    """Higher SH degrees (1/20 of the DC rate, as 3DGS)."""
    semantics: Annotated[float, _arg("lr-semantics")] = 1e-2
    """Per-class semantic logits."""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            positive(flag(self, f.name), getattr(self, f.name))


def _default_densify() -> DefaultStrategy:
    # AbsGS gradients (gsplat advises grow_grad2d ~ 8e-4 with them); the renderer provides absgrad
    return DensifyConfig(absgrad=True, grow_grad2d=8e-4)


def _auto(metavar: str, name: str, words: str) -> Any:
    """A field whose None means "auto": ``(default: auto: WORDS)`` in ``--help``."""
    return auto_opt(metavar, words, name=name)


@dataclass
class DensifyConfig(DefaultStrategy):
    """Densification (gsplat's DefaultStrategy: 3DGS split, clone and prune, AbsGS gradients), with
    the opacity reset that gsplat 1.5.3 never fires, a lower split/clone threshold for Gaussians on
    stem pixels (--grow-grad2d-stem) and depth-guided floater pruning (--prune-floaters). The start
    of refinement and the reset period are auto until set: scaled with --num-iterations (see
    --scale-schedule)."""

    refine_start_iter: Annotated[Optional[int], _auto(
        "INT", "refine-start-iter", "500, n/5 but 50-500 for a run of n < 7000")] = None
    """Iteration from which Gaussians are split, cloned and pruned."""
    reset_every: Annotated[Optional[int], _auto(
        "INT", "reset-every", "3000, 3/7 of a run shorter than 7,000 iterations")] = None
    """Iterations between opacity resets."""


@dataclass
class TrainConfig:
    """Every option that shapes a training run. Nested groups share one flat option namespace."""

    num_iterations: Annotated[int, _arg("num-iterations")] = SEED_ITERATIONS
    """Training iterations (one view per iteration)."""
    scale_schedule: Annotated[bool, _arg("scale-schedule")] = True
    """Scale the integration guide's 7,000-iteration schedule (semantic warm-up, opacity reset,
    densification start, SH degree steps, log period) to shorter runs: only options left at auto are
    scaled, a value you set is kept (--no-scale-schedule: auto gives the guide's values)."""
    seed: Annotated[int, _arg("seed")] = 0
    """Random seed of the training (initial rotations, view order); not the synthetic plant's seed."""
    sh_degree: Annotated[int, _arg("sh-degree")] = 3
    """Maximum spherical-harmonics degree of the colours (0-4), raised one step at a time."""
    sh_degree_interval: Annotated[Optional[int], _auto(
        "INT", "sh-degree-interval", "1000, a run shorter than 7,000 iterations split evenly over the SH degrees")] = None
    """Iterations between raising the SH degree by one."""
    init_opacity: Annotated[Optional[float], _auto("FLOAT", "init-opacity", "0.1, 0.5 with --strategy mcmc")] = None
    """Opacity of the initial Gaussians (MCMC relocates by opacity and starts from 0.5, as gsplat's
    trainer does)."""
    init_scale: Annotated[float, _arg("init-scale")] = 1.0
    """Initial Gaussian size, as a multiple of the mean distance to the 3 nearest points."""
    max_init_points: Annotated[int, _arg("max-init-points")] = 200_000
    """Subsample the initial point cloud above this many points."""
    lambda_ssim: Annotated[float, _arg("lambda-ssim")] = 0.2
    """Colour loss = (1 - l) L1 + l (1 - SSIM); 0 gives the integration guide's plain L1."""
    background: Annotated[tuple[float, float, float], _arg("background")] = (0.0, 0.0, 0.0)
    """Background colour (RGB in [0, 1]) behind the Gaussians."""

    data: Annotated[DataConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=DataConfig)
    depth: Annotated[DepthLossConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=DepthLossConfig)
    semantics: Annotated[SemanticConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=SemanticConfig)
    lr: Annotated[LearningRates, tyro.conf.OmitArgPrefixes] = field(default_factory=LearningRates)

    strategy: Annotated[Literal["default", "mcmc", "none"], _arg("strategy")] = "default"
    """Densification: 'default' (3DGS split/clone/prune with the opacity reset, gsplat's
    DefaultStrategy, options below), 'mcmc' (gsplat's MCMCStrategy with a Gaussian budget,
    --mcmc.* options), 'none' (the initial Gaussians only)."""
    densify: Annotated[DensifyConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=_default_densify)
    mcmc: Annotated[MCMCStrategy, tyro.conf.arg(name="mcmc", prefix_name=False)] = field(
        default_factory=lambda: MCMCStrategy(cap_max=200_000))

    backend: Annotated[Literal["auto", "native", "torch", "gsplat"], _arg("backend")] = "auto"
    """Renderer: auto (gsplat on CUDA, the native C++ kernel on a CPU, else torch), native, torch
    (the readable reference), gsplat (CUDA only)."""
    device: Annotated[str, _arg("device")] = "auto"
    """Where to train: auto (CUDA when available, else the CPU), cpu, cuda, cuda:N."""
    num_threads: Annotated[int, _arg("num-threads")] = 0
    """CPU threads for torch and the native kernel (0: torch's default, usually one per core)."""
    log_every: Annotated[Optional[int], _auto("INT", "log-every", "100, n/50 but at least 10 for a run of n < 5000")] = None
    """Iterations between log lines (console, RUN/log.txt, RUN/metrics.jsonl)."""
    ckpt_every: Annotated[int, _arg("ckpt-every")] = 1000
    """Iterations between checkpoints (a final one is always written)."""
    keep_checkpoints: Annotated[int, _arg("keep-checkpoints")] = 3
    """Checkpoints kept in RUN/ckpts: the newest K, older ones removed after each write (0: keep all)."""
    max_nonfinite: Annotated[int, _arg("max-nonfinite")] = 20
    """Stop after this many consecutive non-finite losses (the last good checkpoint stays)."""
    save_renders: Annotated[bool, _arg("save-renders")] = True
    """Write renders of the held-out views (colour, depth, semantics) at the end."""
    progress: Annotated[bool, _arg("progress")] = True
    """Show a progress bar."""

    def validate(self) -> None:
        """Check every option's range (UsageError naming the option); called by every entry point
        (tyro would swallow an error raised while it builds the dataclass, see s3dgs.validate)."""
        at_least(flag(self, "num_iterations"), self.num_iterations, 1)
        in_range(flag(self, "sh_degree"), self.sh_degree, 0, 4)
        if self.sh_degree_interval is not None:  # None: auto (resolve_schedule)
            at_least(flag(self, "sh_degree_interval"), self.sh_degree_interval, 1)
        if self.init_opacity is not None:
            in_range(flag(self, "init_opacity"), self.init_opacity, 0.0, 1.0, lo_open=True, hi_open=True)
        positive(flag(self, "init_scale"), self.init_scale)
        at_least(flag(self, "max_init_points"), self.max_init_points, 1)
        in_range(flag(self, "lambda_ssim"), self.lambda_ssim, 0.0, 1.0)
        for c in self.background:
            in_range(flag(self, "background"), c, 0.0, 1.0)
        non_negative(flag(self, "num_threads"), self.num_threads)
        if self.log_every is not None:
            at_least(flag(self, "log_every"), self.log_every, 1)
        at_least(flag(self, "ckpt_every"), self.ckpt_every, 1)
        non_negative(flag(self, "keep_checkpoints"), self.keep_checkpoints)
        at_least(flag(self, "max_nonfinite"), self.max_nonfinite, 1)
        for group in (self.data, self.depth, self.semantics, self.lr):
            group.validate()
        d = self.densify
        for name in ("prune_opa", "grow_grad2d", "grow_scale3d", "grow_scale2d", "prune_scale3d",
                     "prune_scale2d"):
            non_negative(flag(d, name), getattr(d, name))
        if d.refine_start_iter is not None:
            non_negative(flag(d, "refine_start_iter"), d.refine_start_iter)
        for name in ("refine_stop_iter", "refine_every", "reset_every"):
            if getattr(d, name) is not None:
                at_least(flag(d, name), getattr(d, name), 1)
        at_least(flag(self.mcmc, "cap_max", prefix="mcmc."), self.mcmc.cap_max, 1)
        at_least(flag(self.mcmc, "refine_every", prefix="mcmc."), self.mcmc.refine_every, 1)
        positive(flag(d, "grow_grad2d_stem"), d.grow_grad2d_stem)
        strat = {"default": d, "mcmc": self.mcmc}.get(self.strategy)
        if strat is not None and strat.prune_floaters:
            from s3dgs.errors import UsageError

            if self.depth.original_formula:
                loss = flag(self.depth, "loss")
                raise UsageError(f"floater pruning needs the aligned prior of {loss} prior; "
                                 f"{loss} {self.depth.loss} fits no alignment to keep")
        dev = self.resolved_device()  # raises UsageError for an unknown or unavailable device
        if (self.backend, dev.type) in (("gsplat", "cpu"), ("native", "cuda")):
            from s3dgs.errors import UsageError

            ok = "auto, native or torch" if dev.type == "cpu" else "auto, gsplat or torch"
            raise UsageError(f"{flag(self, 'backend')} {self.backend} does not run on {dev.type}; use {ok}")

    def resolved_device(self):
        """The torch device ``--device`` names; UsageError when it is unknown or not present."""
        import torch

        from s3dgs.errors import UsageError

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        opt_ = flag(self, "device")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, ValueError):
            raise UsageError(f"{opt_} {self.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"{opt_} {self.device}: CUDA is not available on this machine; use "
                                 f"{opt_} cpu (or auto)")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise UsageError(f"{opt_} {self.device}: this machine has {torch.cuda.device_count()} "
                                 "CUDA device(s)")
        elif dev.type != "cpu":
            raise UsageError(f"{opt_} {self.device}: only cpu and cuda are supported")
        return dev



# -----------------------------------------------------------------------------------------------
# the schedule rule for short runs
# -----------------------------------------------------------------------------------------------

# field path -> (the guide's value for 7,000 iterations, rule(n, cfg) for a run of n < 7,000);
# paths name fields of TrainConfig and its groups; each field is None ("auto") until set
_SCHEDULE_RULES = {
    "semantics.warmup_iterations": (4000, lambda n, c: round(4000 * n / SEED_ITERATIONS)),
    "densify.reset_every": (3000, lambda n, c: max(1, round(3000 * n / SEED_ITERATIONS))),
    "densify.refine_start_iter": (500, lambda n, c: min(500, max(50, n // 5))),
    "sh_degree_interval": (1000, lambda n, c: max(1, min(1000, n // (c.sh_degree + 1)))),
    "log_every": (100, lambda n, c: max(10, min(100, n // 50))),
}

INIT_OPACITY = {"mcmc": 0.5}
"""The auto initial opacity per strategy (MCMC relocates by opacity: gsplat's MCMC trainer starts
from 0.5); any other strategy starts from ``INIT_OPACITY_DEFAULT``."""
INIT_OPACITY_DEFAULT = 0.1


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for part in head:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def resolve_schedule(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, tuple]]:
    """The configuration a run uses: a deep copy of ``cfg`` with every auto (None) value filled
    (module docstring); ``cfg`` itself is never changed.

    An auto schedule value becomes the guide's value scaled to a run shorter than 7,000 iterations,
    or the guide's literal value (7,000 iterations and more, or ``--no-scale-schedule``); a value
    the user set (not None) is kept, whatever it equals. The auto initial opacity becomes 0.5 with
    ``--strategy mcmc``, else 0.1. Returns ``(resolved, changed)``, ``changed`` being ``{path:
    (guide's value, resolved value)}`` for every auto schedule value scaled to another value (empty
    when nothing was scaled). Resolving a resolved configuration returns an equal copy."""
    out = copy.deepcopy(cfg)
    n = out.num_iterations
    scale = out.scale_schedule and n < SEED_ITERATIONS
    changed = {}
    for path, (guide, rule) in _SCHEDULE_RULES.items():
        if _get(out, path) is not None:
            continue
        new = rule(n, out) if scale else guide
        _set(out, path, new)
        if new != guide:
            changed[path] = (guide, new)
    if out.init_opacity is None:
        out.init_opacity = INIT_OPACITY.get(out.strategy, INIT_OPACITY_DEFAULT)
    return out, changed


def schedule_warnings(cfg: TrainConfig, semantics_present: bool = True) -> list[str]:
    """Sentences naming settings that mean a term never switches on in this run (of ``cfg`` with
    its auto values resolved)."""
    cfg = resolve_schedule(cfg)[0]
    n = cfg.num_iterations
    out = []
    iters = flag(cfg, "num_iterations")
    if semantics_present and cfg.semantics.weight > 0 and cfg.semantics.warmup_iterations >= n:
        out.append(f"{flag(cfg.semantics, 'warmup_iterations')} {cfg.semantics.warmup_iterations} is not "
                   f"below {iters} {n}: the semantic term never switches on")
    if cfg.strategy == "default":
        d = cfg.densify
        stop = f"{flag(d, 'refine_stop_iter')} {d.refine_stop_iter}"
        if d.refine_start_iter >= min(n, d.refine_stop_iter):
            out.append(f"{flag(d, 'refine_start_iter')} {d.refine_start_iter} is not below the run's end ({n}) or "
                       f"{stop}: densification never runs")
        elif d.reset_every >= min(n, d.refine_stop_iter):
            out.append(f"{flag(d, 'reset_every')} {d.reset_every} is not below the run's end ({n}) or "
                       f"{stop}: the opacity reset never fires")
    if cfg.sh_degree > 0 and cfg.sh_degree_interval >= n:
        out.append(f"{flag(cfg, 'sh_degree_interval')} {cfg.sh_degree_interval} is not below {iters} {n}: "
                   "the colours stay at SH degree 0")
    return out


# -----------------------------------------------------------------------------------------------
# flat keyword names (the integration guide's train(...) keywords, the CLI names with '_')
# -----------------------------------------------------------------------------------------------

_GROUPS = ("data", "depth", "semantics", "lr", "densify")


# Options renamed since the integration guide (the semantic options took the --sem- prefix, the
# depth options' one unprefixed option --depth-): old flat keyword -> new flat keyword. The old
# keywords stay accepted by train(...) / config_from_flat (the guide's warmup_iterations= among
# them); on the command line the old flag stops with one line naming the new one.
_RENAMED = {
    "warmup_iterations": "sem_warmup_iterations",
    "conf_threshold": "sem_conf_threshold",
    "fg_weight": "sem_fg_weight",
    "mask_fg_weight": "sem_mask_fg_weight",
    "semantic_activation": "sem_activation",
    "stem_weight": "depth_stem_weight",
}


def _cli_name(cls: type, f: dataclasses.Field) -> str:
    """The flat keyword of field ``f`` of ``cls``: its command-line name with '_' (``--lambda-depth``
    -> lambda_depth; the name is read from the field's annotation by :func:`s3dgs.validate.flag`)."""
    return flag(cls, f.name)[2:].replace("-", "_")


def _path_flag(path: str) -> str:
    """The command-line flag of a field path (``semantics.warmup_iterations`` ->
    ``--sem-warmup-iterations``, ``mcmc.cap_max`` -> ``--mcmc.cap-max``)."""
    if "." not in path:
        return flag(TrainConfig, path)
    group, leaf = path.split(".", 1)
    return flag(getattr(TrainConfig(), group), leaf, prefix="mcmc." if group == "mcmc" else "")


def given_paths(given) -> set[str]:
    """Field paths of ``given``: flat keywords (``sem_warmup_iterations``, the guide's old
    ``warmup_iterations``, ``mcmc_cap_max``), names as :func:`s3dgs.cli.given_options` reads them
    from a command line, or field paths (``semantics.warmup_iterations``) already."""
    names = flat_names()
    out = set()
    for g in given:
        k = _RENAMED.get(g, g)
        if k in names:
            out.add(names[k])
        elif g.replace(".", "_") in names:  # --mcmc.cap-max typed on the command line
            out.add(names[g.replace(".", "_")])
        else:
            out.add(g)
    return out


def check_renamed_options(cfg_cls: type, argv: list[str]) -> None:
    """Stop with one line naming the new flag when ``argv`` uses a flag renamed since (``--warmup-iterations``
    -> ``--sem-warmup-iterations``) and the command ``cfg_cls`` nests a TrainConfig (so the old name
    is not another option of it). Raises UsageError; called by s3dgs.cli.main before parsing."""
    import typing

    def nests(cls, seen=()) -> bool:
        if cls is TrainConfig:
            return True
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or cls in seen:
            return False
        try:
            hints = typing.get_type_hints(cls)
        except (NameError, TypeError):
            return False
        return any(nests(t, seen + (cls,)) for h in hints.values()
                   for t in (typing.get_args(h) or (h,)))

    old = {"--" + k.replace("_", "-"): "--" + v.replace("_", "-") for k, v in _RENAMED.items()}
    hits = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in old]
    if hits and nests(cfg_cls):
        from s3dgs.errors import UsageError

        raise UsageError("; ".join(f"{h} was renamed {old[h]}" for h in dict.fromkeys(hits))
                         + " (the semantic options share the --sem- prefix, the depth options --depth-)")


def check_strategy_options(cfg: TrainConfig, given) -> None:
    """Refuse options of the densification strategy not chosen (``--strategy mcmc`` with
    ``--grow-grad2d``, ``--strategy default`` with ``--mcmc.cap-max``): they would be ignored.
    ``given``: flat names the user typed (``s3dgs.cli.given_options``). Raises UsageError."""
    from s3dgs.errors import UsageError

    paths = given_paths(given)
    own = {"default": "densify.", "mcmc": "mcmc."}
    opt_ = flag(cfg, "strategy")
    for strategy, prefix in own.items():
        if cfg.strategy == strategy:
            continue
        wrong = sorted(p for p in paths if p.startswith(prefix))
        if wrong:
            flags = ", ".join(_path_flag(p) for p in wrong)
            raise UsageError(f"{flags}: option(s) of {opt_} {strategy}, but {opt_} {cfg.strategy} is "
                             f"chosen, so they would be ignored; drop them or pass {opt_} {strategy}")


def flat_names() -> dict[str, str]:
    """``{flat keyword: field path}`` for every option, e.g. ``{"lambda_depth": "depth.weight",
    "refine_every": "densify.refine_every", "num_iterations": "num_iterations"}``."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in _GROUPS:
            cls = type(getattr(TrainConfig(), f.name))
            for g in dataclasses.fields(cls):
                out[_cli_name(cls, g)] = f"{f.name}.{g.name}"
        elif f.name != "mcmc":
            out[_cli_name(TrainConfig, f)] = f.name
    for g in dataclasses.fields(MCMCStrategy):
        out[f"mcmc_{g.name}"] = f"mcmc.{g.name}"
    return out


def config_from_flat(**kwargs) -> tuple[TrainConfig, set[str]]:
    """A TrainConfig from flat keywords (the integration guide's ``lambda_depth=``, ``warmup_iterations=``, any
    CLI name with ``_``; ``densify=False`` means ``strategy="none"``; a keyword renamed since
    (``_RENAMED``: ``warmup_iterations`` is now ``sem_warmup_iterations``) is taken as its new name).
    Returns the config and the set of field paths given (what the caller passed; an option not
    passed keeps its default, None, "auto", for the schedule, see :func:`resolve_schedule`). Unknown
    keywords, or an old and a new name together, raise TypeError."""
    from s3dgs.errors import UsageError

    names = flat_names()
    cfg = TrainConfig()
    given: set[str] = set()
    if "densify" in kwargs and isinstance(kwargs["densify"], bool):
        kwargs["strategy"] = kwargs.get("strategy", "default") if kwargs.pop("densify") else "none"
    for old, new in _RENAMED.items():
        if old in kwargs:
            if new in kwargs:
                raise TypeError(f"training options {old} and {new} are one option ({old} is its old name); "
                                "pass one")
            kwargs[new] = kwargs.pop(old)
    unknown = sorted(k for k in kwargs if k not in names)
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(unknown)}")
    groups: dict[str, dict] = {}
    top: dict[str, Any] = {}
    for k, v in kwargs.items():
        path = names[k]
        given.add(path)
        if "." in path:
            g, leaf = path.split(".", 1)
            groups.setdefault(g, {})[leaf] = v
        else:
            top[k if k in {f.name for f in dataclasses.fields(TrainConfig)} else path] = v
    try:
        for g, vals in groups.items():
            top[g] = dataclasses.replace(getattr(cfg, g), **vals)
        cfg = TrainConfig(**top)
    except UsageError:
        raise
    return cfg, given


def config_to_dict(cfg: TrainConfig) -> dict:
    """JSON-able nested dict of the configuration (as written to RUN/config.json)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_from_dict(d: dict) -> TrainConfig:
    """Inverse of :func:`config_to_dict` (unknown keys from other versions are ignored)."""
    def build(cls, data):
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            v = data[f.name]
            sub = getattr(cls(), f.name) if f.name in _GROUPS + ("mcmc",) else None
            if sub is not None and isinstance(v, dict):
                v = build(type(sub), v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)

    return build(TrainConfig, d)


def load_run_config(run: str | Path) -> dict:
    """What a run folder's config.json says: ``{"scene": Path | None, "paths": {...},
    "train": TrainConfig, "options": TrainConfig | None, "found": bool}``. ``train`` is the
    configuration the run used (every auto value resolved); ``options`` the options as the user gave
    them (None for auto; None for a run folder written before they were recorded). Without a
    config.json ``train`` is the default configuration, resolved; older flat config.json files are
    read too."""
    p = Path(run) / "config.json"
    if not p.is_file():
        return {"scene": None, "paths": {}, "train": resolve_schedule(TrainConfig())[0], "options": None,
                "found": False}
    d = json.loads(p.read_text())
    if "train" in d and isinstance(d["train"], dict):
        train = config_from_dict(d["train"])
    else:  # a flat config.json written before the configuration was nested
        names = flat_names()
        kw = {k: v for k, v in d.items() if k in names or k in _RENAMED}
        kw.pop("densify", None)
        try:
            train, _ = config_from_flat(**kw)
        except (TypeError, ValueError):
            train = TrainConfig()
    train = resolve_schedule(train)[0]  # a value an older version did not write: its guide value
    options = config_from_dict(d["options"]) if isinstance(d.get("options"), dict) else None
    scene = d.get("scene")
    return {"scene": Path(scene) if scene else None, "paths": dict(d.get("resolved_paths") or {}),
            "train": train, "options": options, "found": True}
