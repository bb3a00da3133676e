"""``SegModule``: the LightningModule that trains and evaluates any segmentation network.

It is rebuilt from primitive hyper-parameters alone (dicts of str/int/float/list), so a checkpoint
holds no pickled objects, loads with ``weights_only=True`` and needs no Hydra config. Network, loss, optimizer
and scheduler are built from segkit's registry of names (``segkit.registry``), never from an arbitrary
``_target_``. Inference does not need this class: :func:`segkit.inference.load_network` rebuilds the
:class:`~segkit.models.network.SegNetwork` it trains from the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from segkit.evaluation.metrics import ConfusionMatrix, flat_scores
from segkit.models.network import SegNetwork, build_network, output_stride
from segkit.registry import build_optimizer, build_scheduler, check_loss_spec
from segkit.training.losses import build_loss, deep_supervision_loss

STAGES = ("train", "val", "test")


def network_state_keys_to_module(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A ``SegModule`` state dict in today's keys (``network.net.*``) from either format."""
    if any(k.startswith("network.") for k in state_dict):
        return state_dict
    return {(f"network.{k}" if k.startswith("net.") else k): v for k, v in state_dict.items()}


def compile_in_place(net: nn.Module) -> bool:
    """``torch.compile`` ``net``'s forward in place (``nn.Module.compile``): parameter names and the
    checkpoint's ``state_dict`` keys stay those of the plain network, so checkpoints load with or
    without compilation. On a CPU, Inductor needs a C++ compiler: without one, the network stays
    eager and one line says so. Returns whether it was compiled."""
    import os
    import shutil

    if not torch.cuda.is_available():
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            rank_zero_info(f"segkit: model.compile=true needs a C++ compiler ('{cxx}') on a CPU; none found, running the network uncompiled")
            return False
    net.compile()
    return True


#: training metrics (train/miou, train/pixel_acc) count every n-th pixel in each direction
TRAIN_METRIC_STRIDE = 2


class SegModule(pl.LightningModule):
    """Trains ``model`` (a spec naming a segkit network) with ``loss`` and logs per-class metrics each epoch.

    Batches: ``{"image": uint8 [N, C, H, W], "mask": uint8/int64 [N, H, W], ...}``. Images are
    normalised here, on the training device, with the train split's ``norm_mean``/``norm_std``
    (in [0, 1] units). Outputs are logits ``[N, num_classes, H, W]``.
    """

    def __init__(
        self,
        model: dict[str, Any],
        loss: dict[str, Any],
        optimizer: dict[str, Any],
        class_names: Sequence[str],
        scheduler: dict[str, Any] | None = None,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        norm_mean: Sequence[float] | None = None,
        norm_std: Sequence[float] | None = None,
        channels_last: bool = True,
        panel_images: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        net = build_network(model, "the model config")
        self.channels_last = channels_last
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        if model.get("compile", False):  # segkit's option, not the network's
            compile_in_place(net)
        #: the network with its normalisation, stride padding and crop: what inference loads back
        self.network = SegNetwork(net, self.class_names, norm_mean, norm_std, channels_last=channels_last,
                                  model_spec=model)
        loss_spec = check_loss_spec(loss, "the loss config")
        self.criterion = build_loss(
            num_classes=self.num_classes, ignore_index=ignore_index, class_weights=class_weights, **loss_spec
        )
        self.metrics = nn.ModuleDict({f"{s}_cm": ConfusionMatrix(self.num_classes, ignore_index) for s in STAGES})
        # Epoch losses are torchmetrics too, synchronised with the confusion matrix in the epoch-end hook
        # that every process runs. (``self.log(..., sync_dist=True)`` would synchronise lazily, when the
        # rank-0 progress bar reads it, a collective the other ranks never join: DDP deadlock.)
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric(nan_strategy="disable") for s in STAGES})
        self.panel_images = panel_images
        #: the first ``panel_images`` validation samples of the last epoch: index -> (image, mask, pred)
        self.val_panel: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        #: confusion matrices of the last finished epoch, per stage
        self.last_confusion: dict[str, torch.Tensor] = {}
        #: False while segkit re-evaluates the best checkpoint, so curves get no extra points
        self.log_to_logger = True

    # ------------------------------------------------------------------ forward
    @property
    def net(self) -> nn.Module:
        """The bare network (``[N, C, H, W]`` normalised, stride-sized input -> logits)."""
        return self.network.net

    def __setattr__(self, name: str, value: Any) -> None:
        # ``module.net = other`` swaps the network inside ``SegNetwork`` (with its stride); nn.Module's own
        # __setattr__ would register a second, unused ``net`` instead of calling a property setter
        if name == "net" and "network" in self.__dict__.get("_modules", {}):
            self.network.net = value
            self.network.stride = output_stride(value)
            return
        super().__setattr__(name, value)

    @property
    def stride(self) -> int:
        return self.network.stride

    @property
    def norm_mean(self) -> torch.Tensor:
        return self.network.norm_mean

    @property
    def norm_std(self) -> torch.Tensor:
        return self.network.norm_std

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` -> normalised float ``[N, C, H, W]``."""
        return self.network.normalize(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes, H, W]`` for a uint8 image batch of any size (:class:`SegNetwork`:
        padded to the network stride internally and cropped back)."""
        return self.network(image)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints written before ``SegNetwork`` (segkit 0.1) keep the network under ``net.``; today it
        is ``network.net.``. Lightning calls this before loading the state (resume, validate, test)."""
        checkpoint["state_dict"] = network_state_keys_to_module(checkpoint.get("state_dict", {}))

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch["mask"].long()
        logits = self(batch["image"])
        # under mixed precision the logits come out in bf16/fp16: the loss (softmax sums over every pixel) and the
        # argmax take them in fp32 (a no-op for fp32 logits)
        logits = [o.float() for o in logits] if isinstance(logits, list) else logits.float()
        if isinstance(logits, list):  # deep supervision (training only): full resolution first
            # the weighted sum over the scales is optimised; train/loss records the full-resolution term, the
            # same quantity as val/loss, so the two curves stay comparable
            loss, shown = deep_supervision_loss(self.criterion, logits, target)
            logits = logits[0]
        else:
            loss = shown = self.criterion(logits, target)
        self.losses[f"{stage}_loss"].update(shown.detach(), weight=target.shape[0])
        if stage == "train":
            # train/miou is a progress signal on random crops: counted on every second pixel of every second row
            # (a quarter of the pixels, evenly spread), which costs a fifth of the full argmax + count per step
            # (BENCHMARKS.md, section 1); validation and test count every pixel
            pred = logits.detach()[:, :, ::TRAIN_METRIC_STRIDE, ::TRAIN_METRIC_STRIDE].argmax(1)
            self.metrics[f"{stage}_cm"].update(pred, target[:, ::TRAIN_METRIC_STRIDE, ::TRAIN_METRIC_STRIDE])
            return loss, pred
        pred = logits.detach().argmax(1)
        self.metrics[f"{stage}_cm"].update(pred, target)
        return loss, pred

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, "train")
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=batch["image"].shape[0], prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # mixed precision is for training steps: validation (and test) run in fp32, as segkit.eval and predict do,
        # so the best checkpoint is chosen on the predictions users will get from it
        with torch.autocast(batch["image"].device.type, enabled=False):
            _, pred = self._step(batch, "val")
        if "index" in batch:
            for k, idx in enumerate(batch["index"].tolist()):
                if idx < self.panel_images:
                    h, w = batch["size"][k].tolist()
                    self.val_panel[idx] = (batch["image"][k, :, :h, :w].cpu(), batch["mask"][k, :h, :w].cpu(), pred[k, :h, :w].cpu())

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        with torch.autocast(batch["image"].device.type, enabled=False):  # fp32, as validation
            self._step(batch, "test")

    # ------------------------------------------------------------------ epoch ends
    def _log_epoch_metrics(self, stage: str) -> None:
        metric = self.metrics[f"{stage}_cm"]
        cm = metric.compute()
        metric.reset()
        self.last_confusion[stage] = cm.cpu()
        values = flat_scores(cm, self.class_names, stage)
        if stage == "train":  # on random crops: a training-progress signal, not a quality figure
            values = {k: v for k, v in values.items() if k in ("train/miou", "train/pixel_acc")}
        loss_metric = self.losses[f"{stage}_loss"]
        values[f"{stage}/loss"] = float(loss_metric.compute())  # mean over the samples of every process
        loss_metric.reset()
        if stage == "train" and getattr(self, "_epoch_lr", None) is not None:
            values["train/lr"] = self._epoch_lr  # the rate this epoch trained with (epoch schedulers have stepped by now)
        # already summed over processes by the metric; no further sync needed. Test scores are single final
        # values: they reach the loggers with the best checkpoint's (``log_hparams``), not as curve points
        to_logger = self.log_to_logger and stage != "test"
        shown = f"{stage}/miou"
        self.log(shown, values.pop(shown), prog_bar=stage == "val", logger=to_logger)
        self.log_dict(values, logger=to_logger)

    def on_train_epoch_start(self) -> None:
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self.trainer.optimizers else None

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_start(self) -> None:
        self.val_panel = {}

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.hparams.optimizer, self.parameters(), "the optimizer config")
        spec = dict(self.hparams.scheduler or {})
        if not spec.get("_target_"):
            return optimizer
        interval = spec.pop("interval", "epoch")
        monitor = spec.pop("monitor", None)
        scheduler = build_scheduler(spec, optimizer, "the scheduler config")
        config = {"scheduler": scheduler, "interval": interval, "frequency": 1}
        if monitor:
            config["monitor"] = monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
