"""The browser page of ``nnseg serve``, driven by Playwright in the system's Chromium against a real server.

A real ``nnseg serve`` (uvicorn subprocess on 127.0.0.1, free port, token, 1 MiB upload limit) serves nnU-Net's golden
Hippocampus model (fold 0, fp32, no TTA). Playwright (PyPI) launches Debian's ``/usr/bin/chromium`` (no browser
download; WebGL through SwiftShader). Checked: the login (wrong token refused with a message), an upload predicted and
shown (overlay pixels in the label colours, and a click on them lands on a voxel of that label in
``nnUNetv2_predict``'s result), volumes per label, visibility, the downloaded prediction equal to
``nnUNetv2_predict``'s, brush / eraser / undo and the corrected mask, the DICOM zip path (NIfTI and DICOM SEG equal to
``nnseg predict`` on the series), readable messages for a wrong file, an unreadable file and an oversized one, the
models view with the training report, no request to any other host, no CSP violation, and the page weight.

Screenshots of every state go to ``$NNSEG_PAGE_SCREENSHOTS`` when set, else to the test's temporary folder (printed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_synth import write_series
from golden_model import IMAGES, install_golden_model
from PIL import Image
from test_serve import AUTH, NAME, TOKEN, _start

from nnseg.cli.main import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    import playwright.sync_api as pw
except ImportError:  # pragma: no cover - the test extra installs it
    pw = None  # type: ignore[assignment]

pytestmark = [pytest.mark.golden, pytest.mark.slow,
              pytest.mark.skipif((CHROMIUM is None or pw is None) and os.environ.get("CI") != "true",
                                 reason="needs the chromium program (apt-get install chromium) and playwright "
                                        "(pip install playwright)")]
ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "src" / "nnseg" / "serve" / "page" / "static"
CASE = "hippocampus_020"
RED, GREEN = (255, 0, 0), (0, 255, 0)  # the page's colours of Anterior (1) and Posterior (2): ITK-SNAP's defaults
LAUNCH_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
               "--disable-background-networking", "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module", autouse=True)
def _components_present_in_ci() -> None:
    if CHROMIUM is None or pw is None:  # only reached in CI (elsewhere the module skips): a failure there
        pytest.fail("chromium or playwright is missing in CI (.ci/run installs chromium, the test extra playwright)")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("NNSEG_PAGE_SCREENSHOTS") or tmp_path_factory.mktemp("page_screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the page: {folder}")
    return folder


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model, ``nnUNetv2_predict``'s result for the case (fp32 like the server: this CPU's default is bf16), and the
    case as a zipped CT series with ``nnseg predict``'s result for it."""
    root = tmp_path_factory.mktemp("serve_page")
    model = install_golden_model(root / "results")
    (root / "in").mkdir()
    (root / "in" / f"{CASE}_0000.nii.gz").symlink_to(IMAGES / f"{CASE}.nii.gz")
    env = {**os.environ, "nnUNet_results": str(root / "results"), "nnUNet_raw": str(root / "raw"),
           "nnUNet_preprocessed": str(root / "pre")}
    script = Path(sys.executable).parent / "nnUNetv2_predict"
    subprocess.run([str(script), "-i", str(root / "in"), "-o", str(root / "ref"), "-d", "4", "-tr",
                    "nnUNetTrainer_bench", "-c", "3d_fullres_bs2", "-f", "0", "--disable_tta", "-device", "cpu",
                    "--precision", "fp32", "--disable_progress_bar"], env=env, check=True, timeout=600)
    image = sitk.ReadImage(str(IMAGES / f"{CASE}.nii.gz"))
    write_series(sitk.GetArrayFromImage(image), root / "dicom" / "series", modality="CT", slope=0.125,
                 spacing=image.GetSpacing(), origin=image.GetOrigin(), direction=image.GetDirection())
    assert main(["predict-from-modelfolder", "-i", str(root / "dicom"), "-o", str(root / "dicom_ref"), "-m", str(model),
                 "-f", "0", "-device", "cpu", "--precision", "fp32", "--disable_tta", "--disable_progress_bar",
                 "-npp", "0", "-nps", "0"]) == 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((root / "dicom").rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(root / "dicom").as_posix())
    (root / "series.zip").write_bytes(buffer.getvalue())
    (dicom_ref,) = (root / "dicom_ref").glob("*.nii.gz")
    return {"root": root, "model": model, "ref": root / "ref" / f"{CASE}.nii.gz", "zip": root / "series.zip",
            "dicom_ref": dicom_ref, "dicom_files": sorted((root / "dicom").rglob("IM*"))}


@pytest.fixture(scope="module")
def server(golden: dict[str, Any]) -> Iterator[str]:
    tmp = golden["root"] / "server_tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "NNSEG_SERVE_TOKEN": TOKEN, "OMP_NUM_THREADS": "2"}
    proc, url, _ = _start(["--models", str(golden["model"]), "--port", "0", "-f", "0", "-device", "cpu", "--precision",
                           "fp32", "--disable_tta", "--max_upload_mb", "1", "--log_level", "warning"], env)
    yield url
    proc.terminate()
    proc.wait(timeout=60)
    proc.stdout.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with pw.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


class Watch:
    """A page that records requests to other hosts (and refuses them) and CSP violations."""

    def __init__(self, browser: Any, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
        self.page = self.context.new_page()
        self.foreign: list[str] = []
        self.problems: list[str] = []
        self.context.route("**/*", self._route)
        self.page.on("console", lambda m: self.problems.append(m.text) if "Content Security Policy" in m.text else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.url = url

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(self.url + "/") or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def open(self, token: str | None = TOKEN) -> Any:
        self.page.goto(self.url + "/")
        if token is not None:
            self.page.fill("#token", token)
            self.page.click("#login-button")
        return self.page

    def close(self) -> None:
        assert self.foreign == [], f"the page requested other hosts: {self.foreign}"
        assert self.problems == [], self.problems
        self.context.close()


@pytest.fixture
def watch(browser: Any, server: str) -> Iterator[Watch]:
    w = Watch(browser, server)
    yield w
    w.close()


def _pixels(page: Any, path: Path) -> np.ndarray:
    page.locator("#viewer").screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _mask(rgb: np.ndarray, color: tuple[int, int, int], tolerance: int = 60) -> np.ndarray:
    return np.all(np.abs(rgb - np.array(color)) < tolerance, axis=-1)


def _dominant(rgb: np.ndarray, channel: int, margin: int = 60) -> np.ndarray:
    """Pixels where one colour channel exceeds both others by ``margin`` (the 3D view shades the label colours)."""
    others = np.delete(rgb, channel, axis=-1)
    return np.all(rgb[..., channel:channel + 1] > others + margin, axis=-1)


def _segment(page: Any, *, channel_file: Path | None = None, dicom: Path | None = None) -> None:
    page.wait_for_selector("#app:not([hidden])")
    if dicom is not None:
        page.wait_for_selector("#dicom-row:not([hidden])")
        page.set_input_files("#dicom-file", str(dicom))
    else:
        page.set_input_files("#channel-0", str(channel_file))
    page.click("#run")


def _wait_result(page: Any) -> float:
    try:
        page.wait_for_selector("#timing[data-ms], #message.error", timeout=300_000)
    except pw.TimeoutError:
        pytest.fail(f"no result: phase {page.text_content('#phase')!r}, message {page.text_content('#message')!r}, "
                    f"placeholder hidden: {page.is_hidden('#placeholder')}")
    assert page.is_hidden("#message.error"), page.text_content("#message")
    seconds = float(page.get_attribute("#timing", "data-ms")) / 1000
    print(f"\nfirst view of the result: {seconds:.2f} s after the page saw the prediction end "
          f"({page.get_attribute('#timing', 'data-since-finished')} s after the server ended it)")
    return seconds


def _download(page: Any, button: str, target: Path) -> Path:
    with page.expect_download() as info:
        page.click(button)
    info.value.save_as(str(target))
    return target


def _labels(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def _same(path: Path, ref: Path) -> None:
    (got, image), (want, ref_image) = _labels(path), _labels(ref)
    np.testing.assert_array_equal(got, want)
    assert np.allclose(image.GetSpacing(), ref_image.GetSpacing()) and np.allclose(image.GetOrigin(), ref_image.GetOrigin())
    assert np.allclose(image.GetDirection(), ref_image.GetDirection())


def _click_on(page: Any, mask: np.ndarray) -> tuple[tuple[int, int, int], int]:
    """Click the pixel of ``mask`` nearest its centroid; the voxel (i, j, k) and label the page reports there."""
    ys, xs = np.nonzero(mask)
    pick = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    page.evaluate("() => { delete document.querySelector('#location').dataset.voxel; }")
    page.locator("#viewer").click(position={"x": int(xs[pick]), "y": int(ys[pick])})
    page.wait_for_selector("#location[data-voxel]")
    voxel = tuple(int(v) for v in page.get_attribute("#location", "data-voxel").split(","))
    return voxel, int(page.get_attribute("#location", "data-label"))  # type: ignore[return-value]


def _volumes(page: Any) -> dict[int, str]:
    return {v: page.text_content(f'[data-volume="{v}"]').strip() for v in (1, 2)}


def _stroke(page: Any, start: tuple[int, int], end: tuple[int, int]) -> None:
    box = page.locator("#viewer").bounding_box()
    page.mouse.move(box["x"] + start[0], box["y"] + start[1])
    page.mouse.down()
    for t in np.linspace(0, 1, 12):
        page.mouse.move(box["x"] + start[0] + t * (end[0] - start[0]), box["y"] + start[1] + t * (end[1] - start[1]))
    page.mouse.up()


def test_assets_are_small_built_from_the_sources_and_served_with_a_csp(server: str) -> None:
    sizes = {p.name: p.stat().st_size for p in STATIC.iterdir() if p.is_file()}
    total = sum(sizes.values())
    print(f"\nbuilt page assets: {total / 1e6:.2f} MB {sizes}")
    assert {"index.html", "app.js", "style.css"} <= set(sizes) and total < 3_000_000
    digest = hashlib.sha256()
    for file in ["package-lock.json", *(f"src/{f}" for f in sorted(os.listdir(ROOT / "web" / "src")))]:
        digest.update(file.encode() + b"\0")
        digest.update((ROOT / "web" / file).read_bytes())
    info = json.loads((STATIC / "build-info.json").read_text())
    assert info["sources_sha256"] == digest.hexdigest(), "the committed page is older than web/src: ./dev.sh web"
    page = httpx.get(f"{server}/")  # the page and its assets need no token; they hold no data
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert httpx.get(f"{server}/static/app.js").headers["content-type"].startswith("text/javascript")
    # only the built files, by exact name: anything else is not public (401) and not found even with the token
    assert httpx.get(f"{server}/static/..%2Fapi.py").status_code == 401
    assert httpx.get(f"{server}/static/..%2Fapi.py", headers=AUTH).status_code == 404
    assert httpx.get(f"{server}/v1/models/{NAME}/display").status_code == 401


def test_wrong_token_shows_a_message(watch: Watch, shots: Path) -> None:
    page = watch.open(token=None)
    page.wait_for_selector("#login:not([hidden])")
    page.screenshot(path=str(shots / "01_login.png"))
    page.fill("#token", "wrong-token-0123456789abcdef")
    page.click("#login-button")
    page.wait_for_selector("#login-error:has-text('Wrong token')")  # (no wait_for_function: the CSP forbids eval)
    assert page.is_hidden("#app")
    page.screenshot(path=str(shots / "02_wrong_token.png"))
    assert "wrong-token" not in page.url and page.input_value("#token") == ""  # never in the URL, not kept in the field


def test_segment_look_correct_and_download(watch: Watch, golden: dict[str, Any], shots: Path, tmp_path: Path) -> None:
    page = watch.open()
    _segment(page, channel_file=IMAGES / f"{CASE}.nii.gz")
    page.wait_for_selector("#phase:has-text('%')", timeout=120_000)
    page.screenshot(path=str(shots / "03_progress.png"))
    _wait_result(page)
    page.screenshot(path=str(shots / "04_result_multiplanar.png"))
    ref, ref_image = _labels(golden["ref"])
    # the prediction as nnUNetv2_predict writes it
    _same(_download(page, "#dl-nifti", tmp_path / "prediction.nii.gz"), golden["ref"])
    # volumes per label in mL
    voxel_ml = float(np.prod(ref_image.GetSpacing())) / 1000
    assert _volumes(page) == {v: f"{(ref == v).sum() * voxel_ml:.3f}" for v in (1, 2)}
    # overlay pixels in the label colours, and a click on them lands on a voxel of that label
    page.fill("#opacity", "1")
    page.dispatch_event("#opacity", "input")
    page.select_option("#layout", "axial")
    for value, color in ((1, RED), (2, GREEN)):
        page.evaluate("() => { delete document.querySelector('#location').dataset.voxel; }")
        page.click(f'button[data-goto="{value}"]')  # the crosshair (and the axial slice) moves into the label
        page.wait_for_selector("#location[data-voxel]")
        assert page.get_attribute("#location", "data-label") == str(value)
        mask = _mask(_pixels(page, shots / f"05_axial_label_{value}.png"), color)
        assert mask.sum() > 50, f"no overlay pixels in the colour of label {value}"
        (i, j, k), label = _click_on(page, mask)
        assert label == value and ref[k, j, i] == value, ((i, j, k), label, ref[k, j, i])
    page.screenshot(path=str(shots / "06_location.png"))
    # per-label visibility
    page.click('button[data-goto="1"]')
    page.uncheck('input[data-label="1"]')
    assert _mask(_pixels(page, shots / "07_anterior_hidden.png"), RED).sum() == 0
    page.check('input[data-label="1"]')
    assert _mask(_pixels(page, tmp_path / "shown.png"), RED).sum() > 50
    _correct(page, ref, shots, tmp_path)
    page.select_option("#layout", "render")
    rgb = _pixels(page, shots / "10_render_3d.png")
    assert _dominant(rgb, 0).sum() > 500 and _dominant(rgb, 1).sum() > 500  # shaded, so by hue


def _correct(page: Any, ref: np.ndarray, shots: Path, tmp_path: Path) -> None:
    """Brush adds voxels of the selected label, undo takes them back, eraser removes voxels; the download has them."""
    before = _volumes(page)
    rgb = _pixels(page, shots / "08a_before_edit.png")
    ys, xs = np.nonzero(_mask(rgb, RED))
    centre, below = (int(xs.mean()), int(ys.mean())), (int(xs.mean()), int(ys.max()) + 80)  # into the background
    page.click('button[data-tool="brush"]')
    page.select_option("#pen-label", "1")
    _stroke(page, centre, below)
    grown = _volumes(page)
    assert float(grown[1]) > float(before[1]) and float(grown[2]) <= float(before[2])
    page.click("#undo")
    assert _volumes(page) == before
    _stroke(page, centre, below)
    page.screenshot(path=str(shots / "08_brush.png"))
    page.click('button[data-goto="2"]')
    ys, xs = np.nonzero(_mask(_pixels(page, tmp_path / "g.png"), GREEN))
    page.click('button[data-tool="eraser"]')
    _stroke(page, (int(xs.mean()) - 20, int(ys.mean())), (int(xs.mean()) + 20, int(ys.mean())))
    after = _volumes(page)
    assert float(after[2]) < float(before[2]) and float(after[1]) > float(before[1])
    page.screenshot(path=str(shots / "09_eraser.png"))
    page.click('button[data-tool="view"]')
    corrected, _ = _labels(_download(page, "#dl-corrected", tmp_path / "corrected.nii.gz"))
    assert corrected.shape == ref.shape
    changed = corrected != ref
    assert changed.any() and set(np.unique(corrected[changed]).tolist()) <= {0, 1}
    assert np.all(corrected[changed & (corrected == 0)] == 0) and np.all(ref[changed & (corrected == 0)] == 2)
    ml = float(np.prod(sitk.ReadImage(str(tmp_path / "corrected.nii.gz")).GetSpacing())) / 1000
    assert {v: f"{(corrected == v).sum() * ml:.3f}" for v in (1, 2)} == after


def test_dicom_zip(watch: Watch, golden: dict[str, Any], shots: Path, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    page = watch.open()
    _segment(page, dicom=golden["zip"])
    _wait_result(page)
    page.screenshot(path=str(shots / "11_dicom_result.png"))
    _same(_download(page, "#dl-nifti", tmp_path / "dicom_prediction.nii.gz"), golden["dicom_ref"])
    assert page.is_visible("#dl-seg")
    seg_file = _download(page, "#dl-seg", tmp_path / "prediction.dcm")
    seg = hd.seg.segread(str(seg_file))
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in golden["dicom_files"]]
    uids = [s.SOPInstanceUID for s in sources]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    np.testing.assert_array_equal(labels, _labels(golden["dicom_ref"])[0])
    # a corrected mask as DICOM SEG: the same voxels as the corrected NIfTI, on the series' slices
    page.click('button[data-goto="1"]')
    ys, xs = np.nonzero(_mask(_pixels(page, tmp_path / "d.png"), RED, 100))
    page.click('button[data-tool="brush"]')
    _stroke(page, (int(xs.mean()), int(ys.mean())), (int(xs.mean()), int(ys.max()) + 80))
    page.click('button[data-tool="view"]')
    corrected, _ = _labels(_download(page, "#dl-corrected", tmp_path / "corrected.nii.gz"))
    assert (corrected != labels).any()
    seg = hd.seg.segread(str(_download(page, "#dl-corrected-seg", tmp_path / "corrected.dcm")))
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                                                    combine_segments=True), corrected)
    page.screenshot(path=str(shots / "11b_dicom_corrected.png"))


def test_wrong_unreadable_and_oversized_files_show_messages(watch: Watch, shots: Path, tmp_path: Path) -> None:
    page = watch.open()
    page.wait_for_selector("#app:not([hidden])")
    cases = [("scan.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100, "is not a NIfTI (.nii.gz), NRRD (.nrrd) or MHA", "12_wrong_file"),
             ("broken.nii.gz", b"this is not an image" * 10, "could not be read", "13_unreadable_file"),
             ("huge.nii.gz", os.urandom((1 << 20) + 4096), "The upload is too large", "14_oversized")]
    for name, data, expected, shot in cases:
        (tmp_path / name).write_bytes(data)
        page.set_input_files("#channel-0", str(tmp_path / name))
        page.click("#run")
        page.wait_for_selector(f"#message.error:has-text('{expected}')", timeout=120_000)
        page.screenshot(path=str(shots / f"{shot}.png"))
        assert page.is_enabled("#run")


def test_models_view_shows_the_training_report(watch: Watch, shots: Path) -> None:
    page = watch.open()
    page.wait_for_selector("#app:not([hidden])")
    page.click("#tab-models")
    page.wait_for_selector(f"h2:has-text('{NAME}')")
    page.click("text=Show training report")
    frame = page.wait_for_selector("iframe.report", timeout=120_000).content_frame()
    frame.wait_for_selector("h2:has-text('fold_0')")
    assert frame.locator("img.progress").count() == 1 and frame.locator("table.dice tbody tr").count() == 40
    page.screenshot(path=str(shots / "15_models_report.png"))


def test_nrrd_and_mha_uploads_are_shown(watch: Watch, golden: dict[str, Any], shots: Path, tmp_path: Path) -> None:
    ref, ref_image = _labels(golden["ref"])
    voxel_ml = float(np.prod(ref_image.GetSpacing())) / 1000
    page = watch.open()
    for ending in (".nrrd", ".mha"):
        scan = tmp_path / f"{CASE}{ending}"
        sitk.WriteImage(sitk.ReadImage(str(IMAGES / f"{CASE}.nii.gz")), str(scan))
        page.evaluate("() => { delete document.querySelector('#timing').dataset.ms; }")
        _segment(page, channel_file=scan)
        _wait_result(page)
        assert _volumes(page) == {v: f"{(ref == v).sum() * voxel_ml:.3f}" for v in (1, 2)}
        np.testing.assert_array_equal(_labels(_download(page, "#dl-nifti", tmp_path / f"p{ending}.nii.gz"))[0], ref)
        page.click('button[data-goto="2"]')
        assert page.get_attribute("#location", "data-label") == "2"
        page.screenshot(path=str(shots / f"16_upload{ending.replace('.', '_')}.png"))


def test_cancel_a_waiting_job(watch: Watch, server: str, shots: Path, tmp_path: Path) -> None:
    """Two large jobs sent through the API keep the one worker busy (each takes many seconds on any CPU: Hippocampus
    cases are done within the time the page needs to show its queue phase on a quiet machine); the page's job waits,
    and Cancel cancels it."""
    volume = np.zeros((200, 200, 200), dtype=np.int16)
    volume[40:160, 40:160, 40:160] = 100
    big = tmp_path / "big.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(big), useCompression=True)
    with httpx.Client(base_url=server, headers=AUTH, timeout=120) as client:
        ahead = [client.post(f"/v1/models/{NAME}/jobs", files={"file": ("big.nii.gz", big.read_bytes())}).json()["id"]
                 for _ in range(2)]
        page = watch.open()
        _segment(page, channel_file=IMAGES / f"{CASE}.nii.gz")
        page.wait_for_selector("#phase:has-text('queue')", timeout=60_000)
        page.click("#cancel")
        page.wait_for_selector("#message:has-text('Cancelled.')", timeout=60_000)
        page.screenshot(path=str(shots / "17_cancelled.png"))
        assert page.is_enabled("#run") and page.is_hidden("#cancel")
        for job_id in ahead:
            client.delete(f"/v1/jobs/{job_id}")
