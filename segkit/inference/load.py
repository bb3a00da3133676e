"""Loading a trained network for inference: :func:`load_network` reads a segkit checkpoint with
``torch.load(weights_only=True)`` (tensors and plain values only: unpickling runs no code), checks every
spec in its hyper-parameters against segkit's registry (``segkit.registry``: a ``_target_`` that is not a
segkit network, loss, torch optimizer or scheduler is refused before anything is built) and rebuilds the
:class:`~segkit.models.network.SegNetwork`. It imports neither Lightning nor Hydra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from segkit import rundir
from segkit.errors import SegkitError
from segkit.models.network import SegNetwork, build_network
from segkit.registry import check_config_targets, check_hyper_parameters


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """A checkpoint's dict, loaded with ``weights_only=True`` (no pickled code is ever executed)."""
    if not Path(path).is_file():
        raise SegkitError(f"ckpt_path '{path}' does not exist; expected a .ckpt written by segkit.train (e.g. <run>/checkpoints/best.ckpt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise SegkitError(
            f"'{path}' is not a segkit checkpoint: it could not be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "expected a .ckpt written by segkit (tensors and plain values only)"
        ) from None
    if not isinstance(state, dict):
        raise SegkitError(f"'{path}' holds a {type(state).__name__}, not a segkit checkpoint; expected a .ckpt written by segkit.train")
    return state


def network_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``SegNetwork`` part (``net.*`` keys) of a ``SegModule`` state dict, from today's format
    (``network.net.*``) or segkit 0.1's (``net.*``)."""
    prefix = "network." if any(k.startswith("network.") for k in state_dict) else ""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix + "net.")}


def load_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> SegNetwork:
    """The eval-mode :class:`SegNetwork` of a segkit checkpoint, on ``device``.

    Refuses, with one sentence naming the file, anything that is not a segkit checkpoint: unsafe pickles,
    hyper-parameters naming a network, loss, optimizer or scheduler outside segkit's registry, a run folder
    (around a checkpoint in ``<run>/checkpoints/``) whose config names a foreign ``_target_``, or weights that
    do not fit the network they name.
    """
    path = Path(path)
    state = read_checkpoint(path)
    hp = check_hyper_parameters(state.get("hyper_parameters"), path)
    run_config(path)  # the run folder travels with its checkpoints: its config must be segkit's too
    spec = dict(hp["model"])
    # the checkpoint holds the trained weights: a pretrained encoder file named at training time is not read again
    net = build_network({**spec, "encoder_weights": None} if spec.get("encoder_weights") else spec, path)
    network = SegNetwork(net, hp["class_names"], hp.get("norm_mean"), hp.get("norm_std"),
                         channels_last=bool(hp.get("channels_last", True)), model_spec=spec)
    weights = network_state_dict(state.get("state_dict") or {})
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[0][:200]
        raise SegkitError(f"the weights in '{path}' do not fit the network its hyper-parameters name ({first}); "
                          "expected a .ckpt written by segkit.train") from None
    if network.channels_last:
        network.net.to(memory_format=torch.channels_last)
    return network.eval().to(torch.device(device))


def run_config(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The config of the run folder around ``ckpt`` (``run_config.yaml``, else ``.hydra/config.yaml``) as plain
    values, checked against :mod:`segkit.registry`; empty when the checkpoint is not inside a run folder."""
    import yaml

    run = rundir.run_of_checkpoint(ckpt)
    config = run.config_file() if run is not None else None
    if config is None:
        return {}
    try:
        loaded = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SegkitError(f"cannot read '{config}' ({type(err).__name__}); expected the YAML config segkit.train writes") from None
    if not isinstance(loaded, dict):
        raise SegkitError(f"'{config}' holds no mapping; expected the YAML config segkit.train writes")
    return check_config_targets(loaded, config)


def run_data_config(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The ``data`` section of :func:`run_config` (empty when there is none)."""
    data = run_config(ckpt).get("data")
    return data if isinstance(data, dict) else {}


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; otherwise the torch device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
