"""Shared fixtures: composed configs on tiny synthetic data made in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from segkit import CONF_DIR
from segkit.training.checkpointing import save_module
from segkit.training.module import SegModule

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

GPU_SKIP_REASON = "needs CUDA: torch.cuda.is_available() is False (make gpu-check runs these on a GPU machine)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu``-marked tests skip cleanly without CUDA (``pytest -m gpu`` on a CPU machine reports them skipped)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)

# Small enough that a whole training run takes seconds on 2 CPU cores.
TINY_DATA = [
    "data.synthetic.num_images=8",
    "data.synthetic.min_size=64",
    "data.synthetic.max_size=80",
    "data.crop_size=64",
    "data.crops_per_image=1",
    "data.batch_size=4",
    "data.val_batch_size=2",
    "data.val_fraction=0.25",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
]

TINY_MODELS = {
    "unet": ["model=unet", "model.base_width=4", "model.depth=3"],
    "segnet": ["model=segnet", "model.base_width=4"],
    "fcn": ["model=fcn", "model.base_width=4"],
    "fcn_cardiac": ["model=fcn_cardiac", "model.width=4"],
    "patchcnn": ["model=patchcnn", "model.widths=[4,4,4]", "model.hidden=8"],
    "smp": ["model=smp", "model.arch=FPN", "model.encoder=resnet18"],
}


def compose_cfg(tmp_path: Path, overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, writing outputs and data under ``tmp_path``."""
    base = [f"paths.output_dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'outputs'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=base + list(overrides or []))
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """``tiny_cfg(*overrides)``: a tiny-data training config rooted in tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + list(overrides))

    return make


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    """Write ``images/<stem>.png`` and ``masks/<stem>.png`` (a ``[H, W, 3]`` mask is saved as RGB)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


# Tiny untrained checkpoints of every model family (tests of export and of load_network).
CKPT_CLASSES = ["background", "cell", "edge"]
CKPT_MEAN, CKPT_STD = [0.40, 0.50, 0.60], [0.20, 0.25, 0.30]
CKPT_MODELS = {
    "unet": {"_target_": "segkit.models.UNet", "depth": 3, "base_width": 4},
    "segnet": {"_target_": "segkit.models.SegNet", "depth": 3, "base_width": 4},  # max-unpooling by indices
    "fcn": {"_target_": "segkit.models.FCN", "base_width": 4},
    "patchcnn": {"_target_": "segkit.models.PatchCNN", "widths": [4, 4, 4], "hidden": 8},  # stride 1, own reflect padding
    "smp": {"_target_": "segkit.models.SMPModel", "arch": "FPN", "encoder": "resnet18", "encoder_weights": None},
}


def tiny_checkpoint(path: Path, name: str) -> Path:
    """A SegModule with random (perturbed) weights and BatchNorm statistics, saved by a Lightning trainer."""
    torch.manual_seed(len(name))
    module = SegModule(model={**CKPT_MODELS[name], "in_channels": 3, "num_classes": len(CKPT_CLASSES)}, loss={"name": "ce"},
                       optimizer={"_target_": "torch.optim.Adam"}, class_names=CKPT_CLASSES, norm_mean=CKPT_MEAN, norm_std=CKPT_STD)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return save_module(module, path)
