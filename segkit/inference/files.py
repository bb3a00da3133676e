"""Predicting image files into an output folder (``segkit.predict``): input listing, pixel sizes from TIFF
metadata, label maps (PNG, ImageJ TIFF with class names), overlays, probabilities and object tables."""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from segkit import rundir
from segkit.data.io import IMAGE_SUFFIXES, read_array, to_image
from segkit.errors import SegkitError
from segkit.inference.load import load_network, resolve_device, run_data_config
from segkit.inference.overlay import overlay
from segkit.inference.predictor import make_predictor
from segkit.logs import say


def list_inputs(spec: str) -> list[Path]:
    """An image file, the images of a directory, or the images matching a glob."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SegkitError(f"input directory '{path}' holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
        return files
    files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SegkitError(f"input '{spec}' is not a file, a directory or a glob matching images; expected e.g. input=scans/ or input='scans/*.tif'")
    return files


def pixel_size_of(path: Path) -> float | None:
    """Micrometres per pixel from TIFF resolution tags (ImageJ unit 'micron'/'um'), when present."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            res = page.tags.get("XResolution")
            unit = (tif.imagej_metadata or {}).get("unit", "")
            if res is None or str(unit).lower() not in ("micron", "um", "µm", "\\u00B5m"):
                return None
            num, den = res.value
            return float(den) / float(num) if num else None
    except Exception:  # noqa: BLE001 - metadata is optional
        return None


def load_postprocess(cfg_value: Any, ckpt: Path) -> tuple[dict | None, str]:
    if cfg_value is not None:
        return (OmegaConf.to_container(cfg_value, resolve=True) if isinstance(cfg_value, DictConfig) else dict(cfg_value)), "postprocess=... on the command line"
    tuned = rundir.postprocess_file(ckpt)
    if tuned.is_file():
        try:
            return json.loads(tuned.read_text())["postprocess"], f"{tuned} (segkit.tune_postprocess)"
        except (OSError, ValueError, KeyError) as err:
            raise SegkitError(f"cannot read '{tuned}': {err}; expected the file segkit.tune_postprocess writes (delete it to predict without)") from None
    return None, "none (argmax)"


def save_labels(labels: np.ndarray, class_names: Sequence[str], out: Path, stem: str, pixel_size: float | None) -> None:
    import tifffile

    if len(class_names) <= 256:
        Image.fromarray(labels.astype(np.uint8)).save(out / f"{stem}_labels.png")
    info = "class ids: " + ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
    kwargs: dict[str, Any] = {"imagej": True, "metadata": {"Info": info, "Labels": [info]}}
    if pixel_size:
        kwargs["resolution"] = (1.0 / pixel_size, 1.0 / pixel_size)
        kwargs["metadata"]["unit"] = "um"
    tifffile.imwrite(out / f"{stem}_labels.tif", labels.astype(np.uint8 if len(class_names) <= 256 else np.uint16), **kwargs)


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    ckpts = [Path(str(p)) for p in (cfg.ckpt_path if isinstance(cfg.ckpt_path, ListConfig | list | tuple) else [cfg.ckpt_path])]
    device = resolve_device(str(cfg.device))
    modules = [load_network(p, device) for p in ckpts]
    names = modules[0].class_names
    for p, m in zip(ckpts[1:], modules[1:], strict=True):
        if m.class_names != names:
            raise SegkitError(f"checkpoint '{p}' predicts {m.class_names} but '{ckpts[0]}' predicts {names}; expected an ensemble over the same classes")
    in_channels = int(modules[0].norm_mean.shape[1])
    files = list_inputs(str(cfg.input))
    out = Path(str(cfg.output)) if cfg.get("output") else Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    post, post_source = load_postprocess(cfg.get("postprocess"), ckpts[0])
    data_cfg = run_data_config(ckpts[0])  # checked by load_network
    object_classes, edge_class = list(data_cfg.get("object_classes") or []), data_cfg.get("edge_class")
    inference = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else {}
    tta = OmegaConf.to_container(cfg.tta, resolve=True) if cfg.get("tta") else {}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from segkit.inference import postprocess

    pooled_rows: list[dict] = []
    done = []
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    bar.start()
    images_task = bar.add_task("images", total=len(files))
    tiles_task = bar.add_task("tiles of this image", total=1)

    def on_tiles(done_tiles: int, total_tiles: int) -> None:
        bar.update(tiles_task, completed=done_tiles, total=total_tiles)

    try:
        for path in files:
            image = to_image(read_array(path), path, in_channels)
            h, w = image.shape[:2]
            bar.update(tiles_task, completed=0, description=f"tiles of {path.name}")
            predictor = make_predictor(modules, inference, tta, h * w, progress=on_tiles)
            with torch.inference_mode():
                probs = predictor(torch.from_numpy(image).permute(2, 0, 1))
            probs_np = probs.numpy()
            labels = postprocess(probs_np, post) if post else probs_np.argmax(0).astype(np.uint8)
            stem = path.stem
            px = float(cfg.pixel_size) if cfg.get("pixel_size") else pixel_size_of(path)
            save_labels(labels, names, out, stem, px)
            rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
            Image.fromarray(overlay(rgb, labels)).save(out / f"{stem}_overlay.png")
            if cfg.get("save_probabilities"):
                np.save(out / f"{stem}_probs.npy", probs_np.astype(np.float32))
            if object_classes:
                from segkit.evaluation.object_report import class_ids
                from segkit.evaluation.objects import instances, object_table, write_objects_csv

                ids = class_ids(object_classes, names, "data.object_classes")
                edge = class_ids([edge_class], names, "data.edge_class")[0] if edge_class else None
                inst, inst_cls = instances(labels, ids, edge)
                rows = object_table(inst, inst_cls, names, px, stem)
                write_objects_csv(rows, out / f"{stem}_objects.csv")
                pooled_rows += rows
            done.append({"image": str(path), "size": [h, w], "pixel_size_um": px})
            bar.update(images_task, advance=1)
    finally:
        bar.stop()
    if object_classes:
        from segkit.evaluation.objects import write_objects_csv

        write_objects_csv(pooled_rows, out / "objects.csv")
    summary = {"checkpoints": [str(p) for p in ckpts], "postprocess": post, "postprocess_source": post_source, "tta": tta,
               "inference": inference, "images": done, "wall_time_s": round(time.perf_counter() - started, 2)}
    (out / "predict.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"{len(done)} images predicted with {len(ckpts)} checkpoint(s); post-processing: {post_source}")
    say(f"Output directory: {out}")
    return {"output": out, "files": files, "summary": summary}
