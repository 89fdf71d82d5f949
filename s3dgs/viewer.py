"""The interactive splat view of a run (RUN/view.html, and a section of RUN/report.html).

The trained Gaussians (RUN/point_cloud.ply) are drawn as splats in the browser by Spark
(`@sparkjsdev/spark`, MIT, World Labs) on three.js (MIT), with orbit and zoom (three's
OrbitControls), a switch between true colours and class colours, a visibility toggle per class of
the run's class table (and "other": Gaussians of no confident class), an opacity cut and the
phenotype overlay (RUN/phenotypes.json: the stem centreline and the numbered nodes, or a geometry
run's main stem and organ insertions).

The page opens from a file, offline:

- the model is embedded compactly: per Gaussian 18 bytes before gzip (centre 3 x uint16 over the
  bounding box, log-scales 3 x uint8, rotation 4 x int8, opacity uint8, base colour (SH degree 0)
  3 x uint8, class index uint8), planar, gzipped, base64. Dropped: SH above degree 0 (view-dependent
  colour) and the class logits (only the top class above 0.5, as `s3dgs export` keeps them);
- the libraries are the unmodified release files of pinned npm packages (`SPARK_VERSION`,
  `THREE_VERSION`), fetched by `fetch_viewer_lib` (``npm pack``; `make viewer-lib`) into a cache
  folder that is not part of the repository (`viewer_lib_dir`), embedded gzipped with their
  licences. In the browser they are unzipped (DecompressionStream) into blob: URLs and resolved
  through an import map; blob: URLs have no folder, so the one relative import of
  three.module.js (``'./three.core.js'``) is pointed at the core's blob when the text is loaded
  (the embedded bytes are the release's);
- without the library files the page says how to fetch them; without WebGL2 it says so and the
  report's static pictures stay the view.

Written by hand because no library does it: the quantised encoding (a format of our own that keeps
the class index), the page's controls and the npm cache logic. The splat rendering, sorting and
camera controls are the libraries'.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from s3dgs.errors import S3dgsError, UsageError, WorkError
from s3dgs.options import opt

__all__ = [
    "SPARK_VERSION",
    "THREE_VERSION",
    "ViewConfig",
    "build_view_html",
    "encode_gaussians",
    "fetch_viewer_lib",
    "robust_extent",
    "view_main",
    "viewer_lib_dir",
    "viewer_lib_present",
    "viewer_section_html",
    "write_view",
]

SPARK_VERSION = "2.2.0"
THREE_VERSION = "0.187.0"
# file in the cache: (npm package, path inside its tarball)
LIB_FILES: dict[str, tuple[str, str]] = {
    "spark.module.min.js": ("@sparkjsdev/spark", "package/dist/spark.module.min.js"),
    "spark.LICENSE": ("@sparkjsdev/spark", "package/LICENSE"),
    "three.core.js": ("three", "package/build/three.core.js"),
    "three.module.js": ("three", "package/build/three.module.js"),
    "OrbitControls.js": ("three", "package/examples/jsm/controls/OrbitControls.js"),
    "Pass.js": ("three", "package/examples/jsm/postprocessing/Pass.js"),
    "three.LICENSE": ("three", "package/LICENSE"),
}
REPORT_MAX_GAUSSIANS = 500_000
"""The report embeds at most this many Gaussians (a random subset beyond: about 14 MB of page);
`s3dgs view --max-gaussians` chooses for RUN/view.html."""
PACKAGES = {"@sparkjsdev/spark": SPARK_VERSION, "three": THREE_VERSION}
# import-map name of each embedded module
MODULES = {"three/core": "three.core.js", "three": "three.module.js",
           "three/addons/controls/OrbitControls.js": "OrbitControls.js",
           "three/addons/postprocessing/Pass.js": "Pass.js", "@sparkjsdev/spark": "spark.module.min.js"}


# -----------------------------------------------------------------------------------------------
# the library cache
# -----------------------------------------------------------------------------------------------

def viewer_lib_dir() -> Path:
    """The folder of the library files: $S3DGS_VIEWER_LIB when set, else
    s3dgs/viewer_assets/spark-<v>_three-<v>/ beside this module (git-ignored)."""
    env = os.environ.get("S3DGS_VIEWER_LIB")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "viewer_assets" / f"spark-{SPARK_VERSION}_three-{THREE_VERSION}"


def viewer_lib_present(folder: Path | None = None) -> bool:
    folder = Path(folder) if folder is not None else viewer_lib_dir()
    return all((folder / name).is_file() for name in LIB_FILES) and (folder / "manifest.json").is_file()


def fetch_viewer_lib(folder: Path | None = None, *, npm: str = "npm", quiet: bool = False) -> Path:
    """Fetch the pinned release files from the npm registry (``npm pack PKG@VERSION``, which checks
    the registry's integrity hash) and extract `LIB_FILES` into `folder` (default `viewer_lib_dir()`)
    with a manifest.json (packages, versions, tarball SHA-256). Nothing is changed in the files.
    Returns the folder; a no-op when it is complete.

    Raises:
        WorkError naming npm and the fix when npm is missing or the registry cannot be reached."""
    folder = Path(folder) if folder is not None else viewer_lib_dir()
    if viewer_lib_present(folder):
        return folder
    exe = shutil.which(npm)
    if exe is None:
        raise WorkError(f"npm not found: the viewer's library ({_pins()}) is fetched with `npm pack`; install "
                        "Node.js/npm (apt-get install npm) and run `make viewer-lib`, or set S3DGS_VIEWER_LIB to "
                        "a folder holding its files")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        manifest = {"packages": {}, "files": {}}
        tarballs = {}
        for pkg, ver in PACKAGES.items():
            cmd = [exe, "pack", f"{pkg}@{ver}", "--pack-destination", str(tmp), "--json"]
            if quiet:
                cmd.insert(2, "--silent")
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)
            except subprocess.TimeoutExpired:
                raise WorkError(f"`npm pack {pkg}@{ver}` timed out: is the npm registry reachable?") from None
            if res.returncode != 0:
                raise WorkError(f"`npm pack {pkg}@{ver}` failed ({res.stderr.strip()[-400:]}); check the network "
                                "access to the npm registry and run `make viewer-lib` again")
            info = json.loads(res.stdout)[0]
            tgz = tmp / info["filename"]
            tarballs[pkg] = tgz
            manifest["packages"][pkg] = {"version": ver, "integrity": info.get("integrity"),
                                         "sha256": hashlib.sha256(tgz.read_bytes()).hexdigest()}
        out = tmp / "files"
        out.mkdir()
        for name, (pkg, member) in LIB_FILES.items():
            with tarfile.open(tarballs[pkg]) as tf:
                f = tf.extractfile(member)
                if f is None:
                    raise WorkError(f"{tarballs[pkg].name}: {member} missing; the pinned release changed?")
                data = f.read()
            (out / name).write_bytes(data)
            manifest["files"][name] = {"package": pkg, "path": member, "sha256": hashlib.sha256(data).hexdigest()}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        out.rename(folder)
    if not quiet:
        print(f"viewer library: {_pins()} in {folder}")
    return folder


def _pins() -> str:
    return f"@sparkjsdev/spark@{SPARK_VERSION} + three@{THREE_VERSION}"


# -----------------------------------------------------------------------------------------------
# the model
# -----------------------------------------------------------------------------------------------

def robust_extent(means: np.ndarray, opacities: np.ndarray, *, min_opacity: float = 0.1,
                  lo: float = 1.0, hi: float = 99.0, margin: float = 0.15) -> dict:
    """The box the plant fills: the `lo`-`hi` percentiles per axis of the Gaussians of opacity >
    `min_opacity` (all when none), widened by `margin` of its size; `strays` counts the opaque
    Gaussians outside it. `means [N, 3]`, `opacities [N]` (activated)."""
    X = np.asarray(means, np.float64).reshape(-1, 3)
    op = np.asarray(opacities, np.float64).reshape(-1)
    m = op > min_opacity
    P = X[m] if m.sum() >= 10 else X
    if len(P) == 0:
        return {"lo": [0.0] * 3, "hi": [1.0] * 3, "centre": [0.5] * 3, "size": 1.0, "strays": 0, "opaque": 0}
    a, b = np.percentile(P, lo, axis=0), np.percentile(P, hi, axis=0)
    pad = margin * float(np.max(b - a)) if np.max(b - a) > 0 else 1e-3
    a, b = a - pad, b + pad
    out = ((P < a) | (P > b)).any(1)
    return {"lo": a.tolist(), "hi": b.tolist(), "centre": ((a + b) / 2).tolist(), "size": float(np.max(b - a)),
            "strays": int(out.sum()), "opaque": len(P)}


def _q(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(np.rint((x - lo) / span * levels), 0, levels)


def encode_gaussians(params: dict, classes, *, class_threshold: float = 0.5, max_gaussians: int | None = None,
                     seed: int = 0) -> dict:
    """The compact form of a model for the page (see the module docstring). `params`: the dict of
    `s3dgs.gaussians.model.load_ply` (means [N, 3], scales [N, 3] log, quats [N, 4] wxyz, opacities
    [N] logit, sh0 [N, 1, 3], semantics [N, K] logits); `classes` its K names. A model with more than
    `max_gaussians` keeps a random subset (said in "subsampled_from"). Returns a JSON-able dict with
    the base64 gzip payload in "data"."""
    import torch

    def arr(k):
        v = params[k]
        return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

    means = arr("means").astype(np.float64).reshape(-1, 3)
    n_all = len(means)
    idx = np.arange(n_all)
    if max_gaussians is not None and n_all > max_gaussians:
        idx = np.sort(np.random.default_rng(seed).choice(n_all, max_gaussians, replace=False))
    means = means[idx]
    scales = arr("scales").astype(np.float64).reshape(-1, 3)[idx]
    quats = arr("quats").astype(np.float64).reshape(-1, 4)[idx]
    opac = 1.0 / (1.0 + np.exp(-arr("opacities").astype(np.float64).reshape(-1)[idx]))
    sh0 = arr("sh0").astype(np.float64).reshape(n_all, -1)[idx, :3]
    from s3dgs.gaussians.model import SH_C0

    rgb = np.clip(0.5 + SH_C0 * sh0, 0, 1)
    K = len(classes)
    cls = np.full(len(idx), K, np.uint8)  # K: "other"
    if K and "semantics" in params and params["semantics"] is not None:
        sem = arr("semantics").astype(np.float64).reshape(n_all, -1)[idx]
        if sem.shape[1] == K:
            prob = 1.0 / (1.0 + np.exp(-sem))
            top = prob.argmax(1)
            cls = np.where(prob[np.arange(len(idx)), top] > class_threshold, top, K).astype(np.uint8)
    lo, hi = means.min(0) if len(means) else np.zeros(3), means.max(0) if len(means) else np.ones(3)
    slo, shi = (scales.min(), scales.max()) if len(scales) else (0.0, 1.0)
    q = quats / np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-12)
    q = q * np.where(q[:, :1] < 0, -1.0, 1.0)  # w >= 0: same rotation
    planes = [_q(means, lo, hi, 65535).astype("<u2").T.tobytes(),
              _q(scales, np.full(3, slo), np.full(3, shi), 255).astype(np.uint8).T.tobytes(),
              np.clip(np.rint(q * 127), -127, 127).astype(np.int8).T.tobytes(),
              np.clip(np.rint(opac * 255), 0, 255).astype(np.uint8).tobytes(),
              np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8).T.tobytes(),
              cls.tobytes()]
    raw = b"".join(planes)
    data = gzip.compress(raw, compresslevel=9, mtime=0)
    return {"n": len(idx), "subsampled_from": int(n_all) if len(idx) < n_all else None,
            "lo": lo.tolist(), "hi": hi.tolist(), "log_scale": [float(slo), float(shi)],
            "classes": list(classes), "class_counts": np.bincount(cls, minlength=K + 1).tolist(),
            "extent": robust_extent(means, opac), "raw_bytes": len(raw),
            "data": base64.b64encode(data).decode("ascii")}


def _overlay(phen: dict | None) -> dict:
    """The phenotype overlay in model coordinates: {"line": [[x,y,z]...], "points": [{"label", "p"}],
    "kind": "nodes"|"insertions", "line_label"}."""
    if not isinstance(phen, dict):
        return {}
    stem = phen.get("stem") or {}
    if phen.get("method") == "geometry":
        line = stem.get("polyline_model") or []
        pts = [{"label": str(o.get("index")), "p": o["insertion_model"]} for o in phen.get("organs") or []
               if o.get("insertion_model") is not None]
        return {"line": line, "points": pts, "kind": "organ insertions", "line_label": "main stem"}
    line = stem.get("centreline_model") or []
    pts = [{"label": str(n.get("index")), "p": n["position_model"]} for n in phen.get("nodes") or []
           if n.get("position_model") is not None]
    return {"line": line, "points": pts, "kind": "nodes", "line_label": "stem centreline"}


# -----------------------------------------------------------------------------------------------
# the page
# -----------------------------------------------------------------------------------------------

def _lib_b64(folder: Path) -> dict[str, str]:
    return {name: base64.b64encode(gzip.compress((folder / name).read_bytes(), 9, mtime=0)).decode("ascii")
            for name in MODULES.values()}


VIEWER_CSS = """
#s3v{position:relative;width:100%;height:560px;background:#1b1f1b;border-radius:6px;overflow:hidden}
#s3v canvas{width:100%;height:100%;display:block}
#s3v-panel{position:absolute;top:8px;left:8px;background:rgba(255,255,255,.9);border-radius:6px;padding:8px 10px;
 font:13px system-ui,sans-serif;color:#1d2a1d;max-width:250px}
#s3v-panel label{display:block;margin:2px 0;cursor:pointer} #s3v-panel b{display:block;margin-top:4px}
#s3v-msg{position:absolute;bottom:8px;left:8px;right:8px;color:#ddd;font:12px system-ui,sans-serif}
.s3v-lab{position:absolute;color:#fff;font:bold 12px system-ui,sans-serif;text-shadow:0 0 3px #000;pointer-events:none}
.s3v-fallback{background:#fff6d6;border-left:4px solid #e0b000;padding:6px 10px;margin:8px 0}
"""

VIEWER_JS = r"""
const S = window.__s3dgs = {ready:false, error:null, firstFrameMs:null, t0:performance.now()};
function fail(msg){ S.error = msg; const fb = document.getElementById('s3v-fallback');
  fb.textContent = msg + ' The static pictures of the report stay the view.'; fb.style.display='block';
  document.getElementById('s3v').style.display='none'; }
async function gunzipB64(b64){ const r = await fetch('data:application/gzip;base64,' + b64);
  return new Response(r.body.pipeThrough(new DecompressionStream('gzip'))).arrayBuffer(); }
async function start(){
  const probe = document.createElement('canvas');
  if (!probe.getContext('webgl2')) { fail('No WebGL2 in this browser: the interactive view cannot be drawn.'); return; }
  const libs = JSON.parse(document.getElementById('s3v-libs').textContent);
  const names = JSON.parse(document.getElementById('s3v-modules').textContent);
  const imports = {};
  for (const [spec, file] of Object.entries(names)) {
    let text = new TextDecoder().decode(await gunzipB64(libs[file]));
    if (file === 'three.module.js') text = text.replaceAll("'./three.core.js'", "'three/core'");
    imports[spec] = URL.createObjectURL(new Blob([text], {type:'text/javascript'}));
  }
  const im = document.createElement('script'); im.type = 'importmap';
  im.textContent = JSON.stringify({imports}); document.head.appendChild(im);
  const main = URL.createObjectURL(new Blob([document.getElementById('s3v-main').textContent], {type:'text/javascript'}));
  await import(main);
}
start().catch(e => fail('The interactive view failed to start (' + e + ').'));
"""

VIEWER_MODULE = r"""
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { SparkRenderer, SplatMesh } from '@sparkjsdev/spark';
const S = window.__s3dgs;
THREE.ColorManagement.enabled = false;  // splat colours are sRGB values, used as they are
const M = JSON.parse(document.getElementById('s3v-model').textContent);
const buf = new Uint8Array(await (async () => { const r = await fetch('data:application/gzip;base64,' + M.data);
  return new Response(r.body.pipeThrough(new DecompressionStream('gzip'))).arrayBuffer(); })());
const n = M.n, K = M.classes.length;
let o = 0; const take = (bytes) => { const v = buf.slice(o, o + bytes); o += bytes; return v; };
const pos = new Uint16Array(take(6 * n).buffer), scl = take(3 * n), rot = new Int8Array(take(4 * n).buffer),
      opa = take(n), col = take(3 * n), cls = take(n);
const groups = M.classes.concat(['other']);
const colours = M.colours.concat(['#9a9a9a']).map(c => new THREE.Color(c));
const host = document.getElementById('s3v');
const renderer = new THREE.WebGLRenderer({antialias:false, preserveDrawingBuffer:true});
renderer.setPixelRatio(1); renderer.setClearColor(0x1b1f1b, 1);
renderer.setSize(host.clientWidth, host.clientHeight, false);
host.insertBefore(renderer.domElement, host.firstChild);
const scene = new THREE.Scene();
const spark = new SparkRenderer({renderer}); scene.add(spark);
const E = M.extent, up = new THREE.Vector3(...M.up).normalize();
const centre = new THREE.Vector3(...E.centre), size = E.size;
const camera = new THREE.PerspectiveCamera(45, host.clientWidth / host.clientHeight, size / 200, size * 50);
camera.up.copy(up);
const side = new THREE.Vector3(0.6, -1, 0); if (Math.abs(side.clone().normalize().dot(up)) > 0.9) side.set(0, 0.6, -1);
side.sub(up.clone().multiplyScalar(side.dot(up))).normalize();
camera.position.copy(centre).add(side.multiplyScalar(1.6 * size)).add(up.clone().multiplyScalar(0.35 * size));
const controls = new OrbitControls(camera, renderer.domElement); controls.target.copy(centre); controls.update();
const lo = M.lo, hi = M.hi, ls = M.log_scale;
const idx = groups.map(() => []);
for (let i = 0; i < n; i++) idx[cls[i]].push(i);
const st = {classColours:false, cut:0, hidden:new Set()};
const c3 = new THREE.Vector3(), s3 = new THREE.Vector3(), q4 = new THREE.Quaternion(), cc = new THREE.Color();
function fill(target, g, classMode, push){
  const cg = colours[g];
  for (let j = 0; j < idx[g].length; j++) {
    const i = idx[g][j];
    c3.set(lo[0] + pos[i] / 65535 * (hi[0] - lo[0]), lo[1] + pos[n + i] / 65535 * (hi[1] - lo[1]),
           lo[2] + pos[2 * n + i] / 65535 * (hi[2] - lo[2]));
    for (let k = 0; k < 3; k++) s3.setComponent(k, Math.exp(ls[0] + scl[k * n + i] / 255 * (ls[1] - ls[0])));
    q4.set(rot[n + i] / 127, rot[2 * n + i] / 127, rot[3 * n + i] / 127, rot[i] / 127).normalize();
    const a = opa[i] / 255;
    cc.setRGB(col[i] / 255, col[n + i] / 255, col[2 * n + i] / 255);
    if (classMode) { const l = 0.55 + 0.45 * (0.3 * cc.r + 0.59 * cc.g + 0.11 * cc.b); cc.copy(cg).multiplyScalar(l); }
    const alpha = a < st.cut ? 0 : a;
    if (push) target.pushSplat(c3, s3, q4, alpha, cc); else target.packedSplats.setSplat(j, c3, s3, q4, alpha, cc);
  }
}
const meshes = [];
for (let g = 0; g < groups.length; g++) for (const mode of [false, true]) {
  if (!idx[g].length) continue;
  const mesh = new SplatMesh({constructSplats: (splats) => fill(splats, g, mode, true)});
  mesh.userData = {g, mode}; mesh.visible = !mode; scene.add(mesh); meshes.push(mesh);
}
await Promise.all(meshes.map(m => m.initialized));
// overlay: stem line and numbered points, drawn over the splats
const ov = new THREE.Group(); ov.renderOrder = 10; scene.add(ov);
const labels = [];
if (M.overlay.line && M.overlay.line.length > 1) {
  const g = new THREE.BufferGeometry().setFromPoints(M.overlay.line.map(p => new THREE.Vector3(...p)));
  const l = new THREE.Line(g, new THREE.LineBasicMaterial({color:0xffee00, depthTest:false, transparent:true}));
  l.renderOrder = 10; ov.add(l);
}
for (const p of (M.overlay.points || [])) {
  const s = new THREE.Mesh(new THREE.SphereGeometry(size / 120, 12, 8),
                           new THREE.MeshBasicMaterial({color:0xff3030, depthTest:false, transparent:true}));
  s.position.set(...p.p); s.renderOrder = 11; ov.add(s);
  const d = document.createElement('div'); d.className = 's3v-lab'; d.textContent = p.label; host.appendChild(d);
  labels.push([d, s.position]);
}
function setOverlay(on){ ov.visible = on; for (const [d] of labels) d.style.display = on ? '' : 'none'; }
function refresh(){
  for (const m of meshes) m.visible = (m.userData.mode === st.classColours) && !st.hidden.has(m.userData.g);
}
// controls
const panel = document.getElementById('s3v-panel');
panel.querySelector('#s3v-colour').addEventListener('change', e => { st.classColours = e.target.checked; refresh(); });
panel.querySelector('#s3v-overlay').addEventListener('change', e => setOverlay(e.target.checked));
const box = panel.querySelector('#s3v-classes');
groups.forEach((name, g) => {
  const lab = document.createElement('label');
  lab.innerHTML = `<input type="checkbox" checked data-g="${g}"> <span style="color:${'#' + colours[g].getHexString()}">&#9632;</span> `;
  lab.appendChild(document.createTextNode(`${name} (${idx[g].length.toLocaleString()})`));
  lab.querySelector('input').addEventListener('change', e => { if (e.target.checked) st.hidden.delete(g); else st.hidden.add(g); refresh(); });
  box.appendChild(lab);
});
const cut = panel.querySelector('#s3v-cut'), cutv = panel.querySelector('#s3v-cutv');
cut.addEventListener('change', () => {
  st.cut = parseFloat(cut.value); cutv.textContent = st.cut.toFixed(2);
  for (const m of meshes) { fill(m, m.userData.g, m.userData.mode, false); m.packedSplats.needsUpdate = true; m.updateVersion && m.updateVersion(); }
});
const gl = renderer.getContext(), px = new Uint8Array(4 * 64 * 64);
function drawnSomething(){
  const w = renderer.domElement.width, h = renderer.domElement.height;
  gl.readPixels(Math.max(0, (w >> 1) - 32), Math.max(0, (h >> 1) - 32), 64, 64, gl.RGBA, gl.UNSIGNED_BYTE, px);
  for (let i = 0; i < px.length; i += 4) if (Math.abs(px[i] - 0x1b) + Math.abs(px[i + 1] - 0x1f) + Math.abs(px[i + 2] - 0x1b) > 24) return true;
  return false;
}
S.frames = 0;
S.set = {classColours: (v) => { panel.querySelector('#s3v-colour').checked = v; st.classColours = v; refresh(); },
         hide: (name, hidden) => { const g = groups.indexOf(name); const i = box.querySelector(`input[data-g="${g}"]`);
                                    i.checked = !hidden; if (hidden) st.hidden.add(g); else st.hidden.delete(g); refresh(); },
         overlay: (v) => { panel.querySelector('#s3v-overlay').checked = v; setOverlay(v); },
         cut: (v) => { cut.value = v; cut.dispatchEvent(new Event('change')); }};
S.project = (p) => { const v = new THREE.Vector3(...p).project(camera);
  return [(v.x + 1) / 2 * host.clientWidth, (1 - v.y) / 2 * host.clientHeight]; };
S.groups = groups; S.meshes = meshes;
S.zoom = (f) => { camera.position.sub(controls.target).multiplyScalar(1 / f).add(controls.target); controls.update(); };
renderer.setAnimationLoop(() => {
  controls.update();
  renderer.render(scene, camera);
  for (const [d, p] of labels) { const [x, y] = S.project([p.x, p.y, p.z]); d.style.left = (x + 6) + 'px'; d.style.top = (y - 14) + 'px'; }
  S.frames++;
  if (S.firstFrameMs === null && S.frames % 2 === 0 && drawnSomething()) {
    S.firstFrameMs = performance.now() - S.t0; S.ready = true;
    document.getElementById('s3v-msg').textContent += ` · first frame ${(S.firstFrameMs / 1000).toFixed(1)} s`;
  }
});
new ResizeObserver(() => { renderer.setSize(host.clientWidth, host.clientHeight, false);
  camera.aspect = host.clientWidth / host.clientHeight; camera.updateProjectionMatrix(); }).observe(host);
"""


def _json_script(id_: str, obj) -> str:
    text = json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{id_}">{text}</script>'


def viewer_section_html(run_dir: str | Path, *, max_gaussians: int | None = None,
                        lib_dir: Path | None = None) -> str:
    """The viewer block (panel, canvas host, fallback note, embedded model and libraries) for a run
    folder, or a note saying why there is none (no point_cloud.ply; library not fetched)."""
    from s3dgs.classes import class_color, run_class_table
    from s3dgs.gaussians.model import load_ply

    run = Path(run_dir)
    ply = run / "point_cloud.ply"
    if not ply.is_file():
        return '<p class="s3v-fallback">No interactive view: the run has no point_cloud.ply.</p>'
    lib = Path(lib_dir) if lib_dir is not None else viewer_lib_dir()
    if not viewer_lib_present(lib):
        return (f'<p class="s3v-fallback">No interactive view: the viewer library ({_pins()}) is not in {html.escape(str(lib))}. '
                "Fetch it with <code>make viewer-lib</code> (npm) and write the page again "
                "(<code>s3dgs view RUN</code>); the static pictures below are the view.</p>")
    try:
        cfg = json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        cfg = {}
    params, names = load_ply(ply)
    table = run_class_table(cfg if isinstance(cfg, dict) else {}, tuple(names) if names else None)
    classes = list(names) if names else []
    model = encode_gaussians(params, classes, max_gaussians=max_gaussians)
    try:
        phen = json.loads((run / "phenotypes.json").read_text())
    except (OSError, json.JSONDecodeError):
        phen = None
    up = phen.get("up") if isinstance(phen, dict) and phen.get("up") else [0.0, 0.0, 1.0]
    model["up"] = [float(x) for x in up]
    model["colours"] = ["#%02x%02x%02x" % tuple(class_color(c, table)) for c in classes]
    model["overlay"] = _overlay(phen)
    ov = model["overlay"]
    ex = model["extent"]
    note = (f"{model['n']:,} Gaussians" + (f" (a random {model['n']:,} of {model['subsampled_from']:,})"
                                           if model["subsampled_from"] else "")
            + " · colour: SH degree 0 only (view-dependent colour dropped), 8-16 bit quantised"
            + (f" · {ex['strays']:,} stray Gaussians outside the framed box" if ex["strays"] else "")
            + f" · drag to orbit, wheel to zoom, right-drag to pan · {_pins()} (MIT)")
    ov_label = (f'<label><input type="checkbox" id="s3v-overlay" checked> {html.escape(ov.get("line_label", ""))} '
                f'and {html.escape(ov.get("kind", ""))}</label>') if ov.get("line") or ov.get("points") else \
        '<label class="muted"><input type="checkbox" id="s3v-overlay" disabled> no phenotypes.json</label>'
    lic = lib / "spark.LICENSE", lib / "three.LICENSE"
    licences = "\n\n".join(f"{p.name.split('.')[0]}:\n{p.read_text()}" for p in lic)
    return (f'<div id="s3v-fallback" class="s3v-fallback" style="display:none"></div>'
            '<noscript><p class="s3v-fallback">The interactive view needs JavaScript; the static pictures of the '
            'report stay the view.</p></noscript>'
            '<div id="s3v"><div id="s3v-panel">'
            '<label><input type="checkbox" id="s3v-colour"> class colours</label>'
            f"{ov_label}"
            '<b>classes</b><div id="s3v-classes"></div>'
            '<b>opacity cut <span id="s3v-cutv">0.00</span></b>'
            '<input type="range" id="s3v-cut" min="0" max="1" step="0.05" value="0">'
            f'</div><div id="s3v-msg">{html.escape(note)}</div></div>'
            + _json_script("s3v-model", model) + _json_script("s3v-libs", _lib_b64(lib))
            + _json_script("s3v-modules", MODULES)
            + f'<script type="text/plain" id="s3v-main">{VIEWER_MODULE}</script>'
            + f"<script>{VIEWER_JS}</script>"
            + f"<!-- licences of the embedded libraries\n{html.escape(licences).replace('--', '- -')}\n-->")


def build_view_html(run_dir: str | Path, *, max_gaussians: int | None = None, lib_dir: Path | None = None) -> str:
    """RUN/view.html as a string: the viewer alone, full page."""
    run = Path(run_dir)
    body = viewer_section_html(run, max_gaussians=max_gaussians, lib_dir=lib_dir)
    css = VIEWER_CSS.replace("height:560px", "height:100vh")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>s3dgs view: {html.escape(run.resolve().name)}</title>"
            f"<style>body{{margin:0;background:#1b1f1b;font-family:system-ui,sans-serif}}{css}</style></head>"
            f"<body>{body}</body></html>\n")


def write_view(run_dir: str | Path, *, max_gaussians: int | None = None, lib_dir: Path | None = None) -> Path:
    """Write RUN/view.html (atomic, under the run's lock) and return its path."""
    from s3dgs.atomic import atomic_write_text
    from s3dgs.runlock import run_lock

    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"{run}: run folder does not exist; give a folder written by `s3dgs train` or `s3dgs run`")
    if not (run / "point_cloud.ply").is_file():
        raise UsageError(f"{run}: no point_cloud.ply in the run folder; train it first (`s3dgs train SCENE --out {run}`)")
    with run_lock(run, "the viewer", create=False):
        return atomic_write_text(run / "view.html", build_view_html(run, max_gaussians=max_gaussians, lib_dir=lib_dir))


@dataclass
class ViewConfig:
    """Write RUN/view.html (the interactive splat view of the run) and open it in the browser."""

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (holds point_cloud.ply)."""
    no_open: tyro.conf.FlagCreatePairsOff[bool] = False
    """Write the page without opening it."""
    max_gaussians: Annotated[int | None, opt("INT", "all")] = None
    """Embed at most this many Gaussians (a random subset)."""
    fetch: bool = True
    """Fetch the viewer library with npm when it is not in the cache yet."""

    def validate(self) -> None:
        if self.max_gaussians is not None and self.max_gaussians < 1:
            raise UsageError(f"--max-gaussians must be at least 1 (got {self.max_gaussians})")


def view_main(cfg: ViewConfig) -> int:
    if cfg.fetch and not viewer_lib_present():
        try:
            fetch_viewer_lib()
        except S3dgsError as exc:
            print(f"s3dgs view: {exc}; writing the page without the interactive view")
    path = write_view(cfg.run, max_gaussians=cfg.max_gaussians)
    size = path.stat().st_size / 1e6
    print(f"{path} ({size:.1f} MB)" + ("" if viewer_lib_present() else " - without the library: static note only"))
    if not cfg.no_open:
        webbrowser.open(path.resolve().as_uri())
    return 0


def _fetch_cli(argv: list[str]) -> int:
    """``python -m s3dgs.viewer fetch``: fetch the library (`make viewer-lib`); without npm or the
    registry it says so and exits 0, so `make demo` / `make test` go on (the report then falls back
    to its static pictures and the browser tests skip)."""
    if argv != ["fetch"]:
        print("usage: python -m s3dgs.viewer fetch", file=__import__("sys").stderr)
        return 2
    try:
        fetch_viewer_lib(quiet=True)
    except S3dgsError as exc:
        print(f"viewer library not fetched: {exc}")
        return 0
    print(f"viewer library: {_pins()} in {viewer_lib_dir()}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_fetch_cli(sys.argv[1:]))
