"""`s3dgs batch` on a real local Ray cluster (2 CPUs, started once for the module) over tiny synthetic
plants given as prepared scenes: the table, a worker killed mid-training and resumed, a broken input
as one failed row, a rerun that redoes nothing; and the manifest, tables and index without Ray."""

import csv
import json
import os
from pathlib import Path

import pytest

from s3dgs import batch as B
from s3dgs.cli import main

ray = pytest.importorskip("ray")

FAST = ["--num-iterations", "30", "--ckpt-every", "10", "--no-save-renders", "--sh-degree", "1",
        "--no-progress", "--log-every", "10", "--retries", "1"]


@pytest.fixture(scope="module")
def ray_local():
    """One embedded Ray cluster for the whole module (its start costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def plants(tmp_path_factory) -> Path:
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

    d = tmp_path_factory.mktemp("plants")
    for i in range(3):
        make_synthetic_scene(SynthConfig(out=d / "scenes" / f"p{i}", preset="tiny", seed=i))
    (d / "broken.mp4").write_text("not a video")
    return d


def _manifest(d: Path, name: str, rows: list[str]) -> Path:
    p = d / name
    p.write_text("plant_id,input,date,genotype,num_iterations\n" + "\n".join(rows) + "\n")
    return p


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _rows(out: Path) -> list[dict]:
    with open(out / "phenotypes.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def first_batch(ray_local, plants, tmp_path_factory):
    """Two plants run to the end (the plants every later test must leave untouched)."""
    out = tmp_path_factory.mktemp("batch") / "out"
    scene_before = _mtimes(plants / "scenes" / "p0")
    m = _manifest(plants, "first.csv", ["p0,scenes/p0,2026-05-01,M82,", "p1,scenes/p1,2026-05-03,M82,"])
    assert main(["batch", str(m), str(out), *FAST]) == 0
    return out, scene_before


def test_first_batch_runs_prepared_scenes_into_a_table(first_batch, plants):
    out, scene_before = first_batch
    rows = [r for r in _rows(out) if r["scope"] == "plant"]
    assert [(r["plant_id"], r["status"], r["date"], r["genotype"]) for r in rows] == \
        [("p0", "done", "2026-05-01", "M82"), ("p1", "done", "2026-05-03", "M82")]
    # a prepared scene: no structure from motion, its priors and heatmaps used, the input unchanged
    prep = json.loads((out / "p0" / "stages" / "prepare.json").read_text())
    assert "prepared scene" in prep["note"] and prep["info"]["depth"] and prep["info"]["heatmaps"]
    assert not (out / "p0" / "stages" / "depth.json").exists()
    assert (out / "p0" / "run" / "report.html").is_file()
    assert _mtimes(plants / "scenes" / "p0") == scene_before
    state = json.loads((out / "batch.json").read_text())
    assert state["plants"]["p1"]["status"] == "done" and state["plants"]["p1"]["tries"] == 1
    import pyarrow.parquet as pq

    t = pq.read_table(out / "phenotypes.parquet")
    assert t.num_rows == len(_rows(out)) and "genotype" in t.column_names


def test_killed_worker_resumes_broken_input_fails_finished_untouched(first_batch, plants, monkeypatch, capsys):
    out, _ = first_batch
    before = {p: t for p, t in _mtimes(out).items() if p.parts[len(out.parts)] in ("p0", "p1")}
    marker = plants / "killed.marker"
    # test hook: the first try of p2 SIGKILLs its worker once its first checkpoint is written
    monkeypatch.setenv(B.TEST_KILL_ENV, f"p2:{marker}")
    m = _manifest(plants, "second.csv", ["p0,scenes/p0,2026-05-01,M82,", "p1,scenes/p1,2026-05-03,M82,",
                                         "p2,scenes/p2,2026-05-01,Heinz,80", "bad,broken.mp4,2026-05-01,Heinz,"])
    assert main(["batch", str(m), str(out), *FAST]) == 1  # one plant failed
    text = capsys.readouterr().out
    assert "2 already done, 2 to run" in text and "bad: FAILED" in text and "p2: done" in text
    assert marker.is_file()  # the worker was killed
    log = (out / "p2" / "batch.log").read_text()
    assert "[batch] try 2 of plant p2" in log
    assert "[train] continuing the interrupted training from ckpt_" in log
    assert json.loads((out / "p2" / "run" / "train_summary.json").read_text())["iterations"] == 80
    # the finished plants were not touched
    assert {p: t for p, t in _mtimes(out).items() if p in before} == before
    rows = {r["plant_id"]: r for r in _rows(out) if r["scope"] == "plant"}
    assert [rows[k]["status"] for k in ("p0", "p1", "p2", "bad")] == ["done", "done", "done", "failed"]
    assert "could not be read as a video" in rows["bad"]["error"] and rows["bad"]["tries"] == "1"
    assert rows["p2"]["tries"] == "2" and rows["p2"]["genotype"] == "Heinz"
    page = (out / "index.html").read_text()
    assert "could not be read as a video" in page and "href='p2/run/report.html'" in page

    # a rerun redoes nothing (the failed plant is tried again, and fails again without retry)
    monkeypatch.delenv(B.TEST_KILL_ENV)
    done = {p: t for p, t in _mtimes(out).items() if p.parts[len(out.parts)] in ("p0", "p1", "p2")}
    m3 = _manifest(plants, "third.csv", ["p0,scenes/p0,2026-05-01,M82,", "p1,scenes/p1,2026-05-03,M82,",
                                         "p2,scenes/p2,2026-05-01,Heinz,80"])
    assert main(["batch", str(m3), str(out), *FAST]) == 0
    assert "3 already done, 0 to run" in capsys.readouterr().out
    assert {p: t for p, t in _mtimes(out).items() if p in done} == done
    assert len([r for r in _rows(out) if r["scope"] == "plant"]) == 3


# ------------------------------------------------------------------ without Ray: manifest, tables

def test_manifest_overrides_are_validated_and_paths_resolved(tmp_path):
    (tmp_path / "a").mkdir()
    m = tmp_path / "m.csv"
    m.write_text("plant_id,input,block,num-iterations,keypoints,save_renders\na,a,3,50,kp,false\n")
    (p,) = B.read_plants(m)
    assert p.columns == {"block": "3"} and p.input == (tmp_path / "a").resolve()
    assert p.overrides["keypoints"] == str((tmp_path / "kp").resolve())
    o = B.plant_options(B.PlantOptions(), p)
    assert o.stages.train.num_iterations == 50 and o.keypoints == tmp_path / "kp"
    assert o.stages.train.save_renders is False
    bad = B.Plant("x", tmp_path, {}, {"num-iterations": "many"})
    with pytest.raises(B.UsageError, match="plant x"):
        B.plant_options(B.PlantOptions(), bad)
    bad = B.Plant("x", tmp_path, {}, {"class-threshold": "3"})
    with pytest.raises(B.UsageError, match="--class-threshold"):
        B.plant_options(B.PlantOptions(), bad)
    m.write_text("plant_id,input\na,a\na,b\n")
    with pytest.raises(B.UsageError, match="appears twice"):
        B.read_plants(m)
    m.write_text("id,path\na,a\n")
    assert main(["batch", str(m), str(tmp_path / "o")]) == 2


def test_unreachable_address_fails_at_once_naming_it():
    # Ray itself would retry for minutes; the check answers in milliseconds (connection refused)
    with pytest.raises(B.BatchError, match="--address 127.0.0.1:9: no Ray cluster answers"):
        B._check_reachable("127.0.0.1:9")
    B._check_reachable("auto")  # left to Ray


def test_folder_of_plants_uses_entry_names(tmp_path):
    (tmp_path / "plant_a").mkdir()
    (tmp_path / "plant_b.mp4").write_text("x")
    (tmp_path / ".hidden").mkdir()
    assert [p.plant_id for p in B.read_plants(tmp_path)] == ["plant_a", "plant_b"]
    assert [p.plant_id for p in B.read_plants(tmp_path, exclude=tmp_path / "plant_a")] == ["plant_b"]


TOMATO = {"plant": {"plant_height": 0.4, "stem_length": 0.42, "node_count": 3, "stem_diameter_median": 0.01},
          "units": "m", "method": "classes", "measured_by": "classes",
          "internodes": [{"index": 1, "from_node": 1, "to_node": 2, "length": 0.1, "stem_diameter": 0.01},
                         {"index": 2, "from_node": 2, "to_node": 3, "length": 0.12, "stem_diameter": None}]}
GEOMETRY = {"units": "mm", "method": "geometry", "organs": [{}, {}, {}],
            "internodes": [20.0, 31.5], "angles_deg": [137.0, 140.0]}


def test_tables_and_index_handle_both_phenotype_kinds(tmp_path):
    plants = [B.Plant("t", tmp_path / "t", {"date": "2026-05-01", "genotype": "A"}),
              B.Plant("g", tmp_path / "g", {"date": "2026-05-04", "genotype": "B"}),
              B.Plant("f", tmp_path / "f", {"date": "2026-05-04", "genotype": "B"})]
    for p, ph in (("t", TOMATO), ("g", GEOMETRY)):
        (tmp_path / p / "run").mkdir(parents=True)
        (tmp_path / p / "run" / "phenotypes.json").write_text(json.dumps(ph))
        (tmp_path / p / "run" / "report.html").write_text("<html></html>")
    state = {"plants": {"t": {"status": "done", "seconds": 3.0}, "g": {"status": "done", "seconds": 4.0},
                        "f": {"status": "failed", "error": "boom <b>"}}}
    rows = B.collect_results(tmp_path, plants, state)
    plant = {r["plant_id"]: r for r in rows if r["scope"] == "plant"}
    inter = [r for r in rows if r["scope"] == "internode"]
    assert plant["t"]["plant_height"] == 0.4 and plant["t"]["internode_count"] == 2
    assert plant["g"]["organ_count"] == 3 and plant["g"]["units"] == "mm"
    assert [(r["plant_id"], r["internode_length"], r.get("internode_angle_deg")) for r in inter] == \
        [("t", 0.1, None), ("t", 0.12, None), ("g", 20.0, 137.0), ("g", 31.5, 140.0)]
    assert all(r["genotype"] for r in inter)
    files = B.write_tables(tmp_path, rows)
    import pyarrow.parquet as pq

    t = pq.read_table(files["parquet"])
    assert t.num_rows == 7 and t.column("internode_length").to_pylist()[1:3] == [0.1, 0.12]
    page = B.write_index(tmp_path, plants, state, rows).read_text()
    assert "boom &lt;b&gt;" in page and "href='t/run/report.html'" in page
    plots = B.trait_plots(rows)
    assert {"plant_height", "organ_count"} <= {t for t, _ in plots}
    assert page.count("data:image/png;base64,") == len(plots)


def test_plant_stage_reads_the_stamps(tmp_path):
    assert B.plant_stage(tmp_path) == "queued"
    (tmp_path / "batch.log").write_text("")
    assert B.plant_stage(tmp_path) == "prepare"
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "prepare.json").write_text("{}")
    assert B.plant_stage(tmp_path) == "train"
    os.remove(tmp_path / "batch.log")
    assert B.plant_stage(tmp_path) == "queued"
