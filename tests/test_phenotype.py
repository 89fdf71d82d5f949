"""Phenotypes from constructed Gaussians with known answers: a bent stem's arc length, nodes at known
heights, a known diameter (checked against the project's rasteriser), peduncles at known nodes,
missing classes, the scale option, the command and the report section."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from s3dgs.classes import CLASSES
from s3dgs.errors import UsageError
from s3dgs.phenotype import (
    _covariances,
    fit_ground_plane,
    measure_plant,
    parse_scale,
    silhouette_diameter,
    up_from_cameras,
)

U, N, D, P = (CLASSES.index(c) for c in "UNDP")


def _wxyz(R: np.ndarray) -> np.ndarray:
    q = Rotation.from_matrix(R).as_quat()  # xyzw
    return np.concatenate([q[..., 3:], q[..., :3]], -1)


class Plant:
    """Gaussians of a constructed plant. The stem centreline is c(z) = (A sin(pi z / H), 0, z),
    z in [0, H]: a bend of amplitude A whose arc length is known numerically."""

    def __init__(self, H=0.5, A=0.08, r=0.004, node_s=(0.12, 0.2, 0.29, 0.36), peduncles=(1, 3),
                 surface=True, sigma_axial=0.002, ground=False, seed=0):
        self.H, self.A, self.r = H, A, r
        zz = np.linspace(0, H, 20001)
        c = self.centre(zz)
        self.s_of_z = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(c, axis=0), axis=1))])
        self.zz = zz
        self.length = float(self.s_of_z[-1])
        self.node_z = [float(np.interp(s, self.s_of_z, zz)) for s in node_s]
        self.node_s = list(node_s)
        rng = np.random.default_rng(seed)
        means, scales, quats, opac, probs = [], [], [], [], []

        def add(m, s, q, o, p):
            means.append(np.atleast_2d(m)), scales.append(np.atleast_2d(s)), quats.append(np.atleast_2d(q))
            opac.append(np.atleast_1d(o)), probs.append(np.atleast_2d(p))

        # the stem: flat discs on its surface (every 2 mm along, 24 around) or a row on its axis
        step = 0.002
        z = np.arange(0.0, H, step)
        p0 = self.centre(z)
        t = np.stack([self.tangent(v) for v in z])
        z_nodes = np.array(self.node_z)
        k = np.searchsorted(z_nodes, z)
        prev = z_nodes[np.maximum(k - 1, 0)] if len(z_nodes) else z
        nxt = z_nodes[np.minimum(k, len(z_nodes) - 1)] if len(z_nodes) else z
        is_u = (k > 0) & ((k == len(z_nodes)) | (z - prev < nxt - z))
        pr = np.full((len(z), 4), 0.02)
        pr[is_u, U] = 0.9
        pr[~is_u, D] = 0.9
        if surface:
            n1 = np.cross(t, [0.0, 1.0, 0.0])
            n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
            n2 = np.cross(t, n1)
            a = np.arange(24) * 2 * np.pi / 24
            nrm = np.cos(a)[None, :, None] * n1[:, None] + np.sin(a)[None, :, None] * n2[:, None]  # [Z, 24, 3]
            tt = np.broadcast_to(t[:, None], nrm.shape)
            R = np.stack([nrm, np.cross(tt, nrm), tt], -1).reshape(-1, 3, 3)  # x normal, y around, z along
            m = len(R)
            add((p0[:, None] + r * nrm).reshape(-1, 3),
                np.tile([r * 0.02, 2 * np.pi * r / 24 * 0.35, step * 0.6], (m, 1)), _wxyz(R),
                np.full(m, 0.95), np.repeat(pr, 24, axis=0))
        else:
            add(p0, np.full((len(z), 3), sigma_axial), np.tile([1.0, 0, 0, 0], (len(z), 1)),
                np.full(len(z), 0.8), pr)
        # nodes: a swelling of N Gaussians around the stem
        for z in self.node_z:
            c0 = self.centre(z)
            for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
                for dz in (-0.003, 0.0, 0.003):
                    pos = c0 + [1.6 * r * np.cos(a), 1.6 * r * np.sin(a), dz]
                    add(pos, [0.0015] * 3, [1, 0, 0, 0], 0.9, [0.05, 0.92, 0.05, 0.02])
        # peduncles: a straight branch of P Gaussians leaving node k sideways and slightly down
        self.peduncle_nodes = list(peduncles)
        for k in peduncles:
            c0 = self.centre(self.node_z[k - 1])
            d = np.array([0.0, 1.0, -0.3])
            d /= np.linalg.norm(d)
            for u in np.arange(1.8 * r, 0.06, 0.003):
                add(c0 + u * d, [0.0015] * 3, [1, 0, 0, 0], 0.9, [0.02, 0.05, 0.02, 0.9])
        # a leaf-like clutter of unlabelled Gaussians away from the stem
        add(rng.uniform([-0.2, 0.1, 0.05], [0.2, 0.3, 0.4], (200, 3)), np.full((200, 3), 0.004),
            np.tile([1.0, 0, 0, 0], (200, 1)), np.full(200, 0.7), np.full((200, 4), 0.02))
        if ground:  # opaque unlabelled Gaussians on the ground z = 0
            add(np.c_[rng.uniform(-0.4, 0.4, (600, 2)), np.zeros(600)], np.full((600, 3), 0.004),
                np.tile([1.0, 0, 0, 0], (600, 1)), np.full(600, 0.9), np.full((600, 4), 0.02))
        self.means = np.concatenate(means)
        self.scales = np.concatenate(scales)
        self.quats = np.concatenate(quats)
        self.opac = np.concatenate(opac)
        self.probs = np.concatenate(probs)

    def centre(self, z):
        z = np.asarray(z, np.float64)
        return np.stack([self.A * np.sin(np.pi * z / self.H), np.zeros_like(z), z], -1)

    def tangent(self, z):
        t = np.array([self.A * np.pi / self.H * np.cos(np.pi * z / self.H), 0.0, 1.0])
        return t / np.linalg.norm(t)

    def arrays(self):
        return self.means, self.scales, self.quats, self.opac, self.probs

    def measure(self, **kw):
        kw.setdefault("up", (0, 0, 1))
        kw.setdefault("metres_per_unit", 1.0)
        return measure_plant(*self.arrays(), **kw)


@pytest.fixture(scope="module")
def plant():
    return Plant()


@pytest.fixture(scope="module")
def measured(plant):
    return plant.measure()


def test_bent_stem_length_is_the_arc_not_the_chord(plant, measured):
    chord = float(np.linalg.norm(plant.centre(plant.H) - plant.centre(0.0)))
    assert plant.length > 1.05 * chord  # the bend matters
    p = measured["plant"]
    assert p["stem_length"] == pytest.approx(plant.length, rel=0.02)
    assert p["plant_height"] == pytest.approx(plant.H, rel=0.02)
    assert measured["units"] == "m"
    # the centreline runs along the true one: within a millimetre
    cl = np.asarray(measured["stem"]["centreline_model"])
    truth = plant.centre(cl[:, 2])
    assert np.abs(cl - truth).max() < 0.002


def test_nodes_at_known_heights_and_internodes_along_the_stem(plant, measured):
    nodes = measured["nodes"]
    assert measured["plant"]["node_count"] == len(plant.node_z) == len(nodes)
    assert [n["index"] for n in nodes] == [1, 2, 3, 4]
    heights = [n["height"] for n in nodes]
    assert heights == sorted(heights)  # ordered from the base
    assert np.allclose(heights, plant.node_z, atol=0.003)
    assert all(0.8 < n["confidence"] <= 1.0 for n in nodes)
    true_inter = np.diff(plant.node_s)
    got = [i["length"] for i in measured["internodes"]]
    assert np.allclose(got, true_inter, rtol=0.03)
    # along the bent stem the internode is longer than the straight line between its nodes
    assert sum(i["length"] > i["straight_length"] for i in measured["internodes"]) >= 2


def test_stem_diameter_of_surface_gaussians(plant, measured):
    for i in measured["internodes"]:
        assert i["stem_diameter"] == pytest.approx(2 * plant.r, rel=0.05)
    assert measured["plant"]["stem_diameter_median"] == pytest.approx(2 * plant.r, rel=0.05)


def test_stem_diameter_of_axial_gaussians_is_their_drawn_width():
    # a row of round Gaussians on the axis: no centre is at the surface, the width is what they draw
    pl = Plant(A=0.0, surface=False, sigma_axial=0.002)
    res = pl.measure()
    d = np.array([i["stem_diameter"] for i in res["internodes"]])
    # one Gaussian of opacity o alone draws alpha 0.5 out to sigma sqrt(2 ln 2o); neighbours 1.5 mm
    # apart add up, so the row is wider than that and narrower than 3 sigma each side
    assert (d > 2 * 0.002 * np.sqrt(2 * np.log(2 * 0.8))).all() and (d < 6 * 0.002).all()


@pytest.mark.parametrize("surface", [True, False])
def test_silhouette_matches_the_rasteriser(surface):
    """The diameter is the width the project's renderer draws: render a straight stem from the side,
    count the alpha >= 0.5 width on the middle row, compare with silhouette_diameter (low-pass
    included at that camera's pixel size)."""
    from s3dgs.render import render
    from s3dgs.scene.synth_render import look_at

    pl = Plant(A=0.0, surface=surface, node_s=(), peduncles=(), sigma_axial=0.0015)
    m = (pl.probs[:, U] > 0.5) | (pl.probs[:, D] > 0.5)
    m &= (pl.means[:, 2] > 0.2) & (pl.means[:, 2] < 0.3)
    X, S, Q, O = pl.means[m], pl.scales[m], pl.quats[m], pl.opac[m]
    W = H = 64
    f, dist = 4000.0, 1.0  # pixel = 0.25 mm at the stem: the 8 mm stem spans 32 px
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    vm = look_at([dist, 0.0, 0.25], [0.0, 0.0, 0.25])
    out = render(torch.tensor(X, dtype=torch.float32), torch.tensor(Q, dtype=torch.float32),
                 torch.tensor(S, dtype=torch.float32), torch.tensor(O, dtype=torch.float32),
                 torch.ones(len(X), 3), torch.tensor(vm, dtype=torch.float32)[None],
                 torch.tensor(K, dtype=torch.float32)[None], W, H, backend="torch")
    row = out.alphas[0, H // 2, :, 0].numpy().astype(np.float64)
    on = np.nonzero(row >= 0.5)[0]
    lo, hi = on.min(), on.max()
    # sub-pixel edges: linear interpolation of the 0.5 crossing between pixel centres
    left = lo - (row[lo] - 0.5) / (row[lo] - row[lo - 1])
    right = hi + (row[hi] - 0.5) / (row[hi] - row[hi + 1])
    px = dist / f
    width_render = (right - left) * px
    d, info = silhouette_diameter(X, _covariances(S, Q), O, np.array([0, 0, 0.25]), np.array([0, 0, 1.0]),
                                  half_length=0.0, reach=0.01, n_views=1, n_rows=1, n_cols=801,
                                  eps=0.3 * px ** 2)
    assert d == pytest.approx(width_render, rel=0.03)


def test_peduncles_attached_to_known_nodes(plant, measured):
    assert measured["plant"]["peduncle_count"] == 2
    assert sorted(p["node"] for p in measured["peduncles"]) == plant.peduncle_nodes
    per_node = {n["index"]: n["peduncles"] for n in measured["nodes"]}
    assert per_node == {1: 1, 2: 0, 3: 1, 4: 0}
    assert all(0.05 < p["reach"] < 0.07 for p in measured["peduncles"])


def test_broken_peduncle_counts_once_and_a_floating_one_attaches_nowhere(plant):
    X, S, Q, O, Pr = (a.copy() for a in plant.arrays())
    ped = Pr[:, P] > 0.5
    # break the branch of node 1 in the middle (a 1.5 cm gap): its two pieces leave the same way
    z1 = plant.node_z[0]
    d_from_node = np.linalg.norm(X - plant.centre(z1), axis=1)
    gap = ped & (d_from_node > 0.02) & (d_from_node < 0.035)
    keep = ~gap
    # and a P cluster floating 10 cm from the stem
    fl = np.array([[0.25, -0.1, 0.3]]) + np.arange(6)[:, None] * [0.003, 0, 0]
    Xn = np.concatenate([X[keep], fl])
    Sn = np.concatenate([S[keep], np.full((6, 3), 0.0015)])
    Qn = np.concatenate([Q[keep], np.tile([1.0, 0, 0, 0], (6, 1))])
    On = np.concatenate([O[keep], np.full(6, 0.9)])
    Pn = np.concatenate([Pr[keep], np.tile([0.02, 0.02, 0.02, 0.9], (6, 1))])
    res = measure_plant(Xn, Sn, Qn, On, Pn, up=(0, 0, 1), metres_per_unit=1.0)
    assert res["plant"]["peduncle_count"] == 2
    assert any("attach to no node" in n for n in res["notes"])
    assert "merged" in res["method"]["peduncle_merge"]


def test_missing_classes_give_notes_not_exceptions(plant):
    X, S, Q, O, Pr = plant.arrays()
    no_n = Pr.copy()
    no_n[:, N] = 0.01
    res = measure_plant(X, S, Q, O, no_n, up=(0, 0, 1), metres_per_unit=1.0)
    assert res["plant"]["node_count"] is None and res["nodes"] == [] and res["internodes"] == []
    assert res["plant"]["stem_length"] == pytest.approx(plant.length, rel=0.02)  # the rest still measured
    assert any("no confident N Gaussians" in n for n in res["notes"])
    assert res["plant"]["peduncle_count"] is None
    no_stem = Pr.copy()
    no_stem[:, [U, D]] = 0.01
    res = measure_plant(X, S, Q, O, no_stem, up=(0, 0, 1), metres_per_unit=1.0)
    assert res["plant"]["plant_height"] is None and res["plant"]["stem_length"] is None
    assert any("main stem not measured" in n for n in res["notes"])
    # only two classes in the model, and nothing confident at all
    res = measure_plant(X, S, Q, O, Pr[:, [U, D]], up=(0, 0, 1), classes=("U", "D"))
    assert any("no class N" in n for n in res["notes"]) and res["units"] == "model units"
    res = measure_plant(X, S, Q, O, np.zeros_like(Pr), up=(0, 0, 1))
    assert all(v is None for v in res["plant"].values())
    json.dumps(res)  # JSON-ready


def test_scale_option_forms_and_errors(plant, measured):
    assert parse_scale("0.012")[0] == pytest.approx(0.012)
    f, src = parse_scale("0.30=2.4")
    assert f == pytest.approx(0.125) and "known size" in src
    f, src = parse_scale("0.3=0,0,0,3,4,0")
    assert f == pytest.approx(0.06) and "known distance" in src
    for bad in ("abc", "-1", "0.3=1,2", "0.3=0,0,0,0,0,0", "0=2"):
        with pytest.raises(UsageError, match="--scale"):
            parse_scale(bad)
    # a model in other units (x 20): with the right scale the lengths come out in metres again
    X, S, Q, O, Pr = plant.arrays()
    res = measure_plant(X * 20, S * 20, Q, O, Pr, up=(0, 0, 1), metres_per_unit=parse_scale("0.05")[0])
    assert res["plant"]["stem_length"] == pytest.approx(measured["plant"]["stem_length"], rel=1e-3)
    assert res["plant"]["node_count"] == 4
    assert [i["length"] for i in res["internodes"]] == pytest.approx(
        [i["length"] for i in measured["internodes"]], rel=1e-3)
    res = measure_plant(X * 20, S * 20, Q, O, Pr, up=(0, 0, 1))
    assert res["units"] == "model units"
    assert res["plant"]["stem_length"] == pytest.approx(20 * measured["plant"]["stem_length"], rel=0.02)


def test_stem_followed_past_its_labels_but_not_below_the_ground():
    pl = Plant(A=0.0, node_s=(0.2, 0.3), peduncles=())
    X, S, Q, O, Pr = (a.copy() for a in pl.arrays())
    stem = (Pr[:, U] > 0.5) | (Pr[:, D] > 0.5)
    unl = stem & ((X[:, 2] < 0.1) | (X[:, 2] > 0.4))
    Pr[unl] = 0.02  # the heatmaps labelled only the middle of the stem
    # a ground of opaque Gaussians at z = 0 and the stem's (unlabelled) continuation below it
    g = np.random.default_rng(1).uniform([-0.2, -0.2, 0], [0.2, 0.2, 0], (400, 3))
    below = np.stack([np.zeros(20), np.zeros(20), -np.arange(1, 21) * 0.0015], 1)
    Xn = np.concatenate([X, g, below])
    n_new = len(g) + len(below)
    Sn = np.concatenate([S, np.full((n_new, 3), 0.002)])
    Qn = np.concatenate([Q, np.tile([1.0, 0, 0, 0], (n_new, 1))])
    On = np.concatenate([O, np.full(n_new, 0.9)])
    Pn = np.concatenate([Pr, np.full((n_new, 4), 0.02)])
    res = measure_plant(Xn, Sn, Qn, On, Pn, up=(0, 0, 1), metres_per_unit=1.0, ground=((0, 0, 1), 0.0))
    st = res["stem"]
    assert st["extended"]["base"] > 0.08 and st["extended"]["apex"] > 0.08
    assert res["plant"]["plant_height"] == pytest.approx(pl.H, abs=0.02)
    assert st["base_model"][2] >= -1e-9  # not below the ground
    off = measure_plant(Xn, Sn, Qn, On, Pn, up=(0, 0, 1), metres_per_unit=1.0, extend_stem=False,
                        base_rule="stem")
    assert off["plant"]["stem_length"] == pytest.approx(0.3, abs=0.01)
    assert off["plant"]["plant_height"] == pytest.approx(0.3, abs=0.01)


def test_up_from_a_camera_ring_and_from_forward_facing_cameras():
    tilt = Rotation.from_euler("x", 20, degrees=True).as_matrix()
    true_up = tilt @ [0, 0, 1.0]
    az = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    centres = np.stack([0.7 * np.cos(az), 0.7 * np.sin(az), 0.3 + 0.1 * (np.arange(24) % 2)], 1) @ tilt.T
    cam_ups = np.tile(true_up + [0.1, -0.05, 0], (24, 1))  # roughly upright cameras
    up, src = up_from_cameras(centres, cam_ups)
    assert np.degrees(np.arccos(np.clip(up @ true_up, -1, 1))) < 0.5 and "ring" in src
    # forward-facing: centres on a small plane facing the scene; the plane normal is not up
    centres = np.stack([np.linspace(-0.2, 0.2, 10), np.zeros(10), np.tile([0.0, 0.05], 5)], 1)
    up, src = up_from_cameras(centres, np.tile([0, 0, 1.0], (10, 1)))
    assert np.allclose(up, [0, 0, 1]) and "mean up" in src


def test_ground_plane_with_clutter():
    rng = np.random.default_rng(0)
    g = np.c_[rng.uniform(-1, 1, (500, 2)), rng.normal(0, 0.002, 500)]
    clutter = rng.uniform([-1, -1, 0], [1, 1, 1], (300, 3))
    n, d, frac = fit_ground_plane(np.concatenate([g, clutter]))
    assert abs(abs(n[2]) - 1) < 1e-3 and abs(d * np.sign(n[2])) < 0.002 and frac > 0.55


# -----------------------------------------------------------------------------------------------
# the command and the report
# -----------------------------------------------------------------------------------------------

def _save_run(plant: Plant, run: Path) -> Path:
    from s3dgs.gaussians.model import save_ply

    n = len(plant.means)
    pr = np.clip(plant.probs, 1e-4, 1 - 1e-4)
    op = np.clip(plant.opac, 1e-4, 1 - 1e-4)
    params = {"means": torch.tensor(plant.means), "scales": torch.tensor(np.log(plant.scales)),
              "quats": torch.tensor(plant.quats), "opacities": torch.tensor(np.log(op / (1 - op))),
              "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3),
              "semantics": torch.tensor(np.log(pr / (1 - pr)))}
    run.mkdir(parents=True, exist_ok=True)
    save_ply(run / "point_cloud.ply", params)
    (run / "config.json").write_text(json.dumps({"semantic_activation": "sigmoid"}))
    return run


def test_cli_writes_json_csv_and_picture(plant, tmp_path, capsys):
    from s3dgs.cli import main
    from s3dgs.phenotype import csv_text, run_phenotype

    run = _save_run(plant, tmp_path / "run")
    assert main(["phenotype", str(run), "--up", "0,0,1", "--scale", "2=2"]) == 0
    res = json.loads((run / "phenotypes.json").read_text())
    assert res["units"] == "m" and "known size" in res["scale"]["source"] and "given" in res["up_source"]
    assert res["plant"]["node_count"] == 4 and res["plant"]["peduncle_count"] == 2
    rows = list(csv.DictReader((run / "phenotypes.csv").open()))
    scopes = [r["scope"] for r in rows]
    assert scopes.count("plant") == 1 and scopes.count("node") == 4 and scopes.count("internode") == 3
    inter = [float(r["internode_length"]) for r in rows if r["scope"] == "internode"]
    assert inter == pytest.approx(np.diff(plant.node_s), rel=0.03)
    assert all(r["unit"] == "m" for r in rows)
    from PIL import Image

    with Image.open(run / "phenotypes.png") as im:
        assert im.width > 600 and im.height > 300
    out = capsys.readouterr().out
    assert "plant height" in out and res["summary"].startswith("height ") and "4 nodes, 3 internodes" in res["summary"]

    # no scale known: model units, labelled
    res = run_phenotype(run, up="0,0,1", write=False)
    assert res["units"] == "model units" and "model units" in res["notes"][0]
    assert next(csv.DictReader(io.StringIO(csv_text(res))))["unit"] == "model units"

    # user errors: one message naming the option, exit 2; a missing run: exit 1; no traceback
    capsys.readouterr()
    assert main(["phenotype", str(run), "--scale", "two metres"]) == 2
    err = capsys.readouterr().err
    assert "--scale" in err and "Traceback" not in err
    assert main(["phenotype", str(run), "--up", "sideways"]) == 2
    assert "--up" in capsys.readouterr().err
    for opt, val in (("--class-threshold", "1.5"), ("--node-separation", "-0.01"), ("--min-opacity", "nan")):
        assert main(["phenotype", str(run), opt, val]) == 2
        assert opt in capsys.readouterr().err
    assert main(["phenotype", str(tmp_path / "nothing")]) == 1
    assert "point_cloud.ply" in capsys.readouterr().err


def test_up_and_scale_from_a_synthetic_scene(plant, tmp_path):
    """A run whose scene has true, metric poses (the synthetic layout): up from the camera ring, the
    scale from the known poses."""
    from s3dgs.phenotype import run_phenotype
    from s3dgs.scene.colmap import write_model
    from s3dgs.scene.synth_render import look_at

    scene = tmp_path / "scene"
    (scene / "gt").mkdir(parents=True)
    (scene / "gt" / "meta.json").write_text("{}")
    (scene / "gt" / "stems.json").write_text("{}")
    az = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    vms = np.stack([look_at([0.75 * np.cos(a), 0.75 * np.sin(a), 0.2 + 0.2 * (i % 2)], [0, 0, 0.25])
                    for i, a in enumerate(az)])
    K = np.array([[288.0, 0, 160], [0, 288.0, 120], [0, 0, 1]])
    write_model(scene / "sparse" / "0", [f"v{i:02d}.png" for i in range(12)], K, vms, 320, 240,
                np.zeros((1, 3)), np.zeros((1, 3), np.uint8))
    run = _save_run(plant, tmp_path / "run")
    (run / "config.json").write_text(json.dumps({"scene": str(scene), "resolution_scale": 1.0}))
    res = run_phenotype(run, write=False)
    assert "camera centres" in res["up_source"] and np.allclose(res["up"], [0, 0, 1], atol=1e-6)
    assert res["units"] == "m" and "synthetic" in res["scale"]["source"]
    assert res["pixel_size_model"] == pytest.approx(0.75 / 288, rel=0.1)
    assert res["plant"]["node_count"] == 4


def test_up_from_the_ground_without_cameras(tmp_path):
    from s3dgs.phenotype import run_phenotype

    tilt = Rotation.from_euler("y", 30, degrees=True).as_matrix()
    pl = Plant(ground=True)
    pl.means = pl.means @ tilt.T  # any orientation, as structure from motion gives
    rot = Rotation.from_matrix(tilt) * Rotation.from_quat(pl.quats[:, [1, 2, 3, 0]])
    pl.quats = _wxyz(rot.as_matrix())
    run = _save_run(pl, tmp_path / "run")
    res = run_phenotype(run, write=False)
    assert "ground plane" in res["up_source"]
    assert np.degrees(np.arccos(np.clip(np.asarray(res["up"]) @ (tilt @ [0, 0, 1.0]), -1, 1))) < 1.0
    assert res["plant"]["node_count"] == 4
    assert res["plant"]["plant_height"] == pytest.approx(pl.H, abs=0.01)  # above the ground plane
    assert res["plant"]["stem_diameter_median"] == pytest.approx(2 * pl.r, rel=0.05)


def test_report_section_with_and_without_phenotypes(plant, tmp_path):
    from s3dgs.phenotype import run_phenotype
    from s3dgs.report import build_report_html

    run = _save_run(plant, tmp_path / "run")
    html = build_report_html(run)
    assert 'id="phenotypes"' in html and "Phenotypes were not measured" in html
    run_phenotype(run, up="0,0,1", scale="1")
    html = build_report_html(run)
    sec = html[html.index('id="phenotypes"'):]
    sec = sec[: sec.index("</section>")]
    assert "not measured for this run" not in sec
    assert "data:image/png;base64," in sec and "Internodes" in sec and "plant height (m)" in sec
    assert sec.count("<tr><td>") >= 4 + 3  # the node and internode rows


def test_stray_stem_gaussians_beyond_the_apex_do_not_bend_the_stem_away():
    """Stem-labelled Gaussians far to the side above the apex (a stray cluster on the backdrop) must
    not be joined to the main stem: a stem does not run sideways at a lean of over 45 degrees."""
    pl = Plant(A=0.0, node_s=(0.2, 0.3), peduncles=())
    X, S, Q, O, Pr = pl.arrays()
    rng = np.random.default_rng(2)
    n = 40
    stray = np.stack([rng.normal(1.2, 0.01, n), rng.normal(0.0, 0.01, n), rng.uniform(pl.H + 0.1, pl.H + 0.25, n)], 1)
    lab = np.zeros((n, 4))
    lab[:, U] = 0.95
    Xn = np.concatenate([X, stray])
    Sn = np.concatenate([S, np.full((n, 3), 0.002)])
    Qn = np.concatenate([Q, np.tile([1.0, 0, 0, 0], (n, 1))])
    res = measure_plant(Xn, Sn, Qn, np.concatenate([O, np.full(n, 0.9)]), np.concatenate([Pr, lab]), up=(0, 0, 1),
                        metres_per_unit=1.0)
    assert res["plant"]["plant_height"] == pytest.approx(pl.H, abs=0.03)
    assert res["plant"]["stem_length"] < 1.2 * pl.H
    assert abs(res["stem"]["apex_model"][0]) < 0.05


def test_centreline_reaches_the_top_of_the_stem_gaussians():
    """Issue 21: a stem that leans sharply near its top (the 45-degree lean rule cuts the fitted
    curve there) must be followed to the top of its stem-class Gaussians, with a note; stem-class
    Gaussians above the top beyond a gap give a note saying how much the stem may be cut short."""
    step = 0.002
    z = np.arange(0.0, 0.36, step)
    low = np.stack([np.zeros_like(z), np.zeros_like(z), z], 1)
    u = np.arange(step, 0.14, step)  # then 60 degrees from up for 0.14 m: 0.07 m higher
    lean = low[-1] + u[:, None] * np.array([np.sin(np.radians(60)), 0.0, np.cos(np.radians(60))])
    X = np.concatenate([low, lean])
    n = len(X)
    pr = np.full((n, 4), 0.02)
    pr[:, D] = 0.9
    args = (X, np.full((n, 3), 0.0015), np.tile([1.0, 0, 0, 0], (n, 1)), np.full(n, 0.9), pr)
    top = float(X[:, 2].max())
    res = measure_plant(*args, up=(0, 0, 1), metres_per_unit=1.0, base_rule="stem")
    assert res["plant"]["plant_height"] == pytest.approx(top, abs=0.01)
    assert res["plant"]["stem_length"] == pytest.approx(0.36 + 0.14, abs=0.02)
    assert any("extended along them" in s for s in res["notes"])
    # the top beyond a gap of 4 cm: not joined, but said
    far = lean[-1] + np.array([0.0, 0.0, 0.04]) + np.arange(10)[:, None] * [0.0, 0.0, step]
    X2 = np.concatenate([X, far])
    m = len(X2)
    pr2 = np.full((m, 4), 0.02)
    pr2[:, D] = 0.9
    res2 = measure_plant(X2, np.full((m, 3), 0.0015), np.tile([1.0, 0, 0, 0], (m, 1)), np.full(m, 0.9), pr2,
                         up=(0, 0, 1), metres_per_unit=1.0, base_rule="stem")
    note = [s for s in res2["notes"] if "cut short" in s]
    assert note and res2["plant"]["plant_height"] == pytest.approx(top, abs=0.01)
    assert f"{0.04 + 9 * step:.4g}"[:3] in note[0]
