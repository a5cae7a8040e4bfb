"""The server side of the browser page without a browser: label colours, the served files and their headers, the
report's availability, and the checks of a mask sent for a DICOM SEG."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.serve.automatic.models import CaseError
from nnseg.serve.page.dicom import _read_labels
from nnseg.serve.page.info import PALETTE, has_validation, label_colors, parse_color
from nnseg.serve.page.routes import CSP, asset_names, page_router, public_paths


def _client(folder: Path) -> Any:
    """GET on the page router over ``folder`` in-process (ASGI; starlette's TestClient warns with this httpx)."""
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(page_router(folder))

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            return await client.get(path)

    return lambda path: asyncio.run(get(path))


def test_label_colours_from_dataset_json_or_itk_snap_defaults() -> None:
    assert parse_color("#FF8000") == (255, 128, 0) and parse_color("00ff00") == (0, 255, 0)
    assert parse_color([1, 2, 3]) == (1, 2, 3)
    for bad in ("red", "#12345", [1, 2], [0, 0, 256], [0.5, 0, 0], None, 7):
        assert parse_color(bad) is None
    labels = {"Posterior": 2, "Anterior": 1, "lesion": 21}
    out = label_colors(labels, {"label_colors": {"Posterior": "#0000ff", "lesion": "bad"}})
    assert [entry["name"] for entry in out] == ["Anterior", "Posterior", "lesion"]
    assert out[0]["color"] == [255, 0, 0] and out[1]["color"] == [0, 0, 255]
    assert out[2]["color"] == list(PALETTE[0])  # 21 wraps around the 20 colours; a bad entry falls back
    assert label_colors(labels, {"label_colors": "not a mapping"})[1]["color"] == [0, 255, 0]


def test_only_built_files_are_public_and_served_with_the_policy(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!DOCTYPE html><title>page</title>")
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path / "notes.md").write_text("not an asset")
    assert set(asset_names(tmp_path)) == {"index.html", "app.js"}
    assert public_paths(tmp_path) == {"/", "/static/index.html", "/static/app.js"}
    get = _client(tmp_path)
    page = get("/")
    assert page.text.startswith("<!DOCTYPE html><title>page") and page.headers["content-security-policy"] == CSP
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert get("/static/app.js").headers["content-type"].startswith("text/javascript")
    for name in ("notes.md", "..%2Findex.html", "missing.js"):
        assert get(f"/static/{name}").status_code == 404
    assert "script-src 'self'" in CSP and "unsafe-eval" not in CSP and "default-src 'none'" in CSP


def test_a_missing_build_says_how_to_build_it(tmp_path: Path) -> None:
    page = _client(tmp_path / "none")("/")
    assert page.status_code == 200 and "./dev.sh setup" in page.text and public_paths(tmp_path / "none") == {"/"}


def test_report_needs_a_validation(tmp_path: Path) -> None:
    assert not has_validation(tmp_path)
    (tmp_path / "fold_0" / "validation").mkdir(parents=True)
    assert not has_validation(tmp_path)
    (tmp_path / "fold_0" / "validation" / "summary.json").write_text("{}")
    assert has_validation(tmp_path)


def test_a_mask_for_a_seg_must_fit_the_series_and_the_model(tmp_path: Path) -> None:
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1, 2, 3] = 2
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "m.nii.gz"))
    np.testing.assert_array_equal(_read_labels(tmp_path / "m.nii.gz", (4, 5, 6), {1, 2}), mask)
    with pytest.raises(CaseError, match=r"shape \(4, 5, 6\), the DICOM series \(4, 5, 7\)"):
        _read_labels(tmp_path / "m.nii.gz", (4, 5, 7), {1, 2})
    with pytest.raises(CaseError, match=r"values \[2\] the model does not know"):
        _read_labels(tmp_path / "m.nii.gz", (4, 5, 6), {1})
    (tmp_path / "bad.nii.gz").write_bytes(b"no image")
    with pytest.raises(CaseError, match="not a readable NIfTI"):
        _read_labels(tmp_path / "bad.nii.gz", (4, 5, 6), {1})
