"""benchmarks/prior_error.py (issue 12): the aligned prior's error per plant part is about zero for a
perfect prior and large on the thin parts when the simulated prior blurs thin structures away."""

import json

from conftest import load_benchmark

pe = load_benchmark("prior_error")


def test_a_perfect_prior_has_no_error_and_the_thin_blur_pushes_thin_parts_back(tiny_scene, tmp_path, capsys):
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

    perfect = tmp_path / "perfect"
    make_synthetic_scene(SynthConfig(out=perfect, preset="tiny", seed=0, perfect_prior=True, preview=False))
    exact = pe.summarise(pe.collect(perfect), None)
    assert {"main stem", "leaf", "fruit"} <= set(exact)
    for part, r in exact.items():
        assert r["samples"] > 0
        assert abs(r["median_rel_err"]) < 0.01, (part, r)  # 16-bit quantisation only

    # only the thin-structure blur on (no warp, scale, noise): the stem parts are put behind
    thin_only = tmp_path / "thin"
    make_synthetic_scene(SynthConfig(out=thin_only, preset="tiny", seed=0, prior_scale_shift=False, prior_warp=False,
                                     prior_noise=False, preview=False))
    blurred = pe.summarise(pe.collect(thin_only), None)
    for part in ("main stem", "petiole"):
        assert blurred[part]["median_rel_err"] > 0.03, (part, blurred[part])

    # the command: JSON on stdout, the markdown table with --md, a named error for a folder without gt
    md = tmp_path / "t.md"
    capsys.readouterr()
    assert pe.main([str(tiny_scene), "--md", str(md)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parts"]["main stem"]["samples"] == blurred["main stem"]["samples"]  # the same plant
    assert md.read_text().count("| petiole |") == 1
    assert pe.main([str(tmp_path)]) == 2
    assert "gt/stems.json not found" in capsys.readouterr().err
