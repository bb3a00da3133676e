"""``python -m segkit.export ckpt_path=<ckpt> format=onnx|torchscript [output=...] [overwrite=true]``:
the command around :func:`segkit.export.export` (see conf/export.yaml)."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from segkit import CONF_DIR
from segkit.config_check import check_config
from segkit.errors import SegkitError, exit_on_user_error
from segkit.training.cleanup import discard_unused_run_dir


def run_export(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("ckpt_path") is None or OmegaConf.is_missing(cfg, "ckpt_path"):
        raise SegkitError("ckpt_path is not set; expected ckpt_path=<run>/checkpoints/best.ckpt")
    size = cfg.get("check_size")
    if isinstance(size, ListConfig):
        size = list(size)
    elif size is not None and not isinstance(size, list | tuple):
        raise SegkitError(f"check_size is {size!r}; expected a list [N, C, H, W], e.g. check_size=[1,3,200,328]")
    from segkit.export.exporters import export  # torch.export and onnx once the values are good

    return export(cfg.ckpt_path, str(cfg.format), cfg.get("output"), int(cfg.get("opset", 18)), bool(cfg.get("check", True)),
                  size, bool(cfg.get("overwrite", False)), str(cfg.get("onnx_exporter", "dynamo")))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(), discard_unused_run_dir():
        check_config(cfg, "export")
        run_export(cfg)


if __name__ == "__main__":
    main()
