"""The browser page's prompt tools with an interactive model served beside the golden Hippocampus model.

One real ``nnseg serve --models GOLDEN --interactive FOLDER`` (uvicorn subprocess, 127.0.0.1, free port, token, two
interactive sessions: the page's and the client's), Playwright in Debian's Chromium (see test_serve_page.py). The page
segments a case, then a click with the "point+" tool refines label 1 through the session API; the corrected mask it
downloads equals the prediction with label 1 replaced by the target buffer that the unmodified
``nninteractive-client`` gets from the same server for the same image, initial mask and point. Undo restores the
prediction (and undoes on the server: the same click again gives the same mask).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from golden_model import IMAGES, install_golden_model
from interactive_model import write_model_folder
from test_serve import TOKEN, _start
from test_serve_page import CASE, Watch, _download, _segment, _wait_result, browser, pytestmark, shots  # noqa: F401

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


def _client_refines(url: str, prediction: np.ndarray, voxel: tuple[int, int, int], *, again: bool) -> np.ndarray:
    """What nninteractive-client gets: image, label 1 of the prediction as initial mask, a positive point (and, with
    ``again``, undo and the same point once more)."""
    image = np.asarray(nib.load(str(IMAGES / f"{CASE}.nii.gz")).get_fdata(), dtype=np.float32)[None]
    client = remote.nnInteractiveRemoteInferenceSession(url, api_key=TOKEN)
    try:
        client.set_image(image)
        target = np.zeros(image.shape[1:], np.uint8)
        client.set_target_buffer(target)
        client.add_initial_seg_interaction((prediction == 1).astype(np.uint8), run_prediction=False)
        client.add_point_interaction(voxel, include_interaction=True)
        if again:
            client.undo()
            client.add_point_interaction(voxel, include_interaction=True)
        return target.copy()
    finally:
        client.close()


def _click_point(page: Any, at: tuple[int, int]) -> tuple[int, int, int]:
    done = int(page.get_attribute("#tools", "data-prompts") or 0)
    page.locator("#viewer").click(position={"x": at[0], "y": at[1]})  # the location line follows on mouse down
    page.wait_for_selector(f'#tools[data-prompts="{done + 1}"]', timeout=120_000)
    assert page.is_hidden("#message.error"), page.text_content("#message")
    return tuple(int(v) for v in page.get_attribute("#location", "data-voxel").split(","))  # type: ignore[return-value]


def test_a_click_refines_the_label_as_the_client_does_and_undo_restores(browser: Any, served: str, shots: Path,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    watch = Watch(browser, served)
    page = watch.open()
    _segment(page, channel_file=IMAGES / f"{CASE}.nii.gz")
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
    page.screenshot(path=str(shots / "20_interactive_point.png"))
    corrected = _array(_download(page, "#dl-corrected", tmp_path / "corrected.nii.gz"))

    target = _client_refines(served, prediction, voxel, again=False)
    expected = np.where(target == 1, 1, np.where(prediction == 1, 0, prediction))
    assert not np.array_equal(expected, prediction), "the point changed nothing; pick another voxel"
    np.testing.assert_array_equal(corrected, expected)
    print(f"\npoint at voxel {voxel}: {(corrected != prediction).sum()} voxels changed, as nninteractive-client's")

    page.click("#undo")
    page.wait_for_selector('#undo[data-done="1"]')
    np.testing.assert_array_equal(_array(_download(page, "#dl-corrected", tmp_path / "undone.nii.gz")), prediction)
    page.screenshot(path=str(shots / "21_interactive_undo.png"))
    # the server undid the prompt too: the same click again is the client's undo + the same point
    assert _click_point(page, at) == voxel
    again = _array(_download(page, "#dl-corrected", tmp_path / "again.nii.gz"))
    target = _client_refines(served, prediction, voxel, again=True)
    np.testing.assert_array_equal(again, np.where(target == 1, 1, np.where(prediction == 1, 0, prediction)))
    watch.close()
