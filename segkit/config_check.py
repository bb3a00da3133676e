"""Checks of the values a user sets on the command line, run by every Hydra command before it reads
any data or writes into its run folder: each problem is one sentence naming the key, the value given
and what is expected (``lr is 'abc'; expected a positive number such as 1e-3``).

:data:`RULES` is the table: ``(key, check, expected)``. A key is checked wherever the composed config
has it (``inference.tile`` in eval and predict, ``data.*`` in eval only with ``data=...``). Then
:func:`check_config` resolves every other value, so a bad interpolation or an unset ``???`` anywhere is
one sentence too. A command's required keys (``ckpt_path``, ``input``) missing give its usage text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segkit.data.stats import WEIGHT_METHODS
from segkit.errors import SegkitError
from segkit.registry import LOSS_NAMES

Check = Callable[[Any], bool]


# ---------------------------------------------------------------- value checks
def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive(v: Any) -> bool:
    return _number(v) and v > 0


def non_negative(v: Any) -> bool:
    return _number(v) and v >= 0


def positive_int(v: Any) -> bool:
    return _int(v) and v > 0


def non_negative_int(v: Any) -> bool:
    return _int(v) and v >= 0


def fraction(v: Any) -> bool:
    """In [0, 1)."""
    return _number(v) and 0 <= v < 1


def probability(v: Any) -> bool:
    """In [0, 1]."""
    return _number(v) and 0 <= v <= 1


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def one_of(*choices: Any) -> Check:
    return lambda v: any(type(c) is type(v) and c == v for c in choices)  # 1 is not true, true is not 1


def or_null(check: Check) -> Check:
    return lambda v: v is None or check(v)


def list_of(check: Check, length: int | None = None, non_empty: bool = False) -> Check:
    def ok(v: Any) -> bool:
        return isinstance(v, list) and all(check(x) for x in v) and (length is None or len(v) == length) and (bool(v) or not non_empty)
    return ok


def _budget(v: Any) -> bool:
    from segkit.training.durations import parse_budget

    try:
        parse_budget(v)
    except Exception:  # noqa: BLE001 - any refusal means the value is not a duration
        return False
    return True


def _seed(v: Any) -> bool:
    return v is None or _int(v) and 0 <= v <= 2**32 - 1  # numpy's (and Lightning's) seed range


def _devices(v: Any) -> bool:
    if isinstance(v, str):
        return v == "auto" or re.fullmatch(r"\s*-1\s*|\s*\d+\s*(,\s*\d+\s*)*,?\s*", v) is not None
    return _int(v) and (v > 0 or v == -1) or list_of(non_negative_int, non_empty=True)(v)


def _device(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", v) is not None


def _batches(v: Any) -> bool:
    """Lightning's limit_*_batches: a number of batches or a fraction of them."""
    return v is None or positive_int(v) or isinstance(v, float) and 0 < v <= 1


def _odd(v: Any) -> bool:
    return positive_int(v) and v % 2 == 1


def _postprocess_metric(v: Any) -> bool:
    """A metric of the post-processing search (the class name is checked against the data later)."""
    if not isinstance(v, str):
        return False
    kind, _, name = v.partition("/")
    if not name:
        return kind in ("miou", "mdice", "pixel_acc")
    return kind in ("iou", "dice", "precision", "recall", "count_error", "ks") and bool(name)


# Lightning's precision names (lightning_fabric.connector._PRECISION_INPUT) and segkit's auto
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "64-true", "16-true", "bf16-true", "transformer-engine",
              "transformer-engine-float16", "16", "32", "64", "bf16", 16, 32, 64)
EXPORT_FORMATS = ("onnx", "torchscript")  # segkit.export.exporters.FORMATS
ONNX_EXPORTERS = ("dynamo", "legacy")  # segkit.export.exporters.ONNX_EXPORTERS
POS_INT = "a positive whole number such as {}"


#: (key, check, expected): checked in this order wherever the config has the key
RULES: list[tuple[str, Check, str]] = [
    # training
    ("lr", positive, "a positive number such as 1e-3"),
    ("plan", one_of("auto", "report", "off"), "auto, report or off"),
    ("postprocess_tuning", one_of("auto", "off"), "auto or off"),
    ("postprocess_metric", or_null(_postprocess_metric), "null, miou, mdice, pixel_acc, <iou|dice|precision|recall>/<class> or <count_error|ks>/<class>"),
    ("cpu_allocator", one_of("tuned", "default"), "tuned or default"),
    ("budget", _budget, "a wall-clock duration such as 45m, 2h, 1h30m or 90s (a bare number is minutes), or null"),
    ("budget_schedule.warmup", fraction, "a fraction in [0, 1) such as 0.03"),
    ("budget_schedule.final_lr_ratio", fraction, "a fraction in [0, 1) such as 0.001"),
    ("budget_schedule.val_share", positive, "a positive share of the time such as 0.1"),
    ("seed", _seed, "a whole number from 0 to 4294967295, or null for an unseeded run"),
    ("test", boolean, "true or false"),
    ("data.batch_size", positive_int, POS_INT.format(8)),
    ("data.val_batch_size", positive_int, POS_INT.format(4)),
    ("data.crop_size", positive_int, "a positive whole number of pixels such as 128"),
    ("data.crops_per_image", positive_int, POS_INT.format(4)),
    ("data.num_workers", non_negative_int, "a whole number >= 0 such as 0 or 4"),
    ("data.val_fraction", fraction, "a fraction in [0, 1) such as 0.2"),
    ("data.test_fraction", fraction, "a fraction in [0, 1) such as 0.1"),
    ("data.split_seed", non_negative_int, "a whole number >= 0 such as 0"),
    ("data.fold", or_null(non_negative_int), "null or a fold index 0..data.num_folds-1"),
    ("data.num_folds", lambda v: _int(v) and v >= 2, "a whole number >= 2 such as 5"),
    ("data.num_classes", or_null(positive_int), "a positive whole number (one per class name), or null to count data.class_names"),
    ("data.in_channels", positive_int, "a positive whole number such as 3 (RGB) or 1 (grey)"),
    ("data.ignore_index", _int, "a whole number such as 255"),
    ("data.sampling", one_of("uniform", "class_balanced"), "uniform or class_balanced"),
    ("data.normalize", one_of("dataset", "none"), "dataset or none"),
    ("data.storage", one_of("auto", "memory", "disk"), "auto, memory or disk"),
    ("data.tile_size", lambda v: _int(v) and v >= 64, "a whole number of pixels >= 64 such as 2048"),
    *[(f"data.augment.{k}", boolean, "true or false") for k in ("hflip", "vflip", "rot90")],
    *[(f"data.augment.{k}", probability, "a probability in [0, 1] such as 0.5") for k in ("affine_p", "elastic_p", "blur_p")],
    ("ema_decay", or_null(lambda v: _number(v) and 0 < v < 1), "null or a number in (0, 1) such as 0.999"),
    ("ema_start_step", non_negative_int, "a whole number >= 0 such as 0"),
    ("early_stopping_patience", or_null(positive_int), "null or a positive whole number of validations such as 10"),
    ("early_stopping_min_delta", non_negative, "a number >= 0 such as 0.0"),
    ("trainer.max_epochs", positive_int, POS_INT.format(30)),
    ("trainer.min_epochs", non_negative_int, "a whole number >= 0 such as 1"),
    ("trainer.max_steps", lambda v: positive_int(v) or v == -1, "a positive whole number, or -1 for no step limit"),
    ("trainer.devices", _devices, "a positive whole number, -1 (all), auto, or a list of device ids such as [0,1]"),
    ("trainer.num_nodes", positive_int, POS_INT.format(1)),
    ("trainer.precision", one_of(*PRECISIONS), "auto, 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true or 64-true"),
    ("trainer.accumulate_grad_batches", positive_int, POS_INT.format(1)),
    ("trainer.check_val_every_n_epoch", or_null(positive_int), POS_INT.format(1)),
    ("trainer.log_every_n_steps", positive_int, POS_INT.format(10)),
    ("trainer.num_sanity_val_steps", lambda v: _int(v) and v >= -1, "a whole number >= 0, or -1 for all validation batches"),
    ("trainer.gradient_clip_val", or_null(non_negative), "null or a number >= 0 such as 1.0"),
    ("trainer.limit_train_batches", _batches, "null, a positive whole number of batches or a fraction in (0, 1] such as 0.25"),
    ("trainer.limit_val_batches", _batches, "null, a positive whole number of batches or a fraction in (0, 1] such as 0.25"),
    ("trainer.deterministic", one_of(True, False, "warn"), "true, false or warn"),
    ("trainer.enable_model_summary", boolean, "true or false"),
    ("optimizer.lr", positive, "a positive number such as 1e-3"),
    ("optimizer.weight_decay", non_negative, "a number >= 0 such as 1e-4"),
    ("optimizer.momentum", fraction, "a number in [0, 1) such as 0.9"),
    ("loss.name", one_of(*LOSS_NAMES), "one of " + ", ".join(LOSS_NAMES)),
    ("loss.ce_lambda", non_negative, "a number >= 0 such as 1.0"),
    ("loss.dice_lambda", non_negative, "a number >= 0 such as 1.0"),
    ("loss.smooth", non_negative, "a number >= 0 such as 1.0"),
    ("loss.gamma", non_negative, "a number >= 0 such as 2.0 (0 is cross-entropy)"),
    ("loss.alpha", non_negative, "a number >= 0 such as 0.3 (the weight of false positives)"),
    ("loss.beta", non_negative, "a number >= 0 such as 0.7 (the weight of false negatives)"),
    ("loss.ignore_index", _int, "a whole number such as 255"),
    ("loss.class_weights", lambda v: v is None or v == "auto" or list_of(non_negative, non_empty=True)(v),
     "null, auto, or a list of numbers >= 0 with one per class"),
    ("loss.weight_method", one_of(*WEIGHT_METHODS), ", ".join(WEIGHT_METHODS[:-1]) + " or " + WEIGHT_METHODS[-1]),
    ("scheduler.T_max", positive_int, POS_INT.format(30)),
    ("scheduler.total_iters", positive_int, POS_INT.format(30)),
    ("scheduler.eta_min", non_negative, "a number >= 0 such as 1e-6"),
    ("scheduler.power", positive, "a positive number such as 0.9"),
    ("scheduler.factor", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1) such as 0.5"),
    ("scheduler.patience", non_negative_int, "a whole number >= 0 such as 5"),
    ("scheduler.decay_rate", positive, "a positive number such as 0.75"),
    ("scheduler.decay_steps", positive_int, POS_INT.format(100)),
    ("scheduler.staircase", boolean, "true or false"),
    ("model.base_width", positive_int, POS_INT.format(16)),
    ("model.depth", positive_int, POS_INT.format(4)),
    ("model.width", positive_int, POS_INT.format(100)),
    ("model.hidden", positive_int, POS_INT.format(128)),
    ("model.max_width", positive_int, POS_INT.format(512)),
    ("model.widths", list_of(positive_int, non_empty=True), "a list of positive whole numbers such as [32,64,64]"),
    ("model.dropout", fraction, "a number in [0, 1) such as 0.5"),
    ("model.batch_norm", boolean, "true or false"),
    ("model.compile", boolean, "true or false"),
    ("model.deep_supervision", boolean, "true or false"),
    ("model.upsampling", one_of("transpose", "bilinear"), "transpose or bilinear"),
    ("model.variant", one_of("32s", "16s", "8s"), "32s, 16s or 8s"),
    # eval, predict, tune_postprocess, export
    ("device", _device, "auto, cpu, cuda or cuda:<index>"),
    ("split", one_of("auto", "test", "val", "train", "all"), "auto, test, val, train or all"),
    ("worst_k", non_negative_int, "a whole number >= 0 such as 6"),
    ("inference.tile", positive_int, "a positive whole number of pixels such as 512"),
    ("inference.overlap", fraction, "a fraction in [0, 1) such as 0.25"),
    ("inference.batch_size", positive_int, POS_INT.format(4)),
    ("inference.blend", one_of("gaussian", "constant"), "gaussian or constant"),
    ("inference.stitch_device", _device, "auto, cpu, cuda or cuda:<index>"),
    ("devices", positive_int, "a positive whole number of processes such as 2"),
    ("threads", or_null(positive_int), "null or a positive whole number of torch threads per process such as 1"),
    ("shard", non_negative_int, "a whole number >= 0, below num_shards"),
    ("num_shards", positive_int, POS_INT.format(8)),
    ("skip_complete", boolean, "true or false"),
    ("inference.region_by_region", one_of("auto", True, False), "auto, true or false"),
    ("inference.region_above_mpx", positive, "a positive number of megapixels such as 16"),
    ("inference.level", non_negative_int, "a pyramid level: a whole number >= 0 such as 0"),
    ("inference.large_output", one_of("auto", "tiff", "zarr"), "auto, tiff or zarr"),
    ("tta.flips", boolean, "true or false"),
    ("tta.rot90", boolean, "true or false"),
    ("save_probabilities", boolean, "true or false"),
    ("pixel_size", or_null(positive), "null or a positive number of micrometres per pixel such as 0.65"),
    ("objects.exclude_border", boolean, "true or false"),
    ("em_scores", one_of("auto", True, False), "auto, true or false"),
    ("em_thresholds", list_of(probability, non_empty=True), "a non-empty list of probabilities in [0, 1] such as [0.5]"),
    ("em_connectivity", one_of(4, 8), "4 or 8"),
    ("em_background", one_of("segment", "singletons"), "segment or singletons"),
    ("metric", _postprocess_metric, "miou, mdice, pixel_acc, <iou|dice|precision|recall>/<class> or <count_error|ks>/<class>"),
    ("max_seconds", or_null(positive), "null or a positive number of seconds such as 600"),
    ("check_folds", lambda v: _int(v) and (v == 0 or v >= 2), "0 (off) or a whole number of folds >= 2 such as 2"),
    ("grid.thresholds", list_of(probability), "a list of probabilities in [0, 1] such as [0.5,0.7,0.9]"),
    ("grid.median_size", list_of(_odd), "a list of odd whole numbers >= 1 such as [3,5,7]"),
    ("grid.min_object_size", list_of(non_negative_int), "a list of whole numbers >= 0 (pixels) such as [10,30,100]"),
    ("format", one_of(*EXPORT_FORMATS), "one of " + ", ".join(EXPORT_FORMATS)),
    ("opset", positive_int, POS_INT.format(18)),
    ("overwrite", boolean, "true or false"),
    ("check", boolean, "true or false"),
    ("check_size", or_null(list_of(positive_int, length=4)), "null or [N, C, H, W] such as [1,3,200,328]"),
    ("onnx_exporter", one_of(*ONNX_EXPORTERS), "one of " + ", ".join(ONNX_EXPORTERS)),
]

EXPECTED = {key: expected for key, _, expected in RULES}

CKPT_HINT = "ckpt_path=<run>/checkpoints/best.ckpt (a checkpoint segkit.train wrote)"
EXAMPLE_CKPT = "outputs/train/runs/2025-01-31_12-00-00.000000/checkpoints/best.ckpt"

#: task -> (required keys with what to give, usage, what the command does, example)
USAGE: dict[str, tuple[dict[str, str], str, str, str]] = {
    "train": ({}, "python -m segkit.train [group=option ...] [key=value ...]", "trains a segmentation model", "python -m segkit.train lr=1e-3"),
    "eval": (
        {"ckpt_path": CKPT_HINT},
        "python -m segkit.eval ckpt_path=<ckpt | [a.ckpt,b.ckpt]> [data=<name> data.root=<folder>] [split=auto|test|val|train|all]",
        "evaluates a checkpoint (or an ensemble) on a split of its run's data and writes metrics.json, per_image.csv "
        "and eval_report.md into outputs/eval/runs/<time>/",
        f"python -m segkit.eval ckpt_path={EXAMPLE_CKPT} split=test",
    ),
    "predict": (
        {"ckpt_path": CKPT_HINT, "input": "input=<an image file, a folder of images or a glob such as 'scans/*.tif'>"},
        "python -m segkit.predict ckpt_path=<ckpt | [a.ckpt,b.ckpt]> input=<file|dir|glob> [output=<dir>]",
        "predicts a mask for every input image (any size) and writes <stem>_labels.png, <stem>_labels.tif and "
        "<stem>_overlay.png into output (default outputs/predict/runs/<time>/); OME-Zarr inputs and TIFFs over "
        "inference.region_above_mpx megapixels region by region, into tiled <stem>_labels.ome.tif / .ome.zarr",
        f"python -m segkit.predict ckpt_path={EXAMPLE_CKPT} input=scans/ output=masks/",
    ),
    "export": (
        {"ckpt_path": CKPT_HINT},
        "python -m segkit.export ckpt_path=<ckpt> [format=onnx|torchscript] [output=<file>] [overwrite=true]",
        "exports a checkpoint as an ONNX or TorchScript model (uint8 image in, logits out; normalisation inside) "
        "next to the checkpoint",
        f"python -m segkit.export ckpt_path={EXAMPLE_CKPT} format=onnx",
    ),
    "tune_postprocess": (
        {"ckpt_path": CKPT_HINT},
        "python -m segkit.tune_postprocess ckpt_path=<ckpt | [a.ckpt,b.ckpt]> [metric=miou|iou/<class>|count_error/<class>|ks/<class>]",
        "chooses post-processing (class thresholds, median filter, minimum object size) on the validation split and "
        "writes postprocess.json next to the checkpoint",
        f"python -m segkit.tune_postprocess ckpt_path={EXAMPLE_CKPT}",
    ),
}


# ---------------------------------------------------------------- reading the config
def show(value: Any) -> str:
    """A value as the user would type it: strings quoted, ``null``, ``true``/``false``."""
    if isinstance(value, str):
        return f"'{value}'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r"^\w+ raised while resolving interpolation: ", "", text).strip('"')
    return text[:1].lower() + text[1:]


class _Unresolved(Exception):
    def __init__(self, key: str, raw: Any, err: Exception | None):
        super().__init__(key)
        self.key, self.raw, self.err = key, raw, err  # err None: ``???``


def _raw(node: DictConfig | ListConfig, key: Any) -> Any:
    child = node._get_node(key, validate_access=False)
    return child._value() if child is not None else None


def _lookup(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(present, resolved plain value) of a dotted key; raises :class:`_Unresolved`."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or node._get_node(part, validate_access=False) is None:
            return False, None
        here = ".".join(parts[: i + 1])
        if OmegaConf.is_missing(node, part):
            raise _Unresolved(here, "???", None)
        try:
            value = node[part]
            if i == len(parts) - 1 and isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as err:
            raise _Unresolved(here, _raw(node, part), err) from None
        node = value
    return True, node


def _unresolved(node: DictConfig | ListConfig, prefix: str = "") -> list[_Unresolved]:
    """Every value below ``node`` that is ``???`` or does not resolve."""
    found: list[_Unresolved] = []
    keys = list(node.keys()) if isinstance(node, DictConfig) else list(range(len(node)))
    for k in keys:
        full = f"{prefix}[{k}]" if isinstance(node, ListConfig) else f"{prefix}.{k}" if prefix else str(k)
        if OmegaConf.is_missing(node, k):
            found.append(_Unresolved(full, "???", None))
            continue
        try:
            value = node[k]
        except OmegaConfBaseException as err:
            found.append(_Unresolved(full, _raw(node, k), err))
            continue
        if isinstance(value, DictConfig | ListConfig):
            found += _unresolved(value, full)
    return found


def _culprit(found: list[_Unresolved]) -> _Unresolved:
    """The value to blame: the first that does not merely refer to another unresolved key
    (``data.root: ${paths.data_dir}/x`` fails because ``paths.data_dir`` does)."""
    keys = [u.key for u in found]
    for u in found:
        refs = re.findall(r"\$\{([^}:]+)\}", u.raw) if isinstance(u.raw, str) else []
        if not any(r == k or k.startswith(r + ".") or r.startswith(k + ".") for r in refs for k in keys if k != u.key):
            return u
    return found[0]


def _unresolved_sentence(u: _Unresolved, expected: str | None = None) -> str:
    if u.err is None:
        return f"{u.key} is not set (???); expected {expected or f'a value, e.g. {u.key}=<value> on the command line'}"
    expected = expected or "a plain value or an interpolation that names an existing key, such as ${paths.root_dir}"
    return f"{u.key} is {show(u.raw)}, which does not resolve ({_reason(u.err)}); expected {expected}"


def usage(task: str) -> str:
    _, line, does, example = USAGE[task]
    return f"usage: {line}\n  {does[:1].upper() + does[1:]}.\n  example: {example}"


def _unset(value: Any) -> bool:
    return value is None or value == "" or isinstance(value, list) and not value


# ---------------------------------------------------------------- the check
def check_config(cfg: DictConfig, task: str) -> None:
    """Raise :class:`SegkitError` with one sentence for the first bad value of ``cfg`` (the config of
    ``python -m segkit.<task>``); a missing required key gives the command's usage after the sentence."""
    required = USAGE.get(task, ({}, "", "", ""))[0]
    unset = []
    for key in required:
        try:
            present, value = _lookup(cfg, key)
        except _Unresolved as u:
            if u.err is not None:
                raise SegkitError(_unresolved_sentence(u, required[key]) + "\n" + usage(task)) from None
            present, value = True, None
        if present and _unset(value):
            unset.append(key)
    if unset:
        names = " and ".join(unset)
        raise SegkitError(f"{names} {'is' if len(unset) == 1 else 'are'} not set; expected "
                          f"{' and '.join(required[k] for k in unset)}\n{usage(task)}")

    found = _unresolved(cfg)
    if found:
        bad = _culprit(found)
        raise SegkitError(_unresolved_sentence(bad, EXPECTED.get(bad.key)))
    for key, ok, expected in RULES:
        present, value = _lookup(cfg, key)
        if present and not ok(value):
            raw = _raw_of(cfg, key)
            origin = f" (from {raw})" if isinstance(raw, str) and "${" in raw and raw != value else ""
            raise SegkitError(f"{key} is {show(value)}{origin}; expected {expected}")
    _check_together(cfg)


def _raw_of(cfg: DictConfig, key: str) -> Any:
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return _raw(node, last) if isinstance(node, DictConfig) else None


def _check_together(cfg: DictConfig) -> None:
    """Values that are fine alone but not together (each already passed its own rule)."""
    def get(key: str) -> Any:
        return _lookup(cfg, key)[1]

    data = cfg.get("data") if isinstance(cfg.get("data", None), DictConfig) else None
    if data is None:
        return
    val, test, fold = get("data.val_fraction"), get("data.test_fraction"), get("data.fold")
    if fold is None and _number(val) and _number(test) and val + test >= 1:
        raise SegkitError(f"data.val_fraction {show(val)} and data.test_fraction {show(test)} add up to {val + test:g}; "
                          "expected a sum below 1 so that images are left for training")
    folds = get("data.num_folds")
    if _int(fold) and _int(folds) and fold >= folds:
        raise SegkitError(f"data.fold is {fold} with data.num_folds={folds}; expected a fold index 0..{folds - 1}")
    weights, classes = get("loss.class_weights"), get("data.num_classes")
    if isinstance(weights, list) and _int(classes) and len(weights) != classes:
        raise SegkitError(f"loss.class_weights has {len(weights)} values {weights}; expected {classes} "
                          "(one per class of data.class_names), or auto")
