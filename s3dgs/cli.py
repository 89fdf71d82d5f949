"""The `s3dgs` command line: argument parsing only.

Each subcommand is one configuration dataclass and one function in the package module that does the work;
the options and their help are generated from the dataclass by tyro (as gsplat's examples and
nerfstudio do). The top level only dispatches, and imports a module lazily, so `s3dgs --help` is fast
and a subcommand pays only for what it uses.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback

from s3dgs.errors import S3dgsError

# name: (module, config dataclass, function taking the config, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "synth": ("s3dgs.scene.synth", "SynthConfig", "synth_main",
              "Make the synthetic tomato plant scene with ground truth (the built-in default)."),
    "prepare": ("s3dgs.scene.prepare", "PrepareConfig", "prepare_main",
                "Video or frames -> scene: frame extraction, structure from motion, undistortion."),
    "undistort": ("s3dgs.scene.prepare", "UndistortConfig", "undistort_main",
                  "Undistort a COLMAP scene (any camera model) into a PINHOLE scene."),
    "heatmaps": ("s3dgs.scene.heatmaps", "HeatmapConfig", "heatmaps_main",
                 "Keypoint JSON per frame -> skeleton heatmaps and confidence.json."),
    "depth": ("s3dgs.depth.generate", "DepthConfig", "depth_main",
              "Depth Anything V2 priors (local transformers model or the gradio Space) as 16-bit PNGs."),
    "train": ("s3dgs.train", "TrainCommand", "train_main",
              "Train semantic Gaussians with RGB, depth-prior and heatmap supervision."),
    "eval": ("s3dgs.evaluate", "EvalConfig", "eval_main",
             "Evaluate a run: images, depth, semantics, geometry, cost -> RUN/metrics.json."),
    "export": ("s3dgs.export", "ExportConfig", "export_main",
               "Export a run's Gaussians: PLY, and one point cloud per semantic class."),
    "phenotype": ("s3dgs.phenotype", "PhenotypeConfig", "phenotype_main",
                  "Measure the plant: height, nodes, internode lengths, stem diameters, peduncles."),
    "run": ("s3dgs.pipeline", "RunConfig", "run_main",
            "Video or frames -> trained, evaluated model with a report, each stage resumable."),
    "demo": ("s3dgs.pipeline", "DemoConfig", "demo_main",
             "The whole chain on the built-in synthetic plant, ending with the report's path."),
    "view": ("s3dgs.viewer", "ViewConfig", "view_main",
             "Write RUN/view.html, the interactive 3D view of the run's Gaussians, and open it."),
    "batch": ("s3dgs.batch", "BatchConfig", "batch_main",
              "`s3dgs run` over a folder or CSV manifest of plants on Ray: one table, one index page."),
}

# Sub-subcommands spelled with a space, e.g. `s3dgs depth verify OUT`.
ALIASES: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("depth", "verify"): ("s3dgs.depth.generate", "VerifyConfig", "verify_main",
                          "Check a depth folder: every map present, right size, 16-bit, non-constant."),
}


def given_options(argv: list[str]) -> frozenset[str]:
    """Flat names (``sem_warmup_iterations``) of the options in `argv` (``--sem-warmup-iterations 4000``,
    ``--sem-warmup-iterations=4000``, ``--no-depth-robust``)."""
    out = set()
    for a in argv:
        if a.startswith("--") and len(a) > 2:
            name = a[2:].split("=", 1)[0].replace("-", "_").replace(".", "_")
            out.add(name)
            if name.startswith("no_"):
                out.add(name[3:])
    return frozenset(out)


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: s3dgs COMMAND [options]    (s3dgs COMMAND --help for its options)", "",
             "Depth-supervised semantic 3D Gaussian splatting for plants.", "", "commands:"]
    for name, (_, _, _, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines.append(f"  {'depth verify'.ljust(width)}  {ALIASES[('depth', 'verify')][3]}")
    return "\n".join(lines)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Python warnings as users should read them: ``warning: message``, without the source file,
    line and category (``UserWarning: file.py:12``) that only a developer can use."""
    return f"warning: {message}\n"


# errors of the operating system that a user fixes (a file in the way, a read-only or full disk)
_USER_OS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                             errno.ENOTDIR, errno.EEXIST, errno.EISDIR})


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    import tyro

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.formatwarning = _format_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from s3dgs import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"s3dgs: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    entry = COMMANDS[name]
    prog = f"s3dgs {name}"
    if rest and (name, rest[0]) in ALIASES:
        entry = ALIASES[(name, rest[0])]
        prog = f"s3dgs {name} {rest[0]}"
        rest = rest[1:]
    module_name, cfg_name, fn_name, text = entry
    debug = "--debug" in rest or os.environ.get("S3DGS_DEBUG", "") not in ("", "0")
    rest = [a for a in rest if a != "--debug"]
    try:
        module = importlib.import_module(module_name)
        cfg_cls = getattr(module, cfg_name)
        from s3dgs.options import reflow_help

        reflow_help(cfg_cls)  # --help flows sentences instead of breaking them where the source does
        config = sys.modules.get("s3dgs.config")  # imported by every command that nests TrainConfig
        if config is not None:  # an option renamed since (--warmup-iterations): one line naming the new one
            config.check_renamed_options(cfg_cls, rest)
        cfg = tyro.cli(cfg_cls, args=rest, prog=prog, description=text)
        # the options typed on the command line (s3dgs.config.check_strategy_options refuses those of
        # the densification strategy not chosen)
        try:
            cfg.cli_given = given_options(rest)
        except AttributeError:  # pragma: no cover - a frozen or slotted config
            pass
        if hasattr(cfg, "validate"):  # every option checked before any work (exit 2 naming it)
            cfg.validate()
        result = getattr(module, fn_name)(cfg)
    except S3dgsError as exc:
        # the one place user errors are reported: the message names the file or option and the fix
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # a file in the way or a read-only / full disk met past the up-front checks: one line naming
        # the path; any other OSError is a bug and keeps its traceback
        if exc.errno not in _USER_OS_ERRNOS or not exc.filename or debug:
            raise
        print(f"{prog}: error: {exc.filename}: {exc.strerror}; choose another output folder or make "
              "this one writable", file=sys.stderr)
        return 1
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
