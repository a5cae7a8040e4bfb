"""Interactive sessions draw from ``nnseg serve``'s memory budget, checked with the real server (uvicorn subprocess,
127.0.0.1, free port) and the unmodified ``nninteractive-client`` 2.6.0.

The server gets a ``--max-memory`` of the model's prediction working memory plus 1.5 times one small image's session
estimate: a larger image can never fit (413 with the estimate, the budget and ``--max-memory``; the server keeps
serving), two small images fit one at a time (the second session is refused 503, which the client raises as
``ServerAtCapacityError``, until the first releases), and ``GET /v1/models`` shows what the sessions hold.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from interactive_model import blob_image, write_model_folder
from test_serve_interactive import LEAKY_CLIENT, TOKEN, _client, _start, _stop
from nnseg.interactive import load_interactive_model, prediction_memory_bytes, session_memory_bytes

remote = pytest.importorskip("nnInteractive.inference.remote", reason="nninteractive-client is not installed")
pytestmark = pytest.mark.slow
SMALL, LARGE = (40, 44, 48), (80, 88, 96)
GIB = 1 << 30


def _estimates(folder: Path) -> tuple[int, int, int]:
    """(shared prediction memory, small image's session estimate, large image's)."""
    model = load_interactive_model(folder)
    n = model.capabilities.num_interaction_channels
    shared = prediction_memory_bytes(model.configuration.architecture, model.patch_size, image_channels=1,
                                     interaction_channels=n)
    small, large = (session_memory_bytes([1, *s], num_interaction_channels=n, patch_size=model.patch_size)
                    for s in (SMALL, LARGE))
    return shared, small, large


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = write_model_folder(tmp_path_factory.mktemp("serve_interactive_memory") / "model")
    shared, small, large = _estimates(folder)
    budget = shared + small * 3 // 2
    assert large > budget - shared  # the large image can never fit
    proc, url, lines = _start(folder, "--interactive_max_sessions", "3", "--max-memory", f"{budget / GIB:.9f}")
    yield {"url": url, "lines": lines, "shared": shared, "small": small, "budget": budget}
    _stop(proc)


def _held(url: str) -> dict:
    info = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    return {"total": info["memory_budget_bytes"], "used": info["memory_in_use_bytes"],
            "sessions": info["memory_held_bytes"].get("interactive sessions", 0),
            "prediction": info["memory_held_bytes"].get("interactive prediction", 0),
            "interactive": info["interactive"]}


def _segment(client, shape) -> np.ndarray:
    target = np.zeros(shape, np.uint8)
    client.set_target_buffer(target)
    client.add_point_interaction((20, 22, 24), include_interaction=True)
    return target


def test_budget_line_and_v1_models_count_the_interactive_prediction(setup):
    for _ in range(50):
        if any("memory budget" in line for line in setup["lines"]):
            break
        time.sleep(0.1)
    line = next(line for line in setup["lines"] if "memory budget" in line)
    assert f"memory budget {setup['budget'] / GIB:.2f} GB (--max-memory" in line and "interactive" in line, line
    held = _held(setup["url"])
    assert abs(held["total"] - setup["budget"]) <= 1  # GB as text on the command line
    assert held["prediction"] == setup["shared"] == held["used"]
    assert held["interactive"]["prediction_memory_bytes"] == setup["shared"]


def test_an_image_that_can_never_fit_is_413_and_the_server_keeps_serving(setup):
    client = _client(setup["url"])
    try:
        with pytest.raises(httpx.HTTPStatusError) as info:
            client.set_image(blob_image(shape=LARGE))
        response = info.value.response
        detail = response.json()["detail"]
        assert response.status_code == 413 and "--max-memory" in detail and "GB" in detail, detail
        assert "[1, 80, 88, 96]" in detail, detail
        assert _held(setup["url"])["sessions"] == 0  # nothing held after the refusal
        client.set_image(blob_image(shape=SMALL))
        assert _segment(client, SMALL).any()
        assert _held(setup["url"])["sessions"] == setup["small"]
    finally:
        client.close()
    assert _held(setup["url"])["sessions"] == 0


@LEAKY_CLIENT
def test_two_images_that_fit_only_one_at_a_time(setup):
    url = setup["url"]
    first, second = _client(url), _client(url)
    try:
        first.set_image(blob_image(shape=SMALL))
        with pytest.raises(remote.ServerAtCapacityError, match="memory budget"):
            second.set_image(blob_image(shape=SMALL, seed=1))
        held = _held(url)
        assert held["sessions"] == setup["small"] and held["interactive"]["memory_held_bytes"] == setup["small"]
        first.set_image(blob_image(shape=SMALL, seed=2))  # replacing its own image needs no extra room
        assert _held(url)["sessions"] == setup["small"]
        first.close()  # /release gives the budget back
        assert _held(url)["sessions"] == 0
        second.set_image(blob_image(shape=SMALL, seed=1))
        assert _segment(second, SMALL).any()
        assert _held(url)["sessions"] == setup["small"]
    finally:
        first.close()
        second.close()
        gc.collect()
    assert _held(url)["sessions"] == 0 and _held(url)["used"] == setup["shared"]
