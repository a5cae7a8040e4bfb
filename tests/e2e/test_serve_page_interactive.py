"""The browser page's prompt tools with an interactive model served beside the golden Hippocampus model.

One real ``nnseg serve --models GOLDEN --interactive FOLDER`` (uvicorn subprocess, 127.0.0.1, free port, token, two
interactive sessions: the page's and the client's), Playwright in Debian's Chromium (see test_serve_page.py). The page
segments a case, then a click with the "point+" tool refines label 1 through the session API; the corrected mask it
downloads equals the prediction with label 1 replaced by the target buffer that the unmodified
``nninteractive-client`` gets from the same server for the same image, initial mask and point. Undo restores the
prediction (and undoes on the server: the same click again is the client's undo and point), and a "box+" drag on the
axial view is the client's 2D box on that slice. "Correct with clicks" seeds the interactive model with the selected
label of the automatic result; one click then refines it exactly as the in-process InteractiveSession does with the
same seed and click, and as ``nnseg refine`` does on the downloaded prediction.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from golden_model import IMAGES, install_golden_model
from interactive_model import write_model_folder
from test_serve import TOKEN, _start
from nnseg.interactive import InteractiveSession, load_interactive_model
from nnseg.interactive.refine import LabelPrompts, Prompt, RefineRequest, run_refinement
from test_serve_page import (CASE, Watch, _download, _segment, _stroke, _wait_result, browser,  # noqa: F401
                             pytestmark, shots)

remote = pytest.importorskip("nnInteractive.inference.remote", reason="nninteractive-client is not installed")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("serve_page_interactive")
    model = install_golden_model(root / "results")
    folder = write_model_folder(root / "interactive")
    (root / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(root / "tmp"), "NNSEG_SERVE_TOKEN": TOKEN, "OMP_NUM_THREADS": "2"}
    proc, url, _ = _start(["--models", str(model), "--interactive", str(folder), "--interactive_max_sessions", "2",
                           "--port", "0", "-f", "0", "-device", "cpu", "--precision", "fp32", "--disable_tta",
                           "--log_level", "warning"], env)
    yield url
    proc.terminate()
    proc.wait(timeout=60)
    proc.stdout.close()  # type: ignore[union-attr]


def _array(path: Path) -> np.ndarray:
    """A label map as nibabel indexes it, (i, j, k) of the file: the grid the prompts' coordinates refer to."""
    return np.asarray(nib.load(str(path)).dataobj).astype(np.uint8)


def _client_refines(url: str, scan: Path, prediction: np.ndarray, steps: list[tuple[str, Any]]) -> np.ndarray:
    """What nninteractive-client gets: image, label 1 of the prediction as initial mask, then ``steps`` (``("point",
    voxel)``, ``("box", box)``: positive; ``("undo", None)``); the prediction with label 1 replaced by the result."""
    image = np.asarray(nib.load(str(scan)).get_fdata(), dtype=np.float32)[None]
    client = remote.nnInteractiveRemoteInferenceSession(url, api_key=TOKEN)
    try:
        client.set_image(image)
        target = np.zeros(image.shape[1:], np.uint8)
        client.set_target_buffer(target)
        client.add_initial_seg_interaction((prediction == 1).astype(np.uint8), run_prediction=False)
        for op, where in steps:
            if op == "point":
                client.add_point_interaction(where, include_interaction=True)
            elif op == "box":
                client.add_bbox_interaction(where, include_interaction=True)
            else:
                client.undo()
        return np.where(target == 1, 1, np.where(prediction == 1, 0, prediction))
    finally:
        client.close()


def _prompt(page: Any, act: Any) -> dict[str, Any]:
    """Run ``act`` (a click or drag on the view with a prompt tool) and wait for the answer to be pasted."""
    done = int(page.get_attribute("#tools", "data-prompts") or 0)
    act()
    page.wait_for_selector(f'#tools[data-prompts="{done + 1}"]', timeout=120_000)
    assert page.is_hidden("#message.error"), page.text_content("#message")
    return json.loads(page.get_attribute("#tools", "data-last-prompt"))


def _click_point(page: Any, at: tuple[int, int]) -> tuple[int, int, int]:
    sent = _prompt(page, lambda: page.locator("#viewer").click(position={"x": at[0], "y": at[1]}))
    voxel = tuple(int(v) for v in page.get_attribute("#location", "data-voxel").split(","))  # set on mouse down
    assert sent == {"kind": "point", "where": list(voxel), "positive": True}
    return voxel  # type: ignore[return-value]


def _scan(orientation: str, folder: Path) -> Path:
    """The case as stored (RAS) or with its i and j axes pointing left and back (LPS): NiiVue then shows and draws on a
    grid flipped against the file's, which the page must map back to the file's voxels."""
    if orientation == "RAS":
        return IMAGES / f"{CASE}.nii.gz"
    image = nib.load(str(IMAGES / f"{CASE}.nii.gz"))
    affine = image.affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
    path = folder / f"{CASE}_lps.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), str(path))
    return path


# a client refused at capacity leaks its HTTP connection (see test_serve_interactive.py)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning")
@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_a_click_refines_the_label_as_the_client_does_and_undo_restores(browser: Any, served: str, shots: Path,  # noqa: F811
                                                                        tmp_path: Path, orientation: str) -> None:
    watch = Watch(browser, served)
    page = watch.open()
    scan = _scan(orientation, tmp_path)
    _segment(page, channel_file=scan)
    _wait_result(page)
    prediction = _array(_download(page, "#dl-nifti", tmp_path / "prediction.nii.gz"))
    page.wait_for_selector("#tools[data-interactive] button[data-tool='point+']")
    assert page.is_visible("button[data-tool='box+']") and page.is_visible("button[data-tool='point-']")
    page.select_option("#layout", "axial")
    page.click('button[data-goto="1"]')  # the axial slice through label 1
    page.select_option("#pen-label", "1")
    page.click("button[data-tool='point+']")
    box = page.locator("#viewer").bounding_box()
    at = (int(box["width"] * 0.5), int(box["height"] * 0.5))
    voxel = _click_point(page, at)
    page.screenshot(path=str(shots / f"20_interactive_point_{orientation}.png"))
    corrected = _array(_download(page, "#dl-corrected", tmp_path / "corrected.nii.gz"))

    expected = _client_refines(served, scan, prediction, [("point", voxel)])
    assert not np.array_equal(expected, prediction), "the point changed nothing; pick another voxel"
    np.testing.assert_array_equal(corrected, expected)
    print(f"\npoint at voxel {voxel}: {(corrected != prediction).sum()} voxels changed, as nninteractive-client's")

    page.click("#undo")
    page.wait_for_selector('#undo[data-done="1"]')
    np.testing.assert_array_equal(_array(_download(page, "#dl-corrected", tmp_path / "undone.nii.gz")), prediction)
    page.screenshot(path=str(shots / f"21_interactive_undo_{orientation}.png"))
    # the server undid the prompt too: the same click again is the client's undo + the same point
    assert _click_point(page, at) == voxel
    steps = [("point", voxel), ("undo", None), ("point", voxel)]
    again = _array(_download(page, "#dl-corrected", tmp_path / "again.nii.gz"))
    np.testing.assert_array_equal(again, _client_refines(served, scan, prediction, steps))

    # a box dragged on the axial view: a 2D box on that slice, as the client's add_bbox_interaction
    page.click("button[data-tool='box+']")
    corners = [(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy) for fx, fy in ((0.3, 0.3), (0.62, 0.7))]

    def drag() -> None:
        page.mouse.move(*corners[0])
        page.mouse.down()
        for t in np.linspace(0, 1, 8):
            page.mouse.move(*(a + t * (b - a) for a, b in zip(*corners)))
        page.mouse.up()

    sent = _prompt(page, drag)
    bbox = sent["where"]
    assert sent["kind"] == "box" and bbox[2] == [voxel[2], voxel[2] + 1] and all(hi - lo > 3 for lo, hi in bbox[:2])
    page.screenshot(path=str(shots / f"22_interactive_box_{orientation}.png"))
    boxed = _array(_download(page, "#dl-corrected", tmp_path / "box.nii.gz"))
    np.testing.assert_array_equal(boxed, _client_refines(served, scan, prediction, [*steps, ("box", bbox)]))
    print(f"box {bbox}: {(boxed != again).sum()} voxels changed, as nninteractive-client's")

    # a brush stroke (a local edit) makes the page send the label's mask again (prompts start afresh) before a prompt
    page.click("button[data-tool='brush']")
    _stroke(page, (int(box["width"] * 0.2), int(box["height"] * 0.8)), (int(box["width"] * 0.8), int(box["height"] * 0.8)))
    brushed = _array(_download(page, "#dl-corrected", tmp_path / "brushed.nii.gz"))
    assert (brushed != boxed).sum() > 10
    page.click("button[data-tool='point+']")
    voxel = _click_point(page, (int(box["width"] * 0.4), int(box["height"] * 0.6)))
    refined = _array(_download(page, "#dl-corrected", tmp_path / "refined.nii.gz"))
    np.testing.assert_array_equal(refined, _client_refines(served, scan, brushed, [("point", voxel)]))
    page.goto("about:blank")  # leaving the page releases its session: both slots are free again
    _both_slots_free(served)
    watch.close()


def _both_slots_free(url: str) -> None:
    for _ in range(40):
        clients = []
        try:
            for _ in range(2):
                clients.append(remote.nnInteractiveRemoteInferenceSession(url, api_key=TOKEN))
            return
        except remote.ServerAtCapacityError:
            time.sleep(0.25)
        finally:
            for c in clients:
                c.close()
    pytest.fail("the page kept its interactive session after it was left")


def test_correct_with_clicks_seeds_the_label_and_a_click_refines_it_as_the_session(browser: Any, served: str,  # noqa: F811
                                                                                  shots: Path, tmp_path: Path) -> None:
    watch = Watch(browser, served)
    page = watch.open()
    scan = IMAGES / f"{CASE}.nii.gz"
    _segment(page, channel_file=scan)
    _wait_result(page)
    prediction_file = _download(page, "#dl-nifti", tmp_path / "prediction.nii.gz")
    prediction = _array(prediction_file)
    page.wait_for_selector("#seed:not([hidden])")
    page.select_option("#layout", "axial")
    page.click('button[data-goto="2"]')  # the axial slice through label 2
    page.select_option("#pen-label", "2")
    page.click("#seed")
    page.wait_for_selector('#seed[data-seeded="2"]', timeout=120_000)
    assert page.is_hidden("#message.error"), page.text_content("#message")
    assert page.get_attribute("button.tool.active", "data-tool") == "point+"  # ready for clicks
    np.testing.assert_array_equal(_array(_download(page, "#dl-corrected", tmp_path / "seeded.nii.gz")), prediction)
    page.screenshot(path=str(shots / "23_interactive_seeded.png"))
    box = page.locator("#viewer").bounding_box()
    voxel = _click_point(page, (int(box["width"] * 0.5), int(box["height"] * 0.5)))
    corrected = _array(_download(page, "#dl-corrected", tmp_path / "corrected.nii.gz"))
    page.screenshot(path=str(shots / "24_interactive_seeded_click.png"))

    session = InteractiveSession(load_interactive_model(write_model_folder(tmp_path / "model")), precision="fp32")
    session.set_image(np.asarray(nib.load(str(scan)).get_fdata(), dtype=np.float32)[None])
    target = np.zeros(prediction.shape, np.uint8)
    session.set_target_buffer(target)
    session.add_initial_seg_interaction((prediction == 2).astype(np.uint8), run_prediction=False)
    session.add_point_interaction(voxel, include_interaction=True)
    expected = np.where(target == 1, 2, np.where(prediction == 2, 0, prediction))
    assert not np.array_equal(expected, prediction), "the click changed nothing; pick another voxel"
    np.testing.assert_array_equal(corrected, expected)
    run_refinement(RefineRequest(image=[scan], interactive_model=tmp_path / "model", output=tmp_path / "cli.nii.gz",
                                 segmentation=prediction_file, precision="fp32",
                                 labels=[LabelPrompts(2, (Prompt("point", points=(voxel,)),))]))
    np.testing.assert_array_equal(_array(tmp_path / "cli.nii.gz"), expected)  # nnseg refine gives the same mask
    print(f"\nseeded label 2, click at {voxel}: {(corrected != prediction).sum()} voxels changed, as the session's")
    watch.close()
