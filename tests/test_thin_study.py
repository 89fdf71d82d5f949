"""The thin-stem study (benchmarks/thin_study.py, issue 22): its targets and its combination rule on
constructed numbers (the full study is hours of CPU: BENCHMARKS.md)."""

from conftest import load_benchmark

study = load_benchmark("thin_study")


def _sp(v):
    from study_runs import spread

    return spread(v)


def _row(cover, breaks, ped, floaters, psnr, absrel):
    return {"stem_cover": _sp(cover), "stem_breaks": _sp(breaks), "cover_peduncle": _sp(ped),
            "floaters": _sp(floaters), "psnr": _sp(psnr), "depth_abs_rel": _sp(absrel), "score": _sp([0, 0, 0])}


SUMMARY = {
    "rgb": _row([0.95, 0.95, 0.96], [2, 3, 4], [0.83, 0.85, 0.87], [0.07, 0.08, 0.09], [28.8, 28.9, 29.0],
                [0.114, 0.116, 0.117]),
    # the prior as shipped: colour and depth better, thin stems worse (the finding)
    "prior": _row([0.80, 0.82, 0.84], [12, 13, 14], [0.43, 0.53, 0.60], [0.07, 0.08, 0.08], [29.0, 29.1, 29.2],
                  [0.076, 0.079, 0.081]),
    # a method that keeps stems and most of the gains, and cuts floaters (shown)
    "good": _row([0.94, 0.96, 0.97], [1, 2, 3], [0.84, 0.86, 0.9], [0.04, 0.05, 0.06], [29.0, 29.05, 29.1],
                 [0.090, 0.095, 0.097]),
    # keeps stems but loses the depth gain
    "flat": _row([0.95, 0.95, 0.96], [2, 3, 4], [0.83, 0.85, 0.87], [0.07, 0.08, 0.09], [28.8, 28.9, 29.0],
                 [0.110, 0.112, 0.113]),
}


def test_targets_on_constructed_rows():
    t = {row: {x["target"]: x["status"] for x in ts} for row, ts in study.targets(SUMMARY).items()}
    assert "rgb" not in t
    stems, psnr, absrel, promise = study.TARGETS
    assert t["prior"][stems] == "not met"  # coverage, breaks and peduncle cover worse than rgb
    assert t["prior"][psnr] == "met" and t["prior"][absrel] == "met"  # its own gains, trivially
    assert t["prior"][promise] == "not met"
    assert t["good"] == {stems: "met", psnr: "met", absrel: "met", promise: "met"}
    assert t["flat"][stems] == "met"
    assert t["flat"][absrel] == "not met"  # 0.112 keeps 4 of prior's 37 thousandths
    assert t["flat"][psnr] == "not met"
    assert t["flat"][promise] == "not met"


def test_half_gain_when_prior_gains_nothing():
    assert study._half_gain(29.0, 29.0, 28.5, +1)[0] == "met"  # not below rgb is enough
    assert study._half_gain(28.9, 29.0, 28.5, +1)[0] == "not met"
    assert study._half_gain(0.10, 0.10, 0.05, -1)[0] == "not met"  # lower is better: no AbsRel gain kept
    assert study._half_gain(0.075, 0.10, 0.05, -1)[0] == "met"  # exactly half
    assert study._half_gain(None, 0.10, 0.05, -1)[0] == "not measured"


def test_combo_keeps_one_thin_mode_and_the_better_prior():
    gains = {"+thin_one_sided": 0.10, "+thin_down": 0.05, "+gate": -0.01, "+patch": 0.02}
    opts, used, base, left = study.combo(gains, {"prior": 0.6, "tiled": 0.8})
    assert used == ["+thin_one_sided", "+patch"] and base == "tiled"
    assert opts == {"depth_thin": "one-sided", "depth_alignment": "patch"}
    assert "+thin_down" in left
    opts, used, base, left = study.combo({m: -0.1 for m in gains}, {"prior": 0.6, "tiled": 0.5})
    assert used == [] and base == "prior" and opts == {"depth_thin": "off"}
