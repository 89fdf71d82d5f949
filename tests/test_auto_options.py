""""Options you set yourself are kept": the schedule options and the initial opacity are "auto"
(None) until set, resolved into a separate copy for the run; the user's configuration is never
changed, and RUN/config.json records both (issue 25)."""

import copy
import json

import pytest

from s3dgs.config import TrainConfig, config_from_flat, load_run_config, resolve_schedule

# field path -> the integration guide's value (7,000 iterations)
GUIDE = {"semantics.warmup_iterations": 4000, "densify.reset_every": 3000, "densify.refine_start_iter": 500,
         "sh_degree_interval": 1000, "log_every": 100}


def _get(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_the_schedule_options_are_auto_by_default():
    cfg = TrainConfig()
    assert all(_get(cfg, p) is None for p in GUIDE) and cfg.init_opacity is None
    cfg.validate()  # auto passes the range checks


def test_resolve_never_changes_its_argument():
    cfg, _ = config_from_flat(num_iterations=1000, sem_warmup_iterations=4000, strategy="mcmc")
    before = copy.deepcopy(cfg)
    resolved, _ = resolve_schedule(cfg)
    assert cfg == before  # nothing filled in place
    assert resolved is not cfg and resolved.densify is not cfg.densify and resolved.semantics is not cfg.semantics
    assert all(_get(resolved, p) is not None for p in GUIDE) and resolved.init_opacity == 0.5
    assert cfg.densify.reset_every is None and cfg.init_opacity is None
    again, changed_again = resolve_schedule(resolved)  # a resolved configuration stays as it is
    assert again == resolved and changed_again == {}


def test_auto_values_are_scaled_to_a_short_run():
    resolved, changed = resolve_schedule(TrainConfig(num_iterations=1000))
    expect = {"semantics.warmup_iterations": 571, "densify.reset_every": 429, "densify.refine_start_iter": 200,
              "sh_degree_interval": 250, "log_every": 20}
    assert {p: _get(resolved, p) for p in GUIDE} == expect
    assert changed == {p: (GUIDE[p], v) for p, v in expect.items()}
    for cfg in (TrainConfig(num_iterations=7000), TrainConfig(num_iterations=20_000),
                TrainConfig(num_iterations=1000, scale_schedule=False)):
        resolved, changed = resolve_schedule(cfg)  # long runs and --no-scale-schedule: the guide's values
        assert {p: _get(resolved, p) for p in GUIDE} == GUIDE and changed == {}


def test_values_you_set_equal_to_the_guide_are_kept_in_a_short_run():
    cfg, _ = config_from_flat(num_iterations=1000, sem_warmup_iterations=4000, reset_every=3000, refine_start_iter=500,
                              sh_degree_interval=1000, log_every=100)
    resolved, changed = resolve_schedule(cfg)
    assert {p: _get(resolved, p) for p in GUIDE} == GUIDE and changed == {}
    guide, _ = config_from_flat(num_iterations=1000, warmup_iterations=4000)  # the guide's own keyword
    resolved, changed = resolve_schedule(guide)
    assert resolved.semantics.warmup_iterations == 4000 and "semantics.warmup_iterations" not in changed
    assert resolved.densify.reset_every == 429  # the rest is still auto


@pytest.mark.parametrize("args,warmup", [([], 571), (["--sem-warmup-iterations", "4000"], 4000),
                                         (["--sem-warmup-iterations=100"], 100)])
def test_the_command_line_keeps_a_value_typed_equal_to_the_guide(args, warmup, tmp_path):
    import tyro

    from s3dgs.train import TrainCommand

    cmd = tyro.cli(TrainCommand, args=[str(tmp_path), "--num-iterations", "1000"] + args)
    assert cmd.train.semantics.warmup_iterations == (None if not args else warmup)
    assert resolve_schedule(cmd.train)[0].semantics.warmup_iterations == warmup


def test_mcmc_initial_opacity_auto_and_explicit():
    assert resolve_schedule(TrainConfig(strategy="mcmc"))[0].init_opacity == 0.5
    assert resolve_schedule(TrainConfig())[0].init_opacity == 0.1
    assert resolve_schedule(TrainConfig(strategy="none"))[0].init_opacity == 0.1
    assert resolve_schedule(TrainConfig(strategy="mcmc", init_opacity=0.1))[0].init_opacity == 0.1
    assert resolve_schedule(TrainConfig(init_opacity=0.5))[0].init_opacity == 0.5


def test_config_json_records_the_options_given_beside_the_resolved_ones(tmp_path, tiny_scene):
    from s3dgs.train import SceneInputs, run_training

    cfg, _ = config_from_flat(num_iterations=4, strategy="mcmc", reset_every=3000, progress=False,
                              save_renders=False, sh_degree=0)
    before = copy.deepcopy(cfg)
    run_training(cfg, SceneInputs(scene=tiny_scene), tmp_path / "r")
    assert cfg == before  # the trainer resolved a copy
    rec = json.loads((tmp_path / "r" / "config.json").read_text())
    opts, used = rec["options"], rec["train"]
    assert opts["semantics"]["warmup_iterations"] is None and used["semantics"]["warmup_iterations"] == 2
    assert opts["log_every"] is None and used["log_every"] == 10
    assert opts["init_opacity"] is None and used["init_opacity"] == 0.5  # MCMC's auto opacity
    assert opts["densify"]["reset_every"] == used["densify"]["reset_every"] == 3000  # set: kept
    assert rec["schedule_scaled"]["semantics.warmup_iterations"] == {"default": 4000, "resolved": 2}
    assert "densify.reset_every" not in rec["schedule_scaled"]
    assert "mcmc: initial opacity 0.5" in (tmp_path / "r" / "log.txt").read_text()
    rc = load_run_config(tmp_path / "r")
    assert rc["train"].semantics.warmup_iterations == 2 and rc["train"].init_opacity == 0.5
    assert rc["options"].semantics.warmup_iterations is None and rc["options"].densify.reset_every == 3000
    # a run folder written before "options" was recorded still loads, its values as written
    old = {k: v for k, v in rec.items() if k != "options"}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    rc = load_run_config(tmp_path / "old")
    assert rc["options"] is None and rc["train"].semantics.warmup_iterations == 2 and rc["train"].log_every == 10
    # with no config.json at all: the default configuration, resolved
    rc = load_run_config(tmp_path / "none")
    assert not rc["found"] and rc["train"].semantics.warmup_iterations == 4000
