"""Export a checkpoint for deployment: ``python -m segkit.export ckpt_path=<ckpt> format=onnx|torchscript``.

The exported model takes what :meth:`SegNetwork.forward` takes, a uint8 image batch ``[N, C, H, W]`` with
any batch size, height and width, and returns float logits ``[N, K, H, W]``: normalisation with the
training split's mean/std, padding to the network stride (reflect, or replicate where the image is
smaller than the padding, exactly as :func:`segkit.models.network.pad_to_stride`) and the crop back are all
inside the exported graph. Metadata (class names, mean/std, channels, classes, stride, segkit version,
source checkpoint) travels in the file: ONNX ``metadata_props`` (JSON strings), TorchScript extra file
``segkit.json``; :func:`read_metadata` reads both. With ``check=true`` the exported model is run on random
inputs of two sizes (one not a multiple of the stride) and compared with the PyTorch module; the result
goes to ``export.json`` beside the output.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import segkit
from segkit.errors import SegkitError
from segkit.inference.load import load_network
from segkit.models import PatchCNN
from segkit.models.network import SegNetwork, gather_pad

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_FILE = "segkit.json"  # the TorchScript extra file
ATOL = RTOL = 1e-4
ARGMAX_AGREEMENT = 0.9999


class _GatherPadPatchCNN(nn.Module):
    """:class:`segkit.models.PatchCNN` with its reflect/replicate input padding as :func:`gather_pad`."""

    def __init__(self, net: PatchCNN) -> None:
        super().__init__()
        self.features, self.classifier, self.pad = net.features, net.classifier, int(net.pad)
        self.output_stride = net.output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        return self.classifier(self.features(gather_pad(x, p, p, p, p)))


class _ScatterUnpool2d(nn.Module):
    """``nn.MaxUnpool2d`` as a scatter into a zero plane: the same values, but traceable with dynamic sizes
    (``F.max_unpool2d`` checks its output size with Python comparisons that break ``torch.jit.trace``)."""

    def __init__(self, unpool: nn.MaxUnpool2d) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = (nn.modules.utils._pair(v) for v in (unpool.kernel_size, unpool.stride, unpool.padding))

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        if output_size is None:
            oh = (h - 1) * self.stride[0] - 2 * self.padding[0] + self.kernel_size[0]
            ow = (w - 1) * self.stride[1] - 2 * self.padding[1] + self.kernel_size[1]
        else:
            oh, ow = output_size[-2], output_size[-1]
        out = x.new_zeros(n, c, oh * ow).scatter(2, indices.flatten(2), x.flatten(2))
        return out.view(n, c, oh, ow)


def _traceable(net: nn.Module) -> nn.Module:
    """``net`` with every ``nn.MaxUnpool2d`` replaced by :class:`_ScatterUnpool2d` (in place)."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.MaxUnpool2d):
            setattr(net, name, _ScatterUnpool2d(child))
        else:
            _traceable(child)
    return net


def export_network(network: SegNetwork, traceable: bool = False) -> SegNetwork:
    """A copy of ``network`` for an exported graph: float32 on the CPU, NCHW, and padding by an index gather
    (:func:`segkit.models.network.gather_pad`, the same reflect/replicate rule as ``SegNetwork.forward``)
    without Python branches on the input size, so batch, height and width stay dynamic. ``traceable``
    also swaps max-unpooling for an equal scatter that ``torch.jit.trace`` keeps dynamic."""
    net = copy.deepcopy(network.net).float().cpu().eval().to(memory_format=torch.contiguous_format)
    for m in net.modules():  # model.compile=true: export the plain network
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    if isinstance(net, PatchCNN):
        net = _GatherPadPatchCNN(net)
    if traceable:  # for torch.jit.trace
        _traceable(net)
    meta = network.metadata()
    return SegNetwork(net, network.class_names, meta["norm_mean"], meta["norm_std"], channels_last=False,
                      traceable=True, model_spec=network.model_spec).eval()


def metadata(network: SegNetwork, ckpt: Path) -> dict[str, Any]:
    """What a deployment needs to feed the model and read its output."""
    meta = network.metadata()
    return {
        "segkit_version": segkit.__version__,
        "source_checkpoint": str(ckpt.resolve()),
        **{k: meta[k] for k in ("class_names", "num_classes", "in_channels", "norm_mean", "norm_std")},
        "norm_units": "mean/std of image/255 (the model divides the uint8 input by 255, then normalises)",
        "stride": meta["stride"],
        "model": str(meta["model"]),
        "input": "uint8 image [N, C, H, W], any N, H, W",
        "output": "float32 logits [N, K, H, W] (argmax over K = class ids; softmax = probabilities)",
    }


# ---------------------------------------------------------------------------------------------- formats
def _sample(size: Sequence[int]) -> torch.Tensor:
    return torch.randint(0, 256, tuple(int(v) for v in size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


ONNX_EXPORTERS = ("dynamo", "legacy")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and INFO logs (Hydra sets the root logger to INFO)."""
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")]
    # onnx_ir warns about empty attribute lists it resolves itself
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(module: SegNetwork, meta: dict[str, Any], out: Path, opset: int, example: torch.Tensor, exporter: str = "dynamo") -> str:
    """Write ``out`` with dynamic batch/height/width and the metadata; returns the exporter used.

    ``dynamo``: ``torch.onnx.export(dynamo=True)`` with ``Dim.DYNAMIC`` shapes (torch's default; slow: seconds
    to a minute). ``legacy``: the TorchScript-based exporter with ``dynamic_axes`` (fast; deprecated by torch).
    Both work for every segkit model; where the chosen one fails, the other is tried.
    """
    import onnx

    errors = []
    for name in (exporter, *(e for e in ONNX_EXPORTERS if e != exporter)):
        try:
            wrapper = export_network(module, traceable=name == "legacy")
            print(f"Exporting to ONNX with the {name} exporter" + (" (can take a minute)" if name == "dynamo" else ""), flush=True)
            with warnings.catch_warnings(), torch.no_grad(), _quiet():
                warnings.simplefilter("ignore")
                if name == "dynamo":
                    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
                    program = torch.onnx.export(wrapper, (example,), None, dynamo=True, input_names=["image"], output_names=["logits"],
                                                opset_version=opset, dynamic_shapes={"image": dims}, verbose=False)
                    program.save(str(out), external_data=False)
                else:
                    axes = {0: "batch", 2: "height", 3: "width"}
                    torch.onnx.export(wrapper, (example,), str(out), dynamo=False, input_names=["image"], output_names=["logits"],
                                      opset_version=opset, external_data=False, dynamic_axes={"image": axes, "logits": axes})
            break
        except Exception as err:  # noqa: BLE001 - try the other exporter, report both if neither works
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            errors.append(f"{name} exporter: {type(err).__name__}: {first}")
            print(f"ONNX export with the {name} exporter failed ({type(err).__name__}: {first})", flush=True)
    else:
        raise SegkitError(f"ONNX export of '{meta['source_checkpoint']}' failed ({'; '.join(errors)}); expected format=torchscript to work instead")
    model = onnx.load(str(out))
    _set_onnx_metadata(model, meta)
    onnx.save(model, str(out))
    return name


def _set_onnx_metadata(model: Any, meta: dict[str, Any]) -> None:
    del model.metadata_props[:]
    for key, value in {**meta, "segkit": meta}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)


def export_torchscript(wrapper: SegNetwork, meta: dict[str, Any], out: Path, example: torch.Tensor) -> str:
    """Trace ``wrapper`` (sizes are traced symbolically: the check runs it at other sizes)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    torch.jit.save(traced, str(out), _extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    return "torch.jit.trace"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The segkit metadata of an exported ``.onnx`` or TorchScript file, as a dict."""
    path = Path(path)
    if not path.is_file():
        raise SegkitError(f"'{path}' does not exist; expected a file written by segkit.export")
    with path.open("rb") as fh:
        zipped = fh.read(2) == b"PK"  # TorchScript files are zip archives
    if path.suffix.lower() == ".onnx" or not zipped:
        import onnx

        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as err:  # noqa: BLE001
            raise SegkitError(f"'{path}' is not an ONNX file ({type(err).__name__}); expected a .onnx or .pt written by segkit.export") from None
        if "segkit" not in props:
            raise SegkitError(f"'{path}' has no segkit metadata; expected an ONNX file written by segkit.export")
        return json.loads(props["segkit"])
    files = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except Exception as err:  # noqa: BLE001
        raise SegkitError(f"'{path}' is not a TorchScript file ({type(err).__name__}); expected a .onnx or .pt written by segkit.export") from None
    if not files[METADATA_FILE]:
        raise SegkitError(f"'{path}' has no {METADATA_FILE}; expected a TorchScript file written by segkit.export")
    return json.loads(files[METADATA_FILE])


def load_exported(path: str | Path, fmt: str | None = None) -> Any:
    """A callable ``uint8 numpy/tensor [N, C, H, W] -> float32 numpy logits [N, K, H, W]`` for an exported
    file (``fmt``: onnx | torchscript; default from the suffix)."""
    path = Path(path)
    if (fmt or ("onnx" if path.suffix.lower() == ".onnx" else "torchscript")) == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda image: session.run(None, {name: np.ascontiguousarray(np.asarray(image, dtype=np.uint8))})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location="cpu").eval()

    def run(image: Any) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(image, dtype=np.uint8))).numpy()

    return run


# ---------------------------------------------------------------------------------------------- check
def check_sizes(check_size: Sequence[int], stride: int) -> list[list[int]]:
    """The sizes checked: ``check_size``, then batch 2 at about half its size, not a multiple of the stride."""
    n, c, h, w = (int(v) for v in check_size)

    def off_stride(v: int) -> int:
        return v + 3 if stride > 1 and v % stride == 0 else v

    return [[n, c, h, w], [2, c, off_stride(max(h // 2, 8) + 1), off_stride(max(w // 2, 8) + 3)]]


def compare(exported: Any, wrapper: SegNetwork, module: SegNetwork, sizes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Run the exported model and PyTorch on random uint8 inputs; max abs diffs and argmax agreement."""
    module = module.eval().cpu()
    rows = []
    for k, size in enumerate(sizes):
        image = torch.randint(0, 256, tuple(size), dtype=torch.uint8, generator=torch.Generator().manual_seed(k + 1))
        with torch.no_grad():
            ref = module(image).float()
            ref_wrapper = wrapper(image)
        out = torch.from_numpy(np.asarray(exported(image.numpy())))
        if tuple(out.shape) != tuple(ref.shape):
            raise SegkitError(f"the exported model returned shape {list(out.shape)} for input {list(size)}; expected {list(ref.shape)}")
        diff = float((out - ref).abs().max())
        scale = float(ref.abs().max())
        close = diff <= ATOL + RTOL * scale  # float32 rounding grows with the logits' magnitude
        agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
        rows.append({"size": list(size), "max_abs_diff": diff, "max_abs_diff_wrapper_vs_segmodule": float((ref_wrapper - ref).abs().max()),
                     "within_tolerance": close, "argmax_agreement": agree, "logit_scale": scale})
    return {"sizes": rows, "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            "passed": all(r["within_tolerance"] and r["argmax_agreement"] >= ARGMAX_AGREEMENT for r in rows)}


# ---------------------------------------------------------------------------------------------- CLI
def output_path(ckpt: Path, fmt: str, output: Any, overwrite: bool) -> Path:
    out = Path(str(output)) if output else ckpt.with_suffix(FORMATS[fmt])
    if out.exists() and not overwrite:
        raise SegkitError(f"output '{out}' already exists; expected a new path (output=...) or overwrite=true")
    if out.is_dir():
        raise SegkitError(f"output '{out}' is a directory; expected a file path ending in {FORMATS[fmt]}")
    return out


def export(ckpt_path: str | Path, fmt: str = "onnx", output: str | Path | None = None, opset: int = 18, check: bool = True,
           check_size: Sequence[int] | None = None, overwrite: bool = False, onnx_exporter: str = "dynamo") -> dict[str, Any]:
    """Export ``ckpt_path``; returns the summary written to ``export.json``."""
    started = time.perf_counter()
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise SegkitError(f"format is '{fmt}'; expected one of {', '.join(FORMATS)}")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise SegkitError(f"onnx_exporter is '{onnx_exporter}'; expected one of {', '.join(ONNX_EXPORTERS)}")
    ckpt = Path(str(ckpt_path))
    size = [int(v) for v in check_size] if check_size is not None else None
    if size is not None and (len(size) != 4 or min(size) < 1):
        raise SegkitError(f"check_size is {size}; expected [N, C, H, W] with positive values, e.g. [1, 3, 200, 328]")
    module = load_network(ckpt, torch.device("cpu"))
    meta = metadata(module, ckpt)
    c, s = meta["in_channels"], meta["stride"]
    size = size or [1, c, 200, 328]
    if size[1] != c:
        raise SegkitError(f"check_size is {size}; expected [N, {c}, H, W] (the model takes {c} channels)")
    out = output_path(ckpt, fmt, output, overwrite)
    wrapper = export_network(module)  # the check also reports how far it is from SegNetwork.forward
    # Trace/export at a size that is not a multiple of the stride, so the padding is traced too.
    example = _sample([2, c, max(2 * s, 8) + 3, max(3 * s, 8) + 5])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.part{out.suffix}")  # moved into place once written (and checked)
    try:
        exporter = (export_onnx(module, meta, tmp, int(opset), example, onnx_exporter) if fmt == "onnx"
                    else export_torchscript(export_network(module, traceable=True), meta, tmp, example))
        summary: dict[str, Any] = {"format": fmt, "path": str(out), "exporter": exporter, "checkpoint": str(ckpt),
                                   "opset": int(opset) if fmt == "onnx" else None, "metadata": meta, "size_bytes": tmp.stat().st_size}
        if check:
            result = compare(load_exported(tmp, fmt), wrapper, module, check_sizes(size, s))
            summary["check"] = {"atol": ATOL, "rtol": RTOL, "min_argmax_agreement": ARGMAX_AGREEMENT, **result}
            for row in result["sizes"]:
                print(f"check {row['size']}: max |exported - PyTorch| = {row['max_abs_diff']:.3g} "
                      f"(logits up to {row['logit_scale']:.3g}), argmax agreement {row['argmax_agreement']:.6f}", flush=True)
        summary["wall_time_s"] = round(time.perf_counter() - started, 2)
        if check and not summary["check"]["passed"]:
            summary["path"] = None
            (out.parent / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
            bad = [r for r in summary["check"]["sizes"] if not (r["within_tolerance"] and r["argmax_agreement"] >= ARGMAX_AGREEMENT)][0]
            raise SegkitError(f"the {fmt} export of '{ckpt}' differs from PyTorch at input {bad['size']} (max abs diff {bad['max_abs_diff']:.3g}, "
                              f"argmax agreement {bad['argmax_agreement']:.6f}), so '{out}' was not written; expected max abs diff <= "
                              f"{ATOL} + {RTOL} x max |logit| and argmax agreement >= {ARGMAX_AGREEMENT} (details in {out.parent / 'export.json'})")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    (out.parent / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"Exported {fmt} ({exporter}) to {out}" + (f"; max abs diff {summary['check']['max_abs_diff']:.3g}" if check else ""), flush=True)
    return summary
