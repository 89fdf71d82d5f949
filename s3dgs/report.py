"""RUN/report.html: one self-contained page about a run (`write_report(run_dir, scene_dir)`).

Everything is embedded (images as base64 PNG, styles inline); the page loads nothing from
elsewhere. Sections, each shown when its inputs exist in the run folder:

- the interactive 3D view of point_cloud.ply (`s3dgs.viewer`: splats, class toggles, phenotype
  overlay; the only JavaScript of the page, embedded with its pinned library; without the library
  or without WebGL the page says so and the static pictures below are the view);

- summary: train_summary.json, the stage times of `s3dgs run` (pipeline.json), how the depth priors
  were made (scene/depths/meta.json; a simulated prior is labelled as such);
- training curves from metrics.jsonl (losses, PSNR, Gaussians, speed);
- held-out views: photo | render | rendered depth | rendered semantics (renders/<stem>_*.png), with
  the depth prior and the semantic heatmaps of the frame when the scene has them;
- per-class point clouds (classes/<C>.ply) as scatter plots from two viewpoints;
- phenotypes (phenotypes.json and .png of `s3dgs phenotype`): the picture (redrawn from
  point_cloud.ply framed on the plant: the 1-99 percentile box of the opaque Gaussians, strays
  counted), plant traits (beside the true ones, red when wrong, when the scene is a synthetic plant
  with gt/), internodes, nodes and the notes on what could not be measured; says so when not run;
- the metrics table (metrics.json, any groups and keys);
- the run's configuration (config.json).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from s3dgs.classes import CLASS_COLORS, TABLES

__all__ = ["write_report", "build_report_html"]

# hex colours of the one class table (s3dgs/classes.py), so the report and the exports agree
CLASS_COLOURS = {k: "#%02x%02x%02x" % rgb for k, rgb in CLASS_COLORS.items()}


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def run_colours(run: Path) -> dict[str, str]:
    """Hex colour of each class of the run's table (RUN/config.json, `s3dgs.classes.run_class_table`),
    over the built-in tables' colours (for class names the run does not know)."""
    from s3dgs.classes import run_class_table

    cfg = _read_json(Path(run) / "config.json")
    cfg = cfg if isinstance(cfg, dict) else {}
    out = {k: _hex(c) for t in TABLES.values() for k, c in t.colors.items()}
    out.update(CLASS_COLOURS)
    if cfg.get("class_table") or cfg.get("classes"):
        out.update({k: _hex(c) for k, c in run_class_table(cfg).colors.items()})
    return out
MAX_VIEWS = 4
MAX_POINTS = 20000

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f4;color:#1d2a1d}
header{background:#2f5d34;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:1.5em} header p{margin:4px 0 0;opacity:.85}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border-radius:8px;padding:12px 18px;margin:18px 0;box-shadow:0 1px 3px rgba(0,0,0,.12)}
h2{font-size:1.2em;margin:6px 0 12px;color:#2f5d34}
table{border-collapse:collapse;font-size:.92em;margin:6px 0}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef3ec} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:4px 8px 10px 0;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #ccc;display:block}
figcaption{font-size:.85em;color:#555;margin-top:2px}
.row{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:8px;align-items:start}
.row figure{margin:0} .row figure img{width:100%}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:6px 10px;margin:8px 0}
.muted{color:#777} pre{background:#f3f3f3;padding:8px;overflow:auto;font-size:.85em}
"""


# -----------------------------------------------------------------------------------------------
# helpers
# -----------------------------------------------------------------------------------------------

def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _png_b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img_tag(data: bytes, alt: str) -> str:
    return f'<img src="{_png_b64(data)}" alt="{_esc(alt)}">'


def _file_png(path: Path, max_side: int = 640) -> Optional[bytes]:
    """A PNG of the image file, scaled down to `max_side`, or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if max(im.size) > max_side:
                s = max_side / max(im.size)
                im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))),
                               Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
            return buf.getvalue()
    except Exception:
        return None


def _array_png(arr: np.ndarray, max_side: int = 640) -> bytes:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(arr))
    if max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4g}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, (list, tuple)):
        if len(v) <= 8 and all(isinstance(x, (int, float, str, bool)) or x is None for x in v):
            return "[" + ", ".join(_fmt(x) for x in v) + "]"
        return f"[{len(v)} values]"
    return str(v)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            rows += _flatten(v, name)
        else:
            rows.append((name, v))
    return rows


def _kv_table(rows: list[tuple[str, object]]) -> str:
    out = ["<table>"]
    for k, v in rows:
        cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
        out.append(f"<tr><td>{_esc(k)}</td><td{cls}>{_esc(_fmt(v))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


# -----------------------------------------------------------------------------------------------
# sections
# -----------------------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
            if isinstance(r, dict) and "iter" in r:
                rows.append(r)
    except OSError:
        pass
    # a resumed run appends: keep the last entry per iteration, in order
    by_iter = {}
    for r in rows:
        by_iter[r["iter"]] = r
    return [by_iter[k] for k in sorted(by_iter)]


def _curves_section(run: Path) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = _read_jsonl(run / "metrics.jsonl")
    if not rows:
        return _section("Training curves", '<p class="muted">No metrics.jsonl in this run.</p>', "curves")

    def series(key):
        xs, ys = [], []
        for r in rows:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(r["iter"])
                ys.append(v)
        return xs, ys

    panels = [("Loss", [("loss", "total"), ("rgb", "RGB"), ("depth", "depth"), ("sem", "semantic")], True),
              ("PSNR (training views, dB)", [("psnr", "PSNR")], False),
              ("Gaussians", [("gaussians", "Gaussians")], False),
              ("Speed (it/s)", [("it_per_s", "it/s")], False)]
    panels = [p for p in panels if any(series(k)[0] for k, _ in p[1])]
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for ax, (title, keys, logy) in zip(axes[0], panels):
        for k, label in keys:
            xs, ys = series(k)
            if xs:
                ax.plot(xs, ys, label=label, lw=1.5)
        if logy and all(y > 0 for k, _ in keys for y in series(k)[1]):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    body = f"<figure>{_img_tag(_fig_png(fig), 'training curves')}" \
           f"<figcaption>{len(rows)} log points from metrics.jsonl</figcaption></figure>"
    return _section("Training curves", body, "curves")


def _colour_depth_prior(path: Path) -> Optional[np.ndarray]:
    try:
        from matplotlib import colormaps
        from PIL import Image

        with Image.open(path) as im:
            a = np.asarray(im).astype(np.float32)
        if a.ndim == 3:
            a = a[..., 0]
        lo, hi = float(a.min()), float(a.max())
        v = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return (colormaps["turbo"](v)[..., :3] * 255).astype(np.uint8)
    except Exception:
        return None


def _colour_heatmap(path: Path, classes, colours: Optional[dict] = None) -> Optional[np.ndarray]:
    colours = colours or CLASS_COLOURS
    try:
        from matplotlib.colors import to_rgb

        h = np.load(path).astype(np.float32)
        if h.ndim != 3:
            return None
        out = np.zeros(h.shape[:2] + (3,), np.float32)
        for k in range(h.shape[2]):
            c = np.array(to_rgb(colours.get(classes[k] if k < len(classes) else "", "#ffffff")))
            out = np.maximum(out, h[..., k:k + 1] * c)
        return (np.clip(out, 0, 1) * 255).astype(np.uint8)
    except Exception:
        return None


def _views_section(run: Path, scene: Optional[Path], classes, colours: Optional[dict] = None) -> str:
    colours = colours or CLASS_COLOURS
    rdir = run / "renders"
    stems = sorted(p.name[: -len("_rgb.png")] for p in rdir.glob("*_rgb.png")) if rdir.is_dir() else []
    if not stems:
        return _section("Held-out views", '<p class="muted">No renders in this run (renders/*_rgb.png).</p>',
                        "views")
    parts = [f"<p>{len(stems)} held-out view(s), never trained on"
             + (f"; the first {MAX_VIEWS} are shown" if len(stems) > MAX_VIEWS else "") + ".</p>"]
    for stem in stems[:MAX_VIEWS]:
        figs = []
        for suffix, caption in (("gt", "photo"), ("rgb", "render"), ("depth", "rendered depth"),
                                ("sem", "rendered semantics")):
            data = _file_png(rdir / f"{stem}_{suffix}.png")
            if data:
                figs.append(f"<figure>{_img_tag(data, f'{stem} {caption}')}<figcaption>{_esc(caption)}"
                            "</figcaption></figure>")
        if scene is not None:
            meta = _read_json(scene / "depths" / "meta.json")
            sim = isinstance(meta, dict) and bool(meta.get("simulated"))
            prior = _colour_depth_prior(scene / "depths" / f"{stem}.png")
            if prior is not None:
                figs.append(f"<figure>{_img_tag(_array_png(prior), f'{stem} depth prior')}"
                            f"<figcaption>{'SIMULATED ' if sim else ''}depth prior (disparity, near = warm)"
                            "</figcaption></figure>")
            heat = _colour_heatmap(scene / "heatmaps" / f"{stem}.npy", classes, colours)
            if heat is not None:
                figs.append(f"<figure>{_img_tag(_array_png(heat), f'{stem} heatmaps')}"
                            "<figcaption>semantic heatmaps (target)</figcaption></figure>")
        parts.append(f"<h3>{_esc(stem)}</h3><div class=\"row\">{''.join(figs)}</div>")
    legend = " ".join(f'<span style="color:{colours.get(k, "#ffffff")}">&#9632;</span> {_esc(k)}' for k in classes)
    parts.append(f"<p class=\"muted\">Class colours: {legend}</p>")
    return _section("Held-out views", "\n".join(parts), "views")


def _clouds_section(run: Path, colours: Optional[dict] = None) -> str:
    colours = colours or CLASS_COLOURS
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from s3dgs.scene.ply import read_points_ply

    cdir = run / "classes"
    plys = sorted(cdir.glob("*.ply")) if cdir.is_dir() else []
    clouds = {}
    for p in plys:
        try:
            xyz, rgb = read_points_ply(p)
        except Exception:
            continue
        clouds[p.stem] = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if not clouds:
        return _section("Per-class point clouds",
                        '<p class="muted">No per-class point clouds (classes/*.ply).</p>', "clouds")
    counts = {c: len(x) for c, x in clouds.items()}
    if not any(counts.values()):
        return _section("Per-class point clouds",
                        "<p class=\"muted\">No Gaussian passed the export thresholds for any class "
                        f"({_esc(', '.join(counts))}: 0 points); was the run trained with heatmaps?</p>",
                        "clouds")
    allpts = np.concatenate([x for x in clouds.values() if len(x)] or [np.zeros((1, 3))])
    centre = np.median(allpts, axis=0)
    span = np.percentile(np.abs(allpts - centre), 98, axis=0).max() if len(allpts) > 1 else 1.0
    span = float(span) if span > 0 else 1.0
    rng = np.random.default_rng(0)
    fig = plt.figure(figsize=(11, 5))
    views = ((15, -60, "view 1"), (60, 30, "view 2"))
    for i, (elev, azim, title) in enumerate(views):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        for c, x in clouds.items():
            if not len(x):
                continue
            if len(x) > MAX_POINTS // max(len(clouds), 1):
                x = x[rng.choice(len(x), MAX_POINTS // max(len(clouds), 1), replace=False)]
            ax.scatter(x[:, 0], x[:, 1], x[:, 2], s=1.5, c=colours.get(c, "#777777"), label=f"{c} ({counts[c]})",
                       depthshade=False)
        for setter, k in ((ax.set_xlim, 0), (ax.set_ylim, 1), (ax.set_zlim, 2)):
            setter(centre[k] - span, centre[k] + span)
        ax.view_init(elev=elev, azim=azim)
        ax.set_title(f"{title} (elevation {elev}°, azimuth {azim}°)", fontsize=9)
        ax.tick_params(labelsize=6)
        if i == 0 and any(len(x) for x in clouds.values()):
            ax.legend(fontsize=8, markerscale=6, loc="upper left")
    fig.tight_layout()
    table = "<table><tr><th>class</th><th>points</th></tr>" + "".join(
        f'<tr><td><span style="color:{colours.get(c, "#777")}">&#9632;</span> {_esc(c)}</td>'
        f'<td class="num">{n:,}</td></tr>' for c, n in counts.items()) + "</table>"
    body = (f"<figure>{_img_tag(_fig_png(fig), 'per-class point clouds')}<figcaption>Gaussian centres per "
            "class (classes/&lt;C&gt;.ply), SfM/world coordinates</figcaption></figure>" + table)
    return _section("Per-class point clouds", body, "clouds")


def _metrics_section(run: Path) -> str:
    m = _read_json(run / "metrics.json")
    if not isinstance(m, dict) or not m:
        return _section("Metrics", '<p class="muted">No metrics.json (run `s3dgs eval RUN`).</p>', "metrics")
    out = ["<table><tr><th>group</th><th>metric</th><th>value</th></tr>"]
    for group, val in m.items():
        rows = _flatten(val) if isinstance(val, dict) else [("", val)]
        for i, (k, v) in enumerate(rows):
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            g = _esc(group) if i == 0 else ""
            out.append(f"<tr><td>{g}</td><td>{_esc(k)}</td><td{cls}>{_esc(_fmt(v))}</td></tr>")
    out.append("</table>")
    return _section("Metrics", "\n".join(out), "metrics")


def _phenotypes_section(run: Path, scene: Optional[Path] = None, colours: Optional[dict] = None) -> str:
    """RUN/phenotypes.json and .png (`s3dgs phenotype RUN`): the picture, the plant's traits, the
    internodes and the notes on what could not be measured."""
    res = _read_json(run / "phenotypes.json")
    if not isinstance(res, dict) or not isinstance(res.get("plant"), dict):
        return _section("Phenotypes", '<p class="muted">Phenotypes were not measured for this run '
                        "(no phenotypes.json; run <code>s3dgs phenotype RUN</code>).</p>", "phenotypes")
    unit = res.get("units", "model units")
    parts = []
    scale = res.get("scale") or {}
    if scale.get("source"):
        parts.append(f"<p>Scale: {_esc(scale['source'])}. Up: {_esc(res.get('up_source', 'unknown'))}.</p>")
    if unit != "m":
        parts.append(f'<p class="note">Lengths are in <b>model units</b>, not metres: {_esc(scale.get("source", ""))}</p>')
    framed = _framed_phenotype_png(run, res, colours or CLASS_COLOURS)
    data = None if framed else _file_png(run / "phenotypes.png", max_side=1400)
    if framed:
        png, caption = framed
        parts.append(f"<figure>{_img_tag(png, 'phenotypes')}<figcaption>{_esc(caption)}</figcaption></figure>")
    elif data:
        parts.append(f"<figure>{_img_tag(data, 'phenotypes')}<figcaption>class Gaussians, fitted "
                     "centreline and numbered nodes (phenotypes.png)</figcaption></figure>")
    p = res["plant"]
    labels = (("plant_height", f"plant height ({unit})"), ("stem_length", f"stem length ({unit})"),
              ("node_count", "nodes"), ("peduncle_count", "peduncles"),
              ("stem_diameter_median", f"median stem diameter ({unit})"))
    truth = _true_traits(scene, res)
    if truth:
        parts.append("<h3>Plant, measured against the synthetic plant's ground truth</h3>" + truth)
    else:
        parts.append("<h3>Plant</h3>" + _kv_table([(lab, p.get(k) if p.get(k) is not None else "not measured")
                                                    for k, lab in labels]))
    rows = res.get("internodes") or []
    if rows:
        t = [f"<h3>Internodes</h3><table><tr><th>internode</th><th>length along the stem ({_esc(unit)})</th>"
             f"<th>straight ({_esc(unit)})</th><th>stem diameter ({_esc(unit)})</th></tr>"]
        for r in rows:
            cells = [r.get("length"), r.get("straight_length"), r.get("stem_diameter")]
            t.append(f"<tr><td>{_esc(r.get('from_node'))}-{_esc(r.get('to_node'))}</td>" + "".join(
                f'<td class="num">{_esc(_fmt(c)) if c is not None else "not measured"}</td>' for c in cells)
                + "</tr>")
        t.append("</table>")
        parts.append("".join(t))
    nodes = res.get("nodes") or []
    if nodes:
        t = [f"<h3>Nodes</h3><table><tr><th>node</th><th>height ({_esc(unit)})</th><th>confidence</th>"
             "<th>peduncles</th></tr>"]
        for n in nodes:
            h = n.get("height")
            t.append(f"<tr><td>{_esc(n.get('index'))}</td><td class=\"num\">"
                     f"{_esc(_fmt(h)) if h is not None else 'not measured'}</td>"
                     f"<td class=\"num\">{_esc(_fmt(n.get('confidence')))}</td>"
                     f"<td class=\"num\">{_esc(n.get('peduncles'))}</td></tr>")
        t.append("</table>")
        parts.append("".join(t))
    notes = res.get("notes") or []
    if notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    return _section("Phenotypes", "\n".join(parts), "phenotypes")


def _viewer_css() -> str:
    from s3dgs.viewer import VIEWER_CSS

    return VIEWER_CSS


def _framed_phenotype_png(run: Path, res: dict, colours: dict) -> Optional[tuple[bytes, str]]:
    """Two side views and a top view of the run's opaque Gaussians (class colours, grey without a
    class) with the phenotype overlay, framed on the plant: the box of `s3dgs.viewer.robust_extent`
    (1-99 percentiles of the Gaussians of opacity > 0.1, widened by 15 %); the strays outside it are
    counted in the caption, not drawn. None without point_cloud.ply."""
    if not (run / "point_cloud.ply").is_file():
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from s3dgs.gaussians.model import load_ply
    from s3dgs.viewer import robust_extent

    try:
        params, names = load_ply(run / "point_cloud.ply")
    except Exception:
        return None
    X = params["means"].numpy().astype(np.float64)
    op = 1 / (1 + np.exp(-params["opacities"].numpy().astype(np.float64).reshape(-1)))
    keep = op > 0.1
    cls = np.full(len(X), -1)
    if "semantics" in params and len(names):
        pr = 1 / (1 + np.exp(-params["semantics"].numpy().astype(np.float64)))
        cls = np.where(pr.max(1) > 0.5, pr.argmax(1), -1)
    up = np.asarray(res.get("up") or [0, 0, 1], np.float64)
    up = up / (np.linalg.norm(up) or 1.0)
    e1 = np.cross(up, [1.0, 0, 0] if abs(up[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    B = np.stack([e1, e2, up], 1)  # model -> (e1, e2, up)
    Y = X[keep] @ B
    ext = robust_extent(Y, np.ones(len(Y)))
    lo, hi = np.array(ext["lo"]), np.array(ext["hi"])
    inside = ((Y >= lo) & (Y <= hi)).all(1)
    Y, c = Y[inside], cls[keep][inside]
    if len(Y) > 60000:
        pick = np.random.default_rng(0).choice(len(Y), 60000, replace=False)
        Y, c = Y[pick], c[pick]
    ov = {}
    stem = res.get("stem") or {}
    if res.get("method") == "geometry":
        ov["line"] = stem.get("polyline_model")
        ov["pts"] = [(o.get("index"), o.get("insertion_model")) for o in res.get("organs") or []]
    else:
        ov["line"] = stem.get("centreline_model")
        ov["pts"] = [(n.get("index"), n.get("position_model")) for n in res.get("nodes") or []]
    fig, axes = plt.subplots(1, 3, figsize=(14, 5.4))
    for ax, (i, j), title in zip(axes, ((0, 2), (1, 2), (0, 1)), ("side view (along e2)", "side view (along e1)",
                                                                 "top view")):
        grey = c < 0
        ax.scatter(Y[grey, i], Y[grey, j], s=1, color="0.65", alpha=0.4, linewidths=0,
                   label="no class" if i == 0 and j == 2 else None)
        for k, name in enumerate(names):
            m = c == k
            if m.any():
                ax.scatter(Y[m, i], Y[m, j], s=2, color=colours.get(name, "#777777"), linewidths=0,
                           label=name if i == 0 and j == 2 else None)
        if ov["line"]:
            L = np.asarray(ov["line"], np.float64).reshape(-1, 3) @ B
            ax.plot(L[:, i], L[:, j], "k-", lw=1.5)
        for idx, pnt in ov["pts"]:
            if pnt is None:
                continue
            q = np.asarray(pnt, np.float64) @ B
            ax.plot(q[i], q[j], "o", mfc="none", mec="k", ms=8)
            ax.annotate(str(idx), (q[i], q[j]), xytext=(6, 2), textcoords="offset points", fontsize=9, weight="bold")
        ax.set_xlim(lo[i], hi[i])
        ax.set_ylim(lo[j], hi[j])
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{title}, model units", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, markerscale=5, loc="upper left")
    fig.tight_layout()
    strays = int((~inside).sum())
    cap = (f"{int(keep.sum()):,} Gaussians of opacity > 0.1, class colours, with the "
           + ("main stem and organ insertions" if res.get("method") == "geometry" else "stem centreline and nodes")
           + "; framed on the plant (1-99 percentile box widened by 15 %)"
           + (f"; {strays:,} stray Gaussians outside it are not drawn" if strays else ""))
    return _fig_png(fig), cap


def _true_traits(scene: Optional[Path], res: dict) -> Optional[str]:
    """A table of the measured plant traits beside the true ones of a synthetic scene (scene/gt/, via
    `s3dgs.scene.groundtruth`), a wrong one in red: counts must match, lengths be within 10 %.
    None when the scene has no ground truth or the lengths are not metric. A scene aligned to a
    synthetic reference (`s3dgs run --reference`, as `s3dgs demo` does: alignment.json) takes the
    reference's ground truth."""
    if scene is not None and not (Path(scene) / "gt" / "stems.json").is_file():
        try:
            ref = json.loads((Path(scene) / "alignment.json").read_text()).get("reference")
        except (OSError, ValueError, AttributeError):
            ref = None
        if ref and (Path(ref) / "gt" / "stems.json").is_file():
            scene = Path(ref)
    if scene is None or not (Path(scene) / "gt" / "stems.json").is_file() or res.get("units") != "m":
        return None
    from s3dgs.scene.groundtruth import load_ground_truth

    try:
        gt = load_ground_truth(scene)
    except Exception:
        return None
    main = [np.asarray(st["points"], np.float64) for st in gt.stems if st.get("part") == "main stem"]
    if not main:
        return None
    pts = np.concatenate(main)
    pts = pts[np.argsort(pts[:, 2], kind="stable")]
    truth = {"plant_height": float(pts[:, 2].max()),
             "stem_length": float(sum(np.linalg.norm(np.diff(np.asarray(m), axis=0), axis=1).sum() for m in main)),
             "node_count": len(gt.nodes),
             "peduncle_count": sum(st.get("class") == "P" and st.get("part") == "peduncle" for st in gt.stems)}
    if res.get("method") == "geometry":  # no nodes or peduncles: the lengths only
        truth.pop("node_count")
        truth.pop("peduncle_count")
    p = res.get("plant") or {}
    labels = {"plant_height": "plant height (m)", "stem_length": "stem length (m)", "node_count": "nodes",
              "peduncle_count": "peduncles"}
    rows = ["<table><tr><th>trait</th><th>measured</th><th>true</th><th></th></tr>"]
    for k, t in truth.items():
        v = p.get(k)
        if isinstance(t, int):
            ok = v == t
            say = "" if ok else (f"found {v} of {t}" if v is not None else "not measured")
        else:
            ok = v is not None and abs(v - t) <= 0.1 * t
            say = "" if ok else ("not measured" if v is None else f"off by {100 * (v - t) / t:+.0f} %")
        style = "" if ok else ' style="color:#c00;font-weight:bold"'
        rows.append(f"<tr{style}><td>{_esc(labels[k])}</td><td class=\"num\">"
                    f"{_esc(_fmt(v)) if v is not None else 'not measured'}</td><td class=\"num\">{_esc(_fmt(t))}</td>"
                    f"<td>{'&#10003;' if ok else '&#10007; ' + _esc(say)}</td></tr>")
    rows.append("</table><p class=\"muted\">True traits from the scene's gt/stems.json; counts must match, "
                "lengths be within 10 %.</p>")
    return "".join(rows)


def _summary_section(run: Path, scene: Optional[Path]) -> str:
    parts = []
    if scene is not None:
        meta = _read_json(scene / "depths" / "meta.json")
        if isinstance(meta, dict):
            if meta.get("simulated"):
                parts.append('<p class="note"><b>Depth priors: simulated Depth Anything V2 stand-in</b> '
                             "(made from the synthetic scene's true depth, not by the model).</p>")
            else:
                parts.append(f"<p>Depth priors: {_esc(meta.get('model', 'unknown model'))} "
                             f"({_esc(meta.get('backend', 'unknown backend'))}).</p>")
        elif (scene / "images").is_dir():
            parts.append("<p>Depth priors: none (trained without depth).</p>")
        prep = _read_json(scene / "prepare.json")
        if isinstance(prep, dict):
            parts.append(
                f"<p>Structure from motion: {_esc(prep.get('registered'))} of {_esc(prep.get('frames_used'))} "
                f"frames registered, mean reprojection error {_esc(_fmt(prep.get('mean_reprojection_error')))} px, "
                f"{_esc(prep.get('points'))} points.</p>")
    ts = _read_json(run / "train_summary.json")
    if isinstance(ts, dict):
        parts.append("<h3>Training</h3>" + _kv_table([(k, v) for k, v in ts.items() if not isinstance(v, dict)]))
    pipe = _read_json(run / "pipeline.json")
    if isinstance(pipe, dict) and pipe.get("stages"):
        rows = ["<h3>Stages</h3><table><tr><th>stage</th><th>status</th><th>time (s)</th><th>note</th></tr>"]
        for r in pipe["stages"]:
            t = f"{r.get('seconds', 0):.1f}" if r.get("status") == "ran" else "-"
            rows.append(f"<tr><td>{_esc(r.get('stage'))}</td><td>{_esc(r.get('status'))}</td>"
                        f"<td class=\"num\">{t}</td><td>{_esc(r.get('note', ''))}</td></tr>")
        rows.append("</table>")
        parts.append("".join(rows))
    if not parts:
        parts.append('<p class="muted">No summary files in this run.</p>')
    return _section("Summary", "\n".join(parts), "summary")


def _config_section(run: Path) -> str:
    cfg = _read_json(run / "config.json")
    if not isinstance(cfg, dict):
        return _section("Configuration", '<p class="muted">No config.json.</p>', "config")
    return _section("Configuration", _kv_table(_flatten(cfg)), "config")


# -----------------------------------------------------------------------------------------------
# entry points
# -----------------------------------------------------------------------------------------------

def _guess_scene(run: Path) -> Optional[Path]:
    cfg = _read_json(run / "config.json")
    if isinstance(cfg, dict) and cfg.get("scene"):
        p = Path(cfg["scene"])
        if p.is_dir():
            return p
    p = run.parent / "scene"
    return p if p.is_dir() else None


def build_report_html(run_dir: str | Path, scene_dir: str | Path | None = None) -> str:
    """The report page for `run_dir` as a string (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from s3dgs.classes import run_class_table

    run = Path(run_dir)
    scene = Path(scene_dir) if scene_dir is not None else _guess_scene(run)
    cfg = _read_json(run / "config.json")
    classes = run_class_table(cfg if isinstance(cfg, dict) else {}).names
    colours = run_colours(run)
    sections = [_summary_section(run, scene), _curves_section(run), _views_section(run, scene, classes, colours),
                _clouds_section(run, colours), _phenotypes_section(run, scene, colours), _metrics_section(run),
                _config_section(run)]
    if (run / "point_cloud.ply").is_file():
        from s3dgs.viewer import REPORT_MAX_GAUSSIANS, viewer_section_html

        try:
            view = viewer_section_html(run, max_gaussians=REPORT_MAX_GAUSSIANS)
        except Exception as exc:  # a damaged PLY: the rest of the report still stands
            view = f'<p class="s3v-fallback">No interactive view: {_esc(exc)}</p>'
        sections.insert(1, _section("3D view", view, "view3d"))
    nav = " · ".join(f'<a href="#{a}" style="color:#fff">{t}</a>' for a, t in
                     (("summary", "summary"), ("view3d", "3D view"), ("curves", "curves"), ("views", "views"),
                      ("clouds", "point clouds"), ("phenotypes", "phenotypes"), ("metrics", "metrics"),
                      ("config", "config")))
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>s3dgs report: {_esc(run.name)}</title><style>{CSS}{_viewer_css()}</style></head><body>"
            f"<header><h1>s3dgs report: {_esc(run.resolve().parent.name + '/' + run.resolve().name)}</h1>"
            f"<p>{_esc(run.resolve())} · {when} · {nav}</p></header><main>\n"
            + "\n".join(sections) + "\n</main></body></html>\n")


def write_report(run_dir: str | Path, scene_dir: str | Path | None = None) -> Path:
    """Write RUN/report.html (self-contained: images embedded, no external resources; JavaScript
    only for the 3D view) and return its path. `scene_dir` (default: config.json's scene, else RUN/../scene)
    adds the depth priors, heatmaps and SfM summary when given."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run folder does not exist")
    from s3dgs.atomic import atomic_write_text
    from s3dgs.runlock import run_lock

    with run_lock(run, "the report", create=False):  # no other command writes into RUN meanwhile
        text = build_report_html(run, scene_dir)
        path = atomic_write_text(run / "report.html", text)
    return path
