"""Batched data augmentation: every transform samples parameters, then applies them to a whole batch with torch.

Each transform has ``sample(rng: numpy.random.Generator, batch: Batch) -> params`` and
``apply(batch: Batch, params) -> Batch``, so parameters can be logged and re-applied, and ``apply`` runs on whatever
device holds the batch (GPU when there is one, CPU in loader workers). A ``Batch`` holds ``image`` float
``(B, C, *spatial)`` and ``seg`` ``(B, 1, *spatial)`` (integer labels, -1 outside the non-zero mask).
"""
