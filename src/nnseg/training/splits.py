"""Cross-validation splits, identical to nnU-Net's ``splits_final.json``.

nnU-Net uses scikit-learn's ``KFold(n_splits=5, shuffle=True, random_state=12345)`` over the sorted case
identifiers. scikit-learn is not a dependency, so the same permutation is produced here with numpy's legacy
``RandomState`` (which is what scikit-learn's ``check_random_state`` returns).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnseg.jsonio import load_json, save_json

SPLIT_SEED = 12345
NUM_FOLDS = 5

Split = dict[str, list[str]]


def kfold_splits(identifiers: Sequence[str], *, n_splits: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[Split]:
    """nnU-Net's k-fold split: ``[{'train': [...], 'val': [...]}, ...]``, both lists sorted.

    Raises:
        ValueError: fewer cases than folds.
    """
    keys = sorted(identifiers)
    n = len(keys)
    if n < n_splits:
        raise ValueError(f"{n} training cases cannot be split into {n_splits} folds; add cases or train with fold 'all'")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_splits, n // n_splits, dtype=int)
    sizes[: n % n_splits] += 1
    splits, start = [], 0
    for size in sizes:
        val_mask = np.zeros(n, dtype=bool)
        val_mask[order[start:start + size]] = True
        start += size
        splits.append({"train": [keys[i] for i in np.flatnonzero(~val_mask)],
                       "val": [keys[i] for i in np.flatnonzero(val_mask)]})
    return splits


def random_split(identifiers: Sequence[str], fold: int) -> Split:
    """nnU-Net's fallback for a fold beyond the splits file: a seeded random 80:20 split."""
    keys = sorted(identifiers)
    rnd = np.random.RandomState(seed=SPLIT_SEED + fold)
    train_idx = rnd.choice(len(keys), int(len(keys) * 0.8), replace=False)
    chosen = set(int(i) for i in train_idx)
    return {"train": [keys[int(i)] for i in train_idx], "val": [k for i, k in enumerate(keys) if i not in chosen]}


def load_or_create_splits(splits_file: Path, identifiers: Sequence[str]) -> list[Split]:
    """Reuse ``splits_final.json`` when it exists, else write nnU-Net's split there (atomically)."""
    if splits_file.is_file():
        splits = load_json(splits_file)
        if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
            raise ValueError(f"{splits_file} is not a list of {{'train': [...], 'val': [...]}}; delete it to regenerate")
        return splits
    splits = kfold_splits(identifiers)
    save_json(splits, splits_file)
    return splits


def fold_cases(splits: list[Split], fold: int | str, identifiers: Sequence[str]) -> Split:
    """Training and validation cases of ``fold`` (an int, or ``'all'``: train on everything, validate on it too)."""
    if fold == "all":
        keys = sorted(identifiers)
        return {"train": keys, "val": keys}
    fold = int(fold)
    if fold < 0:
        raise ValueError(f"fold must be 0..{len(splits) - 1} or 'all', got {fold}")
    if fold < len(splits):
        return {"train": list(splits[fold]["train"]), "val": list(splits[fold]["val"])}
    return random_split(identifiers, fold)
