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


def load_or_create_splits(splits_file: Path, identifiers: Sequence[str], *, save: bool = True) -> list[Split]:
    """Reuse ``splits_final.json`` when it exists, else nnU-Net's split (written there atomically when ``save``)."""
    if splits_file.is_file():
        splits = load_json(splits_file)
        if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
            raise ValueError(f"{splits_file} is not a list of {{'train': [...], 'val': [...]}}; delete it to regenerate")
        return splits
    splits = kfold_splits(identifiers)
    if save:
        save_json(splits, splits_file)
    return splits


def fold_cases(splits: list[Split], fold: int | str, identifiers: Sequence[str], *,
               splits_file: Path | str = "splits_final.json") -> Split:
    """Training and validation cases of ``fold`` (an int, or ``'all'``: train on everything, validate on it too).

    Raises:
        ValueError: ``fold`` is not in the splits file. nnU-Net silently trains such a fold on a seeded random 80:20
            split (:func:`random_split`); nnseg refuses and says how to add the fold.
    """
    if fold == "all":
        keys = sorted(identifiers)
        return {"train": keys, "val": keys}
    fold = int(fold)
    if 0 <= fold < len(splits):
        return {"train": list(splits[fold]["train"]), "val": list(splits[fold]["val"])}
    raise ValueError(f"fold {fold} is not in {splits_file}, which has folds 0-{len(splits) - 1}; train one of those or "
                     f"'all', or add the fold to {splits_file} (entry i of the list is fold i: "
                     "{'train': [...], 'val': [...]}; nnU-Net would use a random 80:20 split here)")


def missing_preprocessed_cases(expected: Sequence[str], preprocessed: Sequence[str]) -> list[str]:
    """Cases of the dataset listing (``expected``) without a complete preprocessed case."""
    return sorted(set(expected) - set(preprocessed))


def check_splits_cases(splits: list[Split], splits_file: Path, preprocessed: Sequence[str], data_folder: Path,
                       fix: str) -> list[str]:
    """Refuse splits naming cases that are not preprocessed; return the preprocessed cases no fold uses.

    Raises:
        ValueError: ``splits_file`` names cases missing from ``data_folder`` (listed in the message, with ``fix``).
    """
    named = {c for s in splits for c in list(s["train"]) + list(s["val"])}
    missing = sorted(named - set(preprocessed))
    if missing:
        raise ValueError(f"{splits_file} names {len(missing)} case(s) that are not preprocessed in {data_folder}: "
                         f"{some_cases(missing)}. {fix}, or remove them from {splits_file}")
    return sorted(set(preprocessed) - named)


def some_cases(cases: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(cases[:limit])
    return shown + (f" ... ({len(cases) - limit} more)" if len(cases) > limit else "")
