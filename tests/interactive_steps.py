"""Prompt sequences run the same way against nnseg's InteractiveSession and nnInteractive's own session (their
method names are the same), recording the target buffer after every step.

Also runnable as a script in a separate interpreter that has nnInteractive on its path:
    python tests/interactive_steps.py MODEL_FOLDER CASE.npz STEPS.json OUT.npz [--no-autozoom] [--logits IN.npy]
(``--logits``: also save the network's output for the input in IN.npy to OUT.npz's ``logits``)
A plain module at the tests root (on sys.path like shared_paths) so tests can import it by a unique name."""

from __future__ import annotations

import json
import sys

import numpy as np


def sequence(image_shape: tuple[int, int, int]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every prompt kind, positive and negative, plus undo and an initial mask, on :func:`blob_image`'s image."""
    x, y, z = image_shape
    scribble = np.zeros(image_shape, np.uint8)
    scribble[22:25, 20:50, 40] = 1  # a stroke across the big blob on one slice, 3 voxels thick
    lasso = np.zeros((20, 24, 1), np.uint8)  # a filled square on a slice, given inside an interaction box
    lasso[4:16, 4:20, 0] = 1
    grid = np.meshgrid(*[np.arange(s) for s in image_shape], indexing="ij")
    initial = (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (24, 36, 52), (11, 16, 36))) <= 1).astype(np.uint8)
    steps = [
        {"op": "point", "coordinates": [24, 36, 52], "positive": True},
        {"op": "point", "coordinates": [30.4, 35.6, 53], "positive": False},
        {"op": "bbox", "box": [[4, 18], [52, 72], [12, 13]], "positive": True},
        {"op": "scribble", "mask": "scribble", "positive": False},
        {"op": "lasso", "mask": "lasso", "positive": True, "interaction_bbox": [[14, 34], [24, 48], [70, 71]]},
        {"op": "undo"},
        {"op": "bbox", "box": [[14, 34], [20, 52], [24, 80]], "positive": False},
        {"op": "initial", "mask": "initial", "run_prediction": True},
        {"op": "point", "coordinates": [10, 62, 12], "positive": True},
        {"op": "reset"},
        {"op": "point", "coordinates": [40, 14, 90], "positive": True},
    ]
    return steps, {"scribble": scribble, "lasso": lasso, "initial": initial}


def run_steps(session, image: np.ndarray, steps: list[dict], arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Set the image and a uint8 target buffer, run ``steps``; the buffer after each step."""
    session.set_image(image)
    target = np.zeros(image.shape[1:], np.uint8)
    session.set_target_buffer(target)
    out = []
    for step in steps:
        op = step["op"]
        if op == "point":
            session.add_point_interaction(step["coordinates"], include_interaction=step["positive"])
        elif op == "bbox":
            session.add_bbox_interaction(step["box"], include_interaction=step["positive"])
        elif op in ("scribble", "lasso"):
            add = session.add_scribble_interaction if op == "scribble" else session.add_lasso_interaction
            add(arrays[step["mask"]], include_interaction=step["positive"],
                interaction_bbox=step.get("interaction_bbox"))
        elif op == "initial":
            session.add_initial_seg_interaction(arrays[step["mask"]], run_prediction=step["run_prediction"])
        elif op == "undo":
            session.undo()
        elif op == "reset":
            session.reset_interactions()
        out.append(target.copy())
    return out


def _main(argv: list[str]) -> None:
    """Run a sequence in nnInteractive's own session (CPU, dense interaction storage, np.random seeded with 0)."""
    import torch
    from nnInteractive.inference.inference_session import nnInteractiveInferenceSession

    folder, case, steps_file, out = argv[:4]
    session = nnInteractiveInferenceSession(device=torch.device("cpu"), do_autozoom="--no-autozoom" not in argv,
                                            interactions_storage="tensor", torch_n_threads=2)
    session.initialize_from_trained_model_folder(folder)
    np.random.seed(0)
    data = dict(np.load(case))
    buffers = run_steps(session, data.pop("image"), json.loads(open(steps_file).read()), data)
    extra = {}
    if "--logits" in argv:
        with torch.no_grad():
            extra["logits"] = session.network(torch.from_numpy(np.load(argv[argv.index("--logits") + 1]))).numpy()
    np.savez_compressed(out, *buffers, **extra)


if __name__ == "__main__":
    _main(sys.argv[1:])
