"""Reading a `model_checkpoint_<N>`: the one place where training (to resume),
`connecto predict` and `connecto segment predict` load checkpoints.

A checkpoint is a torch file of a dict {model_state_dict, optimizer_state_dict,
iteration} (see `connecto.train.save_checkpoint`). A file that is truncated, not a
torch file, not such a dict, holds NaN or infinite weights, or does not fit the model
of the config is a `ConnectoError` naming the file, what is wrong with it and what to do,
on one line, instead of a traceback from deep inside torch or gunpowder.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from connecto import ConnectoError

REPLACE = "train again or use another checkpoint"


def default_device() -> str:
    """The device a model runs on unless told: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _reason(path: Path, error: BaseException) -> str:
    """What torch's many kinds of load errors mean, in a few words."""
    text = str(error).strip()
    if path.stat().st_size == 0:
        return "the file is empty"
    if "zip archive" in text or "central directory" in text or isinstance(error, EOFError):
        return "the file is truncated or damaged"
    if not zipfile.is_zipfile(path):  # torch has written zip archives since 1.6
        return "not a torch file"
    if isinstance(error, pickle.UnpicklingError) and "Weights only" in text:
        return "it holds objects other than tensors"
    first = text.splitlines()[0].split(". ")[0]
    return f"{type(error).__name__}: {first[:120]}"


def _refuse(path: Path, what: str, advice: str) -> ConnectoError:
    return ConnectoError(f"{path}: {what}; {advice}")


def read_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", advice: str = REPLACE,
    optimizer: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The checkpoint at `path` (tensors on `device`), checked: a dict with a model state
    of finite tensors (and an optimizer state when `optimizer`). `advice` ends the error
    message: what the user can do about a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConnectoError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about odd files before failing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise _refuse(
            path, f"not a readable connecto checkpoint ({_reason(path, error)})", advice
        ) from None
    if not isinstance(state, Mapping):
        raise _refuse(
            path, f"not a readable connecto checkpoint (a {type(state).__name__}, not a dict)",
            advice,
        )  # fmt: skip
    keys = ["model_state_dict", *(["optimizer_state_dict"] if optimizer else [])]
    for key in keys:
        if not isinstance(state.get(key), Mapping):
            raise _refuse(path, f"not a readable connecto checkpoint (no {key})", advice)
    model = state["model_state_dict"]
    broken = [
        name for name, tensor in model.items()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
        and not bool(torch.isfinite(tensor).all())
    ]  # fmt: skip
    if broken:
        raise _refuse(
            path, f"NaN or infinite weights in {broken[0]}"
            + (f" and {len(broken) - 1} more" if len(broken) > 1 else "")
            + " (the training diverged)", advice,
        )  # fmt: skip
    return dict(state)


def load_weights(
    model: torch.nn.Module, state: Mapping[str, Any], path: str | Path, keys: str,
    advice: str = REPLACE,
) -> None:  # fmt: skip
    """Load the checkpoint's model state into `model`; one that does not fit (another
    architecture) names the config `keys` that shape the model."""
    try:
        model.load_state_dict(state["model_state_dict"])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        detail = " ".join(str(error).split())
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        raise _refuse(
            Path(path), f"does not fit the model of this config ({keys}): {detail}", advice
        ) from None


def load_optimizer(
    optimizer: torch.optim.Optimizer, state: Mapping[str, Any], path: str | Path,
    advice: str = REPLACE,
) -> None:  # fmt: skip
    """Load the checkpoint's optimizer state into `optimizer`, keeping the optimizer's
    own hyperparameters (learning rate, ...): those come from the config, so that a
    changed `learning_rate` applies when training resumes."""
    configured = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer_state_dict"])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        detail = " ".join(str(error).split())[:200]
        raise _refuse(Path(path), f"its optimizer state does not fit ({detail})", advice) from None
    for group, values in zip(optimizer.param_groups, configured, strict=True):
        group.update(values)
