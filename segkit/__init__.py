"""segkit: Hydra-configured PyTorch Lightning experiments for semantic segmentation."""

from pathlib import Path

__version__ = "0.1.0"

#: The packaged Hydra config directory (absolute, so `python -m`, scripts and tests all find it).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
