"""The streamed, multi-threaded .npz writer: files np.load, zipfile and unzip read as np.savez_compressed's."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnseg.predictions.export.npz_stream import NpzStreamWriter, pieces
from nnseg.predictions.export.predict_io import load_probabilities_npz, save_probabilities_npz


def _probabilities(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 3, shape).astype(np.float32)
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def test_pieces_cover_the_block_in_c_order() -> None:
    block = np.arange(6 * 5 * 4 * 3, dtype=np.float32).reshape(6, 5, 4, 3).transpose(1, 0, 3, 2)
    for target in (1, 40, 200, 10 ** 6):
        parts = list(pieces(block, target))
        assert np.array_equal(np.concatenate([p.ravel() for p in parts]), block.ravel())
        assert target < 48 or all(p.nbytes <= max(target, 4 * block.shape[-1]) for p in parts)


@pytest.mark.parametrize("threads", [1, 3])
def test_c_order_blocks_round_trip(tmp_path: Path, threads: int) -> None:
    array = _probabilities((4, 9, 17, 23))
    writer = NpzStreamWriter(tmp_path / "a.npz", "probabilities", array.shape, threads=threads)
    writer.write(array[:0])  # an empty block is allowed
    for k in range(4):
        writer.write(array[k])
    writer.close()
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert z.testzip() is None and z.namelist() == ["probabilities.npy"]
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert z["probabilities"].dtype == np.float32 and np.array_equal(z["probabilities"], array)


def test_fortran_order_streams_along_the_last_axis(tmp_path: Path) -> None:
    """What the bounded export writes: (rows of the last axis, ..., K) blocks of a Fortran-ordered member."""
    array = _probabilities((5, 11, 13, 21), seed=1)
    writer = NpzStreamWriter(tmp_path / "f.npz", "probabilities", array.shape, fortran_order=True, threads=2)
    for i in range(0, 21, 8):
        writer.write(np.ascontiguousarray(array[..., i:i + 8].transpose(3, 2, 1, 0)))
    writer.close()
    loaded = load_probabilities_npz(tmp_path / "f.npz")
    assert np.array_equal(loaded, array)
    if shutil.which("unzip"):
        run = subprocess.run(["unzip", "-t", str(tmp_path / "f.npz")], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_save_probabilities_npz_reads_like_savez_compressed(tmp_path: Path) -> None:
    array = _probabilities((3, 20, 30, 40), seed=2)
    save_probabilities_npz(array, tmp_path / "ours.npz")
    np.savez_compressed(tmp_path / "numpy.npz", probabilities=array)
    with np.load(tmp_path / "ours.npz") as ours, np.load(tmp_path / "numpy.npz") as theirs:
        assert ours.files == theirs.files and np.array_equal(ours["probabilities"], theirs["probabilities"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numpy.npz", "ours.npz"]  # no temporary file left


def test_wrong_amount_of_data_is_refused(tmp_path: Path) -> None:
    writer = NpzStreamWriter(tmp_path / "short.npz", "probabilities", (2, 3, 4))
    writer.write(np.zeros((2, 3, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match="got 72 of 96 bytes"):
        writer.close()


def test_members_over_4_gib_use_zip64(tmp_path: Path) -> None:
    """A whole-body CT's probabilities exceed 4 GiB: the sizes need the ZIP64 fields (checked by zipfile's CRC)."""
    rows, plane = 33, (256, 128, 1024)  # 33 x 128 MiB = 4.125 GiB of zeros: compresses to a few MB
    block = np.zeros((1, *plane), dtype=np.float32)
    path = tmp_path / "big.npz"
    writer = NpzStreamWriter(path, "probabilities", (rows, *plane))
    for _ in range(rows):
        writer.write(block)
    writer.close()
    assert writer.written == rows * block.nbytes > 1 << 32
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("probabilities.npy")
        assert info.file_size == rows * block.nbytes + 128
        with z.open(info) as member:
            header = np.lib.format.read_magic(member)
            assert np.lib.format.read_array_header_1_0(member)[0] == (rows, *plane) and header == (1, 0)
            while member.read(256 << 20):  # reading to the end checks the CRC
                pass
