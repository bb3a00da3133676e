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
    from segkit.inference.large import is_zarr

    def image(p: Path) -> bool:
        return (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or is_zarr(p)

    path = Path(spec)
    if path.is_file() or is_zarr(path):
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if image(p))
        if not files:
            raise SegkitError(f"input directory '{path}' holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)} or OME-Zarr directories")
        return files
    files = sorted(Path(p) for p in glob.glob(spec) if image(Path(p)))
    if not files:
        raise SegkitError(f"input '{spec}' is not a file, a directory or a glob matching images; expected e.g. input=scans/ or input='scans/*.tif'")
    return files


def pixel_size_of(path: Path) -> float | None:
    """Micrometres per pixel from TIFF metadata (OME ``PhysicalSizeX`` or ImageJ resolution tags in microns),
    when present: the same reading as the region-by-region path (:func:`segkit.inference.large.tiff_pixel_size`)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile

        from segkit.inference.large import tiff_pixel_size

        with tifffile.TiffFile(path) as tif:
            return tiff_pixel_size(tif)
    except Exception:  # noqa: BLE001 - metadata is optional
        return None


def load_postprocess(cfg_value: Any, ckpts: Path | Sequence[Path]) -> tuple[dict | None, str]:
    """The post-processing to apply: ``cfg_value`` when given, else the tuned record of this checkpoint (or of
    this ensemble, in any order: ``segkit.tune_postprocess ckpt_path=[...]``), else None (argmax)."""
    if cfg_value is not None:
        return (OmegaConf.to_container(cfg_value, resolve=True) if isinstance(cfg_value, DictConfig) else dict(cfg_value)), "postprocess=... on the command line"
    tuned = rundir.postprocess_file(ckpts)  # not segkit.evaluation: its metrics import torchmetrics (seconds)
    if tuned.is_file():
        try:
            return json.loads(tuned.read_text())["postprocess"], f"{tuned} (segkit.tune_postprocess)"
        except (OSError, ValueError, KeyError) as err:
            raise SegkitError(f"cannot read '{tuned}': {err}; expected the file segkit.tune_postprocess writes (delete it to predict without)") from None
    return None, "none (argmax)"


def save_labels(labels: np.ndarray, class_names: Sequence[str], out: Path, stem: str, pixel_size: float | None) -> None:
    import tifffile

    if len(class_names) <= 256:
        Image.fromarray(labels.astype(np.uint8)).save(atomic_path(out / f"{stem}_labels.png"))
        _publish(out / f"{stem}_labels.png")
    from segkit.inference.large import class_description

    info = class_description(class_names)
    kwargs: dict[str, Any] = {"imagej": True, "metadata": {"Info": info, "Labels": [info]}}
    if pixel_size:
        kwargs["resolution"] = (1.0 / pixel_size, 1.0 / pixel_size)
        kwargs["metadata"]["unit"] = "um"
    tifffile.imwrite(atomic_path(out / f"{stem}_labels.tif"), labels.astype(np.uint8 if len(class_names) <= 256 else np.uint16), **kwargs)
    _publish(out / f"{stem}_labels.tif")


def by_regions(path: Path, inference: dict) -> bool:
    """Whether ``path`` is predicted region by region (``inference.region_by_region``, see conf/predict.yaml)."""
    from segkit.inference.large import is_zarr

    setting = inference.get("region_by_region", "auto")
    tiff = path.suffix.lower() in (".tif", ".tiff")
    if setting is False:
        return False
    if setting is True:
        if not (tiff or is_zarr(path)):
            raise SegkitError(f"inference.region_by_region=true but '{path}' is neither a TIFF nor an OME-Zarr directory; "
                              "expected .tif/.tiff or .zarr inputs (or region_by_region=auto)")
        return True
    if is_zarr(path):
        return True
    if not tiff:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            axes, shape = tif.series[0].axes, tif.series[0].shape
    except (OSError, ValueError, tifffile.TiffFileError):
        return False  # read_array reports the problem in one sentence
    pixels = shape[axes.index("Y")] * shape[axes.index("X")] if "Y" in axes and "X" in axes else 0
    return pixels > float(inference.get("region_above_mpx", 16)) * 1e6


#: per-image records (``records/<stem>.json``), written last and atomically: an image with one is complete
RECORDS = "records"


def atomic_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (the suffix kept, for writers that read it)."""
    return path.with_name(f".{path.stem}.part{path.suffix}")


def _publish(path: Path) -> None:
    atomic_path(path).replace(path)


def shard_of(files: list[Path], shard: int, num_shards: int) -> list[Path]:
    """The images of shard ``shard`` of ``num_shards``: every ``num_shards``-th of the sorted list."""
    if not (0 <= shard < num_shards):
        raise SegkitError(f"shard is {shard} with num_shards={num_shards}; expected 0 <= shard < num_shards")
    return files[shard::num_shards]


def settings_fingerprint(ckpts: Sequence[Path], inference: dict, tta: dict, post: dict | None, save_probs: bool) -> str:
    """What decides an image's outputs: a record made with other settings does not count as complete."""
    import hashlib

    text = json.dumps({"checkpoints": [str(Path(p).resolve()) for p in ckpts], "inference": inference, "tta": tta, "post": post,
                       "probs": save_probs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def complete_records(out: Path, fingerprint: str | None = None) -> dict[str, dict]:
    """``image path -> record`` of the images already complete in ``out`` (with ``fingerprint``, if given)."""
    found: dict[str, dict] = {}
    folder = out / RECORDS
    if not folder.is_dir():
        return found
    for rec_path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            continue  # a record is written atomically: an unreadable one is not ours
        if fingerprint is None or rec.get("fingerprint") == fingerprint:
            found[str(rec.get("image"))] = rec
    return found


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """``segkit.predict``: the inputs of this shard, each image's outputs written atomically with its record
    last; images complete from an earlier run with the same settings are skipped; ``devices=N`` runs N
    processes (a GPU each, or the CPU cores shared) on interleaved shares and merges their outputs."""
    started = time.perf_counter()
    files = list_inputs(str(cfg.input))
    num_shards, shard = int(cfg.get("num_shards", 1)), int(cfg.get("shard", 0))
    files = shard_of(files, shard, num_shards)
    out = Path(str(cfg.output)) if cfg.get("output") else Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    devices = int(cfg.get("devices", 1))
    if devices > 1:
        return _run_processes(cfg, files, out, devices, started)
    if cfg.get("threads") is not None:
        torch.set_num_threads(int(cfg.threads))
    result = predict_files(cfg, files, out)
    if num_shards == 1:
        summary = merge_outputs(out, extra=result["settings"], wall_time_s=round(time.perf_counter() - started, 2))
    else:
        summary = {**result["settings"], "images": result["images"]}
        say(f"shard {shard} of {num_shards} done; when every shard is, merge with: python -m segkit.merge {out}")
    say(f"{result['predicted']} images predicted ({result['skipped']} complete already, skipped) with "
        f"{len(result['settings']['checkpoints'])} checkpoint(s); post-processing: {result['settings']['postprocess_source']}")
    say(f"Output directory: {out}")
    return {"output": out, "files": files, "summary": summary}


def _worker(cfg_container: dict, files: list[str], out: str, rank: int, threads: int, queue: Any) -> None:
    try:
        torch.set_num_threads(max(1, threads))
        cfg = OmegaConf.create(cfg_container)
        if torch.cuda.is_available() and str(cfg.device) in ("auto", "cuda"):
            cfg.device = f"cuda:{rank % torch.cuda.device_count()}"
        result = predict_files(cfg, [Path(f) for f in files], Path(out), quiet=True)
        queue.put((rank, None, result["predicted"], result["skipped"]))
    except BaseException as err:  # noqa: BLE001 - reported by the parent in one sentence
        queue.put((rank, f"{type(err).__name__}: {err}" if not isinstance(err, SegkitError) else str(err), 0, 0))


def start_method(device: str, threads: int) -> str:
    """How the prediction processes start. On a GPU: ``spawn`` (a forked CUDA context is unusable). On the CPU
    with one thread per process: ``fork``, so that each process inherits the parent's imports instead of paying
    them again (seconds per process); safe as in DataLoader workers, because a single-threaded process never
    enters the OpenMP pool the parent may have started. Several threads per process: ``spawn`` (a forked
    child's OpenMP pool can hang, pytorch#17199)."""
    import multiprocessing as mp

    if resolve_device(device).type != "cpu" or threads > 1 or "fork" not in mp.get_all_start_methods():
        return "spawn"
    return "fork"


def _run_processes(cfg: DictConfig, files: list[Path], out: Path, devices: int, started: float) -> dict[str, Any]:
    """``devices`` worker processes on interleaved shares of ``files``; the outputs merged after. A process
    that dies without a report (killed, out of memory) is named with its exit code instead of being waited
    for, after the others have finished their shares."""
    import multiprocessing as mp
    import os
    import queue as queues

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(cfg.threads) if cfg.get("threads") is not None else max(1, cores // devices)
    container = OmegaConf.to_container(cfg, resolve=True)
    container["devices"] = 1
    method = start_method(str(cfg.get("device", "auto")), threads)
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(container, [str(f) for f in files[r::devices]], str(out), r, threads, queue))
             for r in range(devices)]
    for p in procs:
        p.start()
    reports: dict[int, tuple] = {}
    while len(reports) < devices:
        try:
            rep = queue.get(timeout=1.0)
            reports[rep[0]] = rep
        except queues.Empty:
            for r, p in enumerate(procs):  # the others finish their shares: what they complete is kept
                if r not in reports and p.exitcode not in (None, 0):
                    reports[r] = (r, f"it exited with code {p.exitcode} before it finished (killed, or out of memory?); the images "
                                     "complete in output= are kept and a rerun with the same output= skips them", 0, 0)
    for p in procs:
        p.join()
    failed = [(r, msg) for r, msg, _, _ in reports.values() if msg]
    if failed:
        rank, msg = sorted(failed)[0]
        raise SegkitError(f"prediction process {rank} of {devices} failed: {msg}")
    predicted, skipped = sum(r[2] for r in reports.values()), sum(r[3] for r in reports.values())
    summary = merge_outputs(out, extra={"devices": devices, "threads_per_process": threads, "start_method": method},
                            wall_time_s=round(time.perf_counter() - started, 2))
    say(f"{predicted} images predicted by {devices} processes ({threads} thread(s) each, started by {method}; "
        f"{skipped} complete already, skipped)")
    say(f"Output directory: {out}")
    return {"output": out, "files": files, "summary": summary}


def merge_outputs(out: Path, extra: dict | None = None, wall_time_s: float | None = None) -> dict[str, Any]:
    """``predict.json`` (every complete image's record) and the pooled ``objects.csv`` of ``out``, from the
    per-image records and object tables: what a sharded or many-process prediction ends with."""
    records = sorted(complete_records(out).values(), key=lambda r: r["image"])
    if not records:
        raise SegkitError(f"'{out}' holds no complete predictions ({RECORDS}/*.json); expected the output folder of segkit.predict")
    fingerprints = sorted({r.get("fingerprint") for r in records})
    if len(fingerprints) > 1:
        raise SegkitError(f"'{out}' holds predictions made with {len(fingerprints)} different settings (checkpoints, inference, tta, "
                          "post-processing); expected one prediction per output folder")
    settings = dict(records[0].get("settings", {}))
    settings.update(extra or {})
    tables = [out / r["objects"] for r in records if r.get("objects")]
    if tables:
        _pool_csv(tables, out / "objects.csv")
    summary = {**settings, "images": [r["entry"] for r in records]}
    if wall_time_s is not None:
        summary["wall_time_s"] = wall_time_s
    rundir.write_json(out / "predict.json", summary)
    return summary


def _pool_csv(tables: Sequence[Path], dest: Path) -> None:
    """The per-image object tables one under the other (one header), in the records' order."""
    header: str | None = None
    tmp = atomic_path(dest)
    with tmp.open("w") as fh:
        for t in tables:
            lines = t.read_text().splitlines(keepends=True)
            if not lines:
                continue
            if header is None:
                header = lines[0]
                fh.write(header)
            elif lines[0] != header:
                raise SegkitError(f"object table '{t}' has the columns {lines[0].strip()!r}; expected {header.strip()!r} like the others")
            fh.writelines(lines[1:])
    _publish(dest)


def predict_files(cfg: DictConfig, files: list[Path], out: Path, quiet: bool = False) -> dict[str, Any]:
    """Predict ``files`` into ``out``: per image its outputs, then ``records/<stem>.json``; images with a
    record of the same settings are skipped (``skip_complete``)."""
    ckpts = [Path(str(p)) for p in (cfg.ckpt_path if isinstance(cfg.ckpt_path, ListConfig | list | tuple) else [cfg.ckpt_path])]
    device = resolve_device(str(cfg.device))
    modules = [load_network(p, device) for p in ckpts]
    names = modules[0].class_names
    for p, m in zip(ckpts[1:], modules[1:], strict=True):
        if m.class_names != names:
            raise SegkitError(f"checkpoint '{p}' predicts {m.class_names} but '{ckpts[0]}' predicts {names}; expected an ensemble over the same classes")
    post, post_source = load_postprocess(cfg.get("postprocess"), ckpts)
    data_cfg = run_data_config(ckpts[0])  # checked by load_network
    object_classes, edge_class = list(data_cfg.get("object_classes") or []), data_cfg.get("edge_class")
    inference = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else {}
    tta = OmegaConf.to_container(cfg.tta, resolve=True) if cfg.get("tta") else {}
    save_probs = bool(cfg.get("save_probabilities"))
    fingerprint = settings_fingerprint(ckpts, inference, tta, post, save_probs)
    settings = {"checkpoints": [str(p) for p in ckpts], "postprocess": post, "postprocess_source": post_source, "tta": tta,
                "inference": inference}
    complete = complete_records(out, fingerprint) if cfg.get("skip_complete", True) else {}
    todo = [f for f in files if str(f) not in complete]
    if complete and not quiet and len(todo) < len(files):
        say(f"{len(files) - len(todo)} of {len(files)} images are complete in {out} from an earlier run with the same settings: skipped")
    (out / RECORDS).mkdir(exist_ok=True)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                   disable=quiet)
    bar.start()
    images_task = bar.add_task("images", total=len(todo))
    tiles_task = bar.add_task("tiles of this image", total=1)
    entries = []
    try:
        for path in todo:
            if by_regions(path, inference):
                entry = _predict_by_regions(path, modules, out, cfg, inference, tta, post, object_classes, edge_class, bar, tiles_task)
            else:
                entry = _predict_whole(path, modules, out, cfg, inference, tta, post, object_classes, edge_class, bar, tiles_task)
            record = {"image": str(path), "fingerprint": fingerprint, "settings": settings, "entry": entry,
                      "objects": entry.pop("objects_csv", None)}
            rundir.write_json(out / RECORDS / f"{entry['stem']}.json", record)
            entries.append(entry)
            bar.update(images_task, advance=1)
    finally:
        bar.stop()
    return {"settings": settings, "images": entries, "predicted": len(todo), "skipped": len(files) - len(todo)}


def _predict_whole(path: Path, modules: Sequence[Any], out: Path, cfg: DictConfig, inference: dict, tta: dict,
                   post: dict | None, object_classes: list, edge_class: Any, bar: Any, tiles_task: Any) -> dict[str, Any]:
    """One image read whole: labels (PNG and ImageJ TIFF), overlay, optional probabilities, object table."""
    from segkit.inference import postprocess
    from segkit.inference.large import is_zarr, open_source, output_stem

    names = modules[0].class_names
    in_channels = int(modules[0].norm_mean.shape[1])
    if is_zarr(path):
        source = open_source(path, int(inference.get("level", 0)))
        raw = source.read(0, source.height, 0, source.width)
    else:
        raw = read_array(path)
    image = to_image(raw, path, in_channels)
    h, w = image.shape[:2]
    bar.update(tiles_task, completed=0, description=f"tiles of {path.name}")

    def on_tiles(done_tiles: int, total_tiles: int) -> None:
        bar.update(tiles_task, completed=done_tiles, total=total_tiles)

    predictor = make_predictor(modules, inference, tta, h * w, progress=on_tiles)
    with torch.inference_mode():
        probs = predictor(torch.from_numpy(image).permute(2, 0, 1))
    probs_np = probs.numpy()
    notes: list[dict[str, Any]] = []
    labels = postprocess(probs_np, post, notes) if post else probs_np.argmax(0).astype(np.uint8)
    if notes:
        from segkit.inference.postprocess import emptied_message

        say(emptied_message(path.name, notes, names))
    stem = output_stem(path)
    px = float(cfg.pixel_size) if cfg.get("pixel_size") else pixel_size_of(path)
    save_labels(labels, names, out, stem, px)
    rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    overlay_path = out / f"{stem}_overlay.png"
    Image.fromarray(overlay(rgb, labels)).save(atomic_path(overlay_path))
    _publish(overlay_path)
    if cfg.get("save_probabilities"):
        probs_path = out / f"{stem}_probs.npy"
        np.save(atomic_path(probs_path), probs_np.astype(np.float32))
        _publish(probs_path)
    entry: dict[str, Any] = {"image": str(path), "size": [h, w], "pixel_size_um": px, "stem": stem}
    if notes:
        entry["emptied_by_thresholds"] = [{**n, "class_name": names[n["class"]]} for n in notes]
    if object_classes:
        from segkit.evaluation.object_report import class_ids
        from segkit.evaluation.objects import instances, object_table, write_objects_csv

        ids = class_ids(object_classes, names, "data.object_classes")
        edge = class_ids([edge_class], names, "data.edge_class")[0] if edge_class else None
        inst, inst_cls = instances(labels, ids, edge)
        rows = object_table(inst, inst_cls, names, px, stem)
        table = out / f"{stem}_objects.csv"
        write_objects_csv(rows, atomic_path(table))
        _publish(table)
        entry["objects"] = len(rows)
        entry["objects_csv"] = table.name
    return entry


def _predict_by_regions(path: Path, modules: Sequence[Any], out: Path, cfg: DictConfig, inference: dict, tta: dict,
                        post: dict | None, object_classes: list, edge_class: Any, bar: Any, tiles_task: Any) -> dict[str, Any]:
    """One image larger than memory (segkit.inference.large), with its object table measured tile by tile."""
    from segkit.inference.large import open_labels, predict_large

    bar.update(tiles_task, completed=0, description=f"windows of {path.name} (region by region)")

    def on_windows(done: int, total: int) -> None:
        bar.update(tiles_task, completed=done, total=total)

    px = float(cfg.pixel_size) if cfg.get("pixel_size") else None
    info = predict_large(path, modules, out, inference=inference, tta=tta, post=post,
                         save_probabilities=bool(cfg.get("save_probabilities")), pixel_size=px,
                         level=int(inference.get("level", 0)), output_format=str(inference.get("large_output", "auto")),
                         progress=on_windows)
    say(f"{path.name}: predicted region by region -> {Path(info['labels']).name}; intensities: {info['intensity']}")
    if info.get("emptied_by_thresholds"):
        from segkit.inference.postprocess import emptied_message

        say(emptied_message(path.name, info["emptied_by_thresholds"], modules[0].class_names))
    labels = open_labels(Path(info["labels"]))
    if object_classes:
        from segkit.evaluation.object_report import class_ids
        from segkit.evaluation.objects import object_table_tiled, write_objects_csv

        names = modules[0].class_names
        ids = class_ids(object_classes, names, "data.object_classes")
        if edge_class:
            say(f"WARNING: {path.name}: objects are the connected components of {', '.join(object_classes)}; the split of touching "
                f"objects along '{edge_class}' (data.edge_class) is not available region by region")
        rows = object_table_tiled(labels, tuple(labels.shape), names, object_classes=ids, pixel_size=info["pixel_size_um"],
                                  image=info["stem"])
        table = out / f"{info['stem']}_objects.csv"
        write_objects_csv(rows, atomic_path(table))
        _publish(table)
        info["objects"] = len(rows)
        info["objects_csv"] = table.name
    return {"image": str(path), "size": [int(labels.shape[0]), int(labels.shape[1])], **info}
