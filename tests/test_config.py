"""The training configuration: one name per option on every command, the schedule rule for short
runs, validation of every option with exit status 2, round trips through config.json."""

import dataclasses
import json

import pytest

from s3dgs.cli import main
from s3dgs.config import (
    TrainConfig,
    config_from_dict,
    config_from_flat,
    config_to_dict,
    flat_names,
    resolve_schedule,
    schedule_warnings,
)


def _example_value(path: str, cfg: TrainConfig):
    """A valid non-default value for the option at `path` and its command-line spelling."""
    obj = cfg
    *head, leaf = path.split(".")
    for h in head:
        obj = getattr(obj, h)
    v = getattr(obj, leaf)
    if v is None:  # an optional option, unset by default: its type decides the example
        import typing

        hint = str(typing.get_type_hints(type(obj))[leaf])
        if "str" in hint:
            return "arabidopsis", "arabidopsis"
        return (3, "3") if "int" in hint else (0.25, "0.25")
    if isinstance(v, bool):
        return (not v), None
    if isinstance(v, int):
        return v + 1, str(v + 1)
    if isinstance(v, float):
        new = v / 2 if v > 0 else 0.5
        return new, repr(new)
    if isinstance(v, tuple):
        return (0.5, 0.5, 0.5), ["0.5", "0.5", "0.5"]
    if isinstance(v, str):
        choices = {"strategy": "mcmc", "backend": "torch", "device": "cpu", "schedule": "exp", "loss": "seed",
                   "space": "depth", "alignment": "sfm", "activation": "softmax",
                   "key_for_gradient": "gradient_2dgs", "thin": "one-sided"}
        new = choices[leaf]
        return new, new
    raise AssertionError(f"no example for {path} = {v!r}")


def _cli_args(flat: str, value, text):
    name = "--" + flat.replace("_", "-")
    if flat.startswith("mcmc_"):
        name = "--mcmc." + flat[5:].replace("_", "-")
    if text is None:  # a boolean flag
        if flat in ("no_depth", "no_semantics", "allow_weak_depth"):
            return [name]
        if value:
            return [name]
        return ["--mcmc.no-" + name[len("--mcmc."):]] if name.startswith("--mcmc.") else ["--no-" + name[2:]]
    return [name] + (text if isinstance(text, list) else [text])


def test_flat_names_are_unique_and_cover_every_option():
    names = flat_names()
    assert len(set(names.values())) == len(names)
    assert names["lambda_depth"] == "depth.weight" and names["sem_warmup_iterations"] == "semantics.warmup_iterations"
    assert names["refine_every"] == "densify.refine_every" and names["lr_means"] == "lr.means"
    assert names["mcmc_cap_max"] == "mcmc.cap_max"
    leaves = sum(len(dataclasses.fields(type(getattr(TrainConfig(), g))))
                 for g in ("data", "depth", "semantics", "lr", "densify", "mcmc"))
    top = len([f for f in dataclasses.fields(TrainConfig)
               if f.name not in ("data", "depth", "semantics", "lr", "densify", "mcmc")])
    assert len(names) == leaves + top


@pytest.mark.parametrize("command", ["train", "run", "demo"])
def test_every_train_option_is_reachable_by_the_same_name(command, monkeypatch, tmp_path):
    """Each option, given on the command line of train/run/demo, lands in the TrainConfig."""
    import tyro

    from s3dgs import pipeline as P
    from s3dgs.train import TrainCommand

    cls = {"train": TrainCommand, "run": P.RunConfig, "demo": P.DemoConfig}[command]
    pos = {"train": [str(tmp_path)], "run": [str(tmp_path / "in"), str(tmp_path / "out")], "demo": []}[command]
    base = TrainConfig()
    args, expect = list(pos), {}
    for flat, path in flat_names().items():  # every option at once: one parse per command
        if flat == "key_for_gradient":
            continue  # gsplat's internal switch: a train(...) keyword, hidden from the command line
        value, text = _example_value(path, base)
        args += _cli_args(flat, value, text)
        expect[path] = value
    cfg = tyro.cli(cls, args=args)
    train = cfg.train if command == "train" else cfg.stages.train
    for path, value in expect.items():
        got = train
        for part in path.split("."):
            got = getattr(got, part)
        assert got == value, (command, path, got, value)


def test_config_round_trips_through_json():
    cfg, given = config_from_flat(lambda_depth=0.05, depth_stem_aware=True, warmup_iterations=10, refine_every=7,
                                  strategy="mcmc", mcmc_cap_max=1234, background=(0.1, 0.2, 0.3))
    assert given == {"depth.weight", "depth.stem_aware", "semantics.warmup_iterations", "densify.refine_every",
                     "strategy", "mcmc.cap_max", "background"}
    back = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert back == cfg
    with pytest.raises(TypeError, match="unknown training option"):
        config_from_flat(lambda_dpeth=1.0)


def test_schedule_scaled_to_a_short_run():
    cfg, changed = resolve_schedule(TrainConfig(num_iterations=1000))
    assert cfg.semantics.warmup_iterations == 571 < 1000  # the semantic term switches on
    assert cfg.densify.reset_every == 429  # two opacity resets (429, 858) before the end
    assert cfg.densify.refine_start_iter == 200 and cfg.sh_degree_interval == 250 and cfg.log_every == 20
    assert changed["semantics.warmup_iterations"] == (4000, 571)
    assert schedule_warnings(cfg) == []
    # the seed's 7,000 iterations and longer runs keep the literal values
    long, changed = resolve_schedule(TrainConfig(num_iterations=7000))
    assert changed == {} and long.semantics.warmup_iterations == 4000


def test_explicit_values_are_kept_and_warned_about():
    cfg, _ = config_from_flat(num_iterations=1000, sem_warmup_iterations=4000)
    cfg, _ = resolve_schedule(cfg)
    assert cfg.semantics.warmup_iterations == 4000 and cfg.densify.reset_every == 429
    guide, _ = config_from_flat(num_iterations=1000, warmup_iterations=4000)  # the guide's keyword
    assert resolve_schedule(guide)[0].semantics.warmup_iterations == 4000
    assert any("--sem-warmup-iterations 4000" in w and "never switches on" in w for w in schedule_warnings(cfg))
    off, changed = resolve_schedule(TrainConfig(num_iterations=1000, scale_schedule=False))
    assert changed == {} and off.densify.reset_every == 3000
    assert any("opacity reset never fires" in w for w in schedule_warnings(off))


def test_short_training_switches_semantics_on_and_resets_opacity(tiny_scene, tmp_path):
    from s3dgs.train import train

    res = train(scene=tiny_scene, out_dir=tmp_path / "r", num_iterations=120, progress=False,
                save_renders=False, sh_degree=1)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lambda_sem"] > 0 and rows[-1]["sem"] > 0
    assert res["n_opacity_resets"] >= 1
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "schedule: semantics.warmup_iterations 4000 -> 69" in log
    assert "schedule: densify.reset_every 3000 -> 51" in log


BAD_OPTIONS = [
    (["--lambda-depth", "-1"], "--lambda-depth"),
    (["--lambda-depth", "nan"], "--lambda-depth"),
    (["--lambda-sem", "-5"], "--lambda-sem"),
    (["--num-iterations", "0"], "--num-iterations"),
    (["--num-iterations", "-10"], "--num-iterations"),
    (["--lr-means", "-1"], "--lr-means"),
    (["--sem-conf-threshold", "5"], "--sem-conf-threshold"),
    (["--sem-warmup-iterations", "-100"], "--sem-warmup-iterations"),
    (["--sem-fg-weight", "0"], "--sem-fg-weight"),
    (["--depth-stem-weight", "2"], "--depth-stem-weight"),
    (["--test-every", "-1"], "--test-every"),
    (["--resolution-scale", "0"], "--resolution-scale"),
    (["--ckpt-every", "0"], "--ckpt-every"),
    (["--log-every", "0"], "--log-every"),
    (["--sh-degree", "-1"], "--sh-degree"),
    (["--device", "tpu"], "--device"),
    (["--backend", "gsplat", "--device", "cpu"], "--backend"),
]


@pytest.mark.parametrize("args,name", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_train_option_exits_2_naming_it(args, name, tiny_scene, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(out)] + args) == 2
    err = capsys.readouterr().err
    assert f"error: {name}" in err and "Traceback" not in err
    assert not out.exists()  # nothing was started


def test_cuda_device_without_cuda(tiny_scene, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", str(tiny_scene), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["run", "IN", "OUT"], ["demo"]])
def test_bad_option_in_run_and_demo(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(command + ["--num-iterations", "0"]) == 2
    assert "--num-iterations must be at least 1" in capsys.readouterr().err
    assert main(command + ["--redo", "bake"]) == 2
    assert "--redo bake: no such stage" in capsys.readouterr().err


def test_an_option_you_set_to_its_default_is_kept_on_the_command_line(tmp_path, tiny_scene):
    """`s3dgs train --sem-warmup-iterations 4000 --num-iterations 40`: 4000 is the default, but it was
    typed, so the short-run schedule keeps it (the semantic term never switches on, said so)."""
    import json

    from s3dgs.cli import given_options, main

    assert {"sem_warmup_iterations", "num_iterations", "depth_robust"} <= given_options(
        ["--sem-warmup-iterations", "4000", "--num-iterations=40", "--no-depth-robust"])
    out = tmp_path / "run"
    rc = main(["train", str(tiny_scene), "--out", str(out), "--num-iterations", "20", "--sem-warmup-iterations", "4000",
               "--no-progress", "--no-save-renders", "--sh-degree", "0"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["semantics"]["warmup_iterations"] == 4000
    out2 = tmp_path / "run2"
    assert main(["train", str(tiny_scene), "--out", str(out2), "--num-iterations", "20", "--no-progress",
                 "--no-save-renders", "--sh-degree", "0"]) == 0
    assert json.loads((out2 / "config.json").read_text())["train"]["semantics"]["warmup_iterations"] < 4000
    rec = json.loads((out / "config.json").read_text())
    assert rec["options"]["semantics"]["warmup_iterations"] == 4000  # what the user set, recorded
    assert "semantics.warmup_iterations" not in rec["schedule_scaled"]
    rec2 = json.loads((out2 / "config.json").read_text())
    assert rec2["schedule_scaled"]["semantics.warmup_iterations"]["default"] == 4000


def test_options_of_the_strategy_not_chosen_are_refused(tmp_path, tiny_scene, capsys):
    from s3dgs.cli import main

    rc = main(["train", str(tiny_scene), "--out", str(tmp_path / "r"), "--strategy", "mcmc", "--grow-grad2d", "1e-4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--grow-grad2d: option(s) of --strategy default, but --strategy mcmc is chosen" in err
    rc = main(["run", str(tiny_scene), str(tmp_path / "o"), "--mcmc.cap-max", "1000"])
    assert rc == 2
    assert "--mcmc.cap-max: option(s) of --strategy mcmc, but --strategy default is chosen" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_mcmc_initial_opacity_you_set_is_kept(tmp_path, tiny_scene):
    from s3dgs.train import train

    train(scene=tiny_scene, out_dir=tmp_path / "a", strategy="mcmc", num_iterations=2, progress=False,
          save_renders=False, sh_degree=0)
    assert "mcmc: initial opacity 0.5" in (tmp_path / "a" / "log.txt").read_text()
    train(scene=tiny_scene, out_dir=tmp_path / "b", strategy="mcmc", init_opacity=0.1, num_iterations=2,
          progress=False, save_renders=False, sh_degree=0)
    assert "initial opacity 0.5" not in (tmp_path / "b" / "log.txt").read_text()
