"""nnInteractive's packed-array format (both directions, against its client's own codec) and the session registry."""

from __future__ import annotations

import time

import numpy as np
import pytest

from interactive_model import blob_image, write_model_folder
from nnseg.interactive import load_interactive_model, prediction_memory_bytes
from nnseg.serve.interactive.sessions import AtCapacity, InteractiveOptions, LeaseGone, SessionRegistry
from nnseg.serve.interactive.wire import pack, unpack

serialization = pytest.importorskip("nnInteractive.inference.remote.serialization",
                                    reason="nninteractive-client is not installed")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, bool])
def test_packed_arrays_round_trip_with_nninteractive_client(dtype):
    a = (np.random.default_rng(0).random((7, 9, 11)) * 50).astype(dtype)
    assert np.array_equal(serialization.unpack_array(pack(a)), a)
    assert np.array_equal(unpack(serialization.pack_array(a), max_bytes=1 << 20), a)


def test_corrupt_or_oversized_bodies_are_refused_before_allocation():
    good = serialization.pack_array(np.ones((20, 20, 20), np.float32))
    for bad, match in ((b"", "too short"), (b"NNIA" + b"\x07" * 30, "bad header"), (good[:-3], "do not match"),
                       (good[:20], "truncated"), (good[:-40] + b"\x00" * 40, "corrupt")):
        with pytest.raises(ValueError, match=match):
            unpack(bad, max_bytes=1 << 30)
    with pytest.raises(ValueError, match="at most 1000"):
        unpack(good, max_bytes=1000)
    huge = bytearray(serialization.pack_array(np.ones((2, 2), np.uint8)))
    huge[13:29] = np.array([1 << 40, 1 << 40], "<i8").tobytes()  # shape after the header and "uint8": 2^80 bytes
    with pytest.raises(ValueError, match="would need"):
        unpack(bytes(huge), max_bytes=1 << 30)


def test_uncompressed_codec_is_taken_only_when_asked_for():
    """Codec 0 (the browser page's, ``X-Array-Codec: raw``): round trip, refused without the flag, lengths checked."""
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    body = pack(a, raw=True)
    assert body[5] == 0 and len(body) == 8 + len("float32") + 3 * 8 + 4 + 16 + a.nbytes
    assert np.array_equal(unpack(body, max_bytes=1 << 20, raw=True), a)
    with pytest.raises(ValueError, match="bad header"):
        unpack(body, max_bytes=1 << 20)  # nnInteractive's own clients never send it: refused as before
    with pytest.raises(ValueError, match="do not match"):
        unpack(body[:-4], max_bytes=1 << 20, raw=True)
    lying = bytearray(body)  # raw length != stored length
    lying[-a.nbytes - 16:-a.nbytes - 8] = np.array([a.nbytes + 4], "<u8").tobytes()
    with pytest.raises(ValueError, match="do not match"):
        unpack(bytes(lying), max_bytes=1 << 20, raw=True)
    with pytest.raises(ValueError, match="at most 100"):
        unpack(body, max_bytes=100, raw=True)


def test_registry_limits_sessions_and_reaps_idle_ones(tmp_path):
    model = load_interactive_model(write_model_folder(tmp_path / "m"))
    registry = SessionRegistry(model, InteractiveOptions(folder=str(tmp_path / "m"), max_sessions=2,
                                                         idle_timeout_s=0.3, liveness_timeout_s=30))
    try:
        a, b = registry.claim(), registry.claim()
        with pytest.raises(AtCapacity, match="capacity"):
            registry.claim()
        assert registry.remaining_s(a, heartbeat=True) > 0
        registry.release(b)
        c = registry.claim()
        time.sleep(0.2)
        registry.run(c, lambda s: s.set_do_autozoom(False))  # a user action keeps c active
        time.sleep(0.5)  # the reaper runs every 0.1 s here
        with pytest.raises(LeaseGone, match="expired"):
            registry.run(a, lambda s: None)
        with pytest.raises(LeaseGone, match="missing"):
            registry.run(None, lambda s: None)
    finally:
        registry.close()
    with pytest.raises(ValueError, match="max_sessions"):
        InteractiveOptions(folder="x", max_sessions=0)


def test_sessions_hold_their_images_estimate_of_the_servers_budget(tmp_path):
    from nnseg.serve.interactive.sessions import TooLarge
    from nnseg.serve.memory import ServerMemory

    model = load_interactive_model(write_model_folder(tmp_path / "m"))
    probe = SessionRegistry(model, InteractiveOptions(folder="m"))
    small, large = probe.image_bytes([1, 40, 44, 48]), probe.image_bytes([1, 80, 88, 96])
    probe.close()
    shared = prediction_memory_bytes(model.configuration.architecture, model.patch_size, image_channels=1,
                                     interaction_channels=model.capabilities.num_interaction_channels)
    memory = ServerMemory(shared + small * 3 // 2, "--max-memory test")
    registry = SessionRegistry(model, InteractiveOptions(folder="m", max_sessions=3, idle_timeout_s=60,
                                                         liveness_timeout_s=60), memory)
    image = blob_image(shape=(40, 44, 48))
    need = lambda s: (small, "an image")  # noqa: E731
    try:
        assert memory.held() == {"interactive prediction": shared}
        a, b = registry.claim(), registry.claim()
        with pytest.raises(TooLarge, match="--max-memory"):
            registry.run(a, lambda s: s.set_image(blob_image(shape=(80, 88, 96))), memory=lambda s: (large, "x"))
        registry.run(a, lambda s: s.set_image(image), memory=need)
        assert memory.held()["interactive sessions"] == small
        with pytest.raises(AtCapacity, match="memory budget"):
            registry.run(b, lambda s: s.set_image(image), memory=need)
        with pytest.raises(ValueError, match="constant"):  # a failed image keeps the previous one and its bytes
            registry.run(a, lambda s: s.set_image(np.ones((1, 8, 8, 8), np.float32)), memory=lambda s: (1, "x"))
        assert registry.run(a, lambda s: s.image is not None) and memory.held()["interactive sessions"] == small
        registry.release(a)
        assert memory.held()["interactive sessions"] == 0
        registry.run(b, lambda s: s.set_image(image), memory=need)
        assert registry.describe()["memory_held_bytes"] == small
        registry._entries[b].active -= 120  # b idle for longer than the timeout (no sleep: a busy machine is slow)
        assert registry.sweep() == 1  # b is reaped as idle: its bytes come back
        assert memory.held()["interactive sessions"] == 0
        c = registry.claim()
        registry.run(c, lambda s: s.set_image(image), memory=need)
    finally:
        registry.close()
    assert memory.used == 0


def test_server_sessions_are_budgeted_by_the_server_alone(tmp_path, monkeypatch):
    """The session's own check (InteractiveSession.set_image, measured budget) is off in serve: SessionBudget is the
    one place, so a machine with little free memory now does not refuse an image the server's budget holds."""
    from nnseg.predictions.inference import memory_plan

    model = load_interactive_model(write_model_folder(tmp_path / "m"))
    registry = SessionRegistry(model, InteractiveOptions(folder="m"))
    monkeypatch.setattr(memory_plan, "available_bytes", lambda device: 1 << 20)
    try:
        token = registry.claim()
        assert registry.run(token, lambda s: (s.set_image(blob_image(shape=(40, 44, 48))), s.image is not None)[1])
    finally:
        registry.close()
