"""Option names written once: every flag a training message spells is a real `s3dgs train` flag,
the semantic options share the --sem- prefix, and the names renamed since keep working where the
integration guide uses them (``train(warmup_iterations=...)``) and stop with one line on the
command line."""

import dataclasses
import json
import re
import warnings

import pytest

from s3dgs.cli import main
from s3dgs.config import (
    _RENAMED,
    TrainConfig,
    check_strategy_options,
    config_from_flat,
    flat_names,
    load_run_config,
    resolve_schedule,
    schedule_warnings,
)
from s3dgs.errors import UsageError
from s3dgs.losses import DepthLossConfig, SemanticConfig
from s3dgs.validate import flag

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w.-]*[A-Za-z0-9]")


@pytest.fixture(scope="module")
def train_flags() -> set[str]:
    """Every option string of `s3dgs train`, from the parser tyro builds."""
    import tyro

    from s3dgs.train import TrainCommand

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        parser = tyro.extras.get_parser(TrainCommand)
    return {o for a in parser._actions for o in a.option_strings}


def _set(cfg, path, value):
    *head, leaf = path.split(".")
    obj = cfg
    for h in head:
        obj = getattr(obj, h)
    setattr(obj, leaf, value)


BAD_VALUES = (-1, 0, 2, 5000, float("nan"), (2.0, 0.0, 0.0), "tpu")


def _validate_messages() -> dict[str, list[str]]:
    """``{field path: [messages]}`` of every validate() failure one bad value of one option gives."""
    out: dict[str, list[str]] = {}
    for path in flat_names().values():
        for bad in BAD_VALUES:
            cfg = TrainConfig(device="cpu")
            *head, leaf = path.split(".")
            default = getattr(getattr(cfg, head[0]) if head else cfg, leaf)
            if isinstance(default, bool) or path.endswith(("class_table", "strategy")):
                continue
            _set(cfg, path, bad)
            try:
                cfg.validate()
            except UsageError as exc:
                out.setdefault(path, []).append(str(exc))
            except (TypeError, ValueError, AttributeError):
                pass  # a value of the wrong type for this option: not what validate() checks
    return out


def test_every_validate_message_names_the_real_flag_of_its_option(train_flags):
    msgs = _validate_messages()
    # the numeric options of every group are checked (the semantic ones among them)
    assert {"num_iterations", "semantics.warmup_iterations", "semantics.conf_threshold", "depth.stem_weight",
            "lr.means", "densify.refine_every", "mcmc.cap_max", "background", "device"} <= set(msgs)
    for path, texts in msgs.items():
        for text in texts:
            named = FLAG.findall(text)
            assert named, (path, text)
            for f in named:
                assert f in train_flags, (path, text, f)
            # the message begins with the option whose value was bad
            assert named[0] == flag_of(path), (path, text)


def flag_of(path: str) -> str:
    """`path`'s flag as `s3dgs train` spells it: its flat keyword with '-' (mcmc_ -> mcmc.)."""
    key = next(k for k, p in flat_names().items() if p == path)
    key = key.replace("mcmc_", "mcmc.", 1) if path.startswith("mcmc.") else key
    return "--" + key.replace("_", "-")


def test_other_messages_name_real_flags(train_flags):
    texts = []
    short = TrainConfig(num_iterations=10, scale_schedule=False, sh_degree=1)
    short.densify.refine_start_iter = 5
    texts += schedule_warnings(short)
    nostart = TrainConfig(num_iterations=10, scale_schedule=False)
    texts += schedule_warnings(nostart)
    for what in ("semantic term never switches on", "opacity reset never fires", "SH degree 0",
                 "densification never runs"):
        assert any(what in t for t in texts), what
    texts += DepthLossConfig(loss="original", alignment="sfm", multiscale=True, edge_aware=True, stem_aware=True,
                             stem_one_sided=True, thin="down", gate_disagreement=2).ignored_by_seed_loss()
    for bad in (TrainConfig(device="cpu", depth=DepthLossConfig(loss="original")),
                TrainConfig(device="cpu", backend="gsplat")):
        bad.densify.prune_floaters = True
        with pytest.raises(UsageError) as exc:
            bad.validate()
        texts.append(str(exc.value))
    with pytest.raises(UsageError) as exc:
        check_strategy_options(TrainConfig(strategy="mcmc"), {"grow_grad2d", "refine_every"})
    texts.append(str(exc.value))
    with pytest.raises(UsageError) as exc:
        check_strategy_options(TrainConfig(), {"mcmc.cap_max", "mcmc_refine_every"})
    texts.append(str(exc.value))
    assert "--mcmc.cap-max, --mcmc.refine-every" in texts[-1]
    for text in texts:
        for f in FLAG.findall(text):
            assert f in train_flags, (text, f)


def test_semantic_options_share_one_prefix(train_flags):
    sem = {flag(SemanticConfig, f.name) for f in dataclasses.fields(SemanticConfig)}
    assert sem == {"--lambda-sem", "--sem-warmup-iterations", "--sem-conf-threshold", "--sem-fg-weight",
                   "--sem-mask-fg-weight", "--sem-activation"}
    depth = {flag(DepthLossConfig, f.name) for f in dataclasses.fields(DepthLossConfig)}
    assert all(f.startswith("--depth-") for f in depth - {"--lambda-depth"})
    assert sem | depth <= train_flags
    for old in _RENAMED:  # the old spellings are gone from the command line
        assert "--" + old.replace("_", "-") not in train_flags
    with pytest.raises(KeyError):
        flag(SemanticConfig, "no_such_field")


def test_renamed_keywords_still_work_in_python():
    names = flat_names()
    for old, new in _RENAMED.items():
        assert old not in names and new in names
    cfg, given = config_from_flat(warmup_iterations=4000, num_iterations=1000, stem_weight=0.3,
                                  conf_threshold=0.2, fg_weight=5.0, mask_fg_weight=2.0, semantic_activation="softmax")
    assert (cfg.semantics.warmup_iterations, cfg.depth.stem_weight, cfg.semantics.conf_threshold,
            cfg.semantics.fg_weight, cfg.semantics.mask_fg_weight, cfg.semantics.activation) == \
        (4000, 0.3, 0.2, 5.0, 2.0, "softmax")
    assert {"semantics.warmup_iterations", "depth.stem_weight"} <= given
    cfg, _ = resolve_schedule(cfg)
    assert cfg.semantics.warmup_iterations == 4000  # the guide's keyword, given, is kept in a short run
    assert cfg.densify.reset_every == 429  # what was not given is scaled
    new, _ = config_from_flat(sem_warmup_iterations=4000, num_iterations=1000)
    assert new.semantics.warmup_iterations == 4000
    with pytest.raises(TypeError, match="warmup_iterations and sem_warmup_iterations"):
        config_from_flat(warmup_iterations=1, sem_warmup_iterations=2)


def test_old_flat_config_json_reads_renamed_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"warmup_iterations": 123, "stem_weight": 0.4,
                                                      "semantic_activation": "softmax", "lambda_depth": 0.3}))
    train = load_run_config(tmp_path)["train"]
    assert (train.semantics.warmup_iterations, train.depth.stem_weight, train.semantics.activation,
            train.depth.weight) == (123, 0.4, "softmax", 0.3)


@pytest.mark.parametrize("command,args,new", [
    (["train", "SCENE", "--out", "RUN"], ["--warmup-iterations", "4000"], "--sem-warmup-iterations"),
    (["train", "SCENE", "--out", "RUN"], ["--stem-weight=0.2"], "--depth-stem-weight"),
    (["run", "IN", "OUT"], ["--semantic-activation", "softmax"], "--sem-activation"),
    (["demo"], ["--fg-weight", "3"], "--sem-fg-weight"),
])
def test_an_old_flag_on_the_command_line_names_the_new_one(command, args, new, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(command + args) == 2
    err = capsys.readouterr().err.strip()
    old = args[0].split("=")[0]
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"error: {old} was renamed {new}" in err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_train_keeps_the_guide_keyword_in_a_short_run(tiny_scene, tmp_path):
    from s3dgs.train import train

    train(scene=tiny_scene, out_dir=tmp_path / "r", num_iterations=10, warmup_iterations=4000, progress=False,
          save_renders=False, sh_degree=0)
    rec = json.loads((tmp_path / "r" / "config.json").read_text())
    assert rec["train"]["semantics"]["warmup_iterations"] == 4000
    assert "semantics.warmup_iterations" not in rec["schedule_scaled"]
