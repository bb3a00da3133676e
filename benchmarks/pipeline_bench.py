"""Input-pipeline and scaling benchmarks.

* a whole training epoch on the real darkfield data (``conf/data/darkfield.yaml`` through segkit's
  ``SegDataModule``: random crops, every augmentation on) vs the same number of steps on tensors
  already in memory; the pipeline alone (crops + batched augmentation) in samples/s vs the training
  step's consumption; the decoded-image cache vs decoding from disk every epoch; loader workers;
* epoch time vs the number of training images and vs the crop size (time per megapixel);
* peak resident memory of training on darkfield and of sliding-window prediction (in subprocesses:
  ``python -m benchmarks.pipeline_bench memory train|predict ...``).

Without ``../shared/data/darkfield`` (CI) the darkfield rows are skipped with a note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import open_dict

from benchmarks.augment_bench import SEGKIT_OPTIONS
from benchmarks.common import compose, data_stub, median, now, synthetic_tensors, tensor_loader
from benchmarks.rss import peak_rss_mb, rss_mb
from benchmarks.train_bench import BATCH, StepTimer, step_deltas
from segkit.data.augment import BatchAugment
from segkit.training.fit import build_module
from segkit.training.trainer import build_trainer

ROOT = Path(__file__).resolve().parent.parent
DARKFIELD = ROOT.parent / "shared" / "data" / "darkfield"


def _darkfield_cfg(tmp: Path, root: Path, extra: list[str] = ()):
    return compose(tmp, ["data=darkfield", f"data.root={root}", f"data.cache_dir={tmp / 'cache'}",
                         "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false",
                         "trainer.max_epochs=1", "trainer.limit_val_batches=0", *extra])


def _full_augment(dm) -> None:
    dm.augmenter = BatchAugment(**SEGKIT_OPTIONS, ignore_index=dm.ignore_index, value_range=255.0)


def _epoch(trainer_cfg, module, **fit) -> tuple[float, list[float]]:
    """Seconds of one training epoch (first batch fetched to last optimiser step) and per-step times."""
    trainer = build_trainer(trainer_cfg)
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, **fit)
    return timer.ends[-1] - timer.start, step_deltas(timer.ends, 1)


class EpochTimer(StepTimer):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = now()


def subset_root(root: Path, tmp: Path, n: int) -> Path:
    """A data root with the first ``n`` images of ``root`` (symbolic links), for ``--quick``."""
    sub = tmp / f"darkfield-{n}"
    for kind in ("images", "masks"):
        (sub / kind).mkdir(parents=True, exist_ok=True)
    for image in sorted((root / "images").iterdir())[:n]:
        for kind in ("images", "masks"):
            src, dst = root / kind / image.name, sub / kind / image.name
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    return sub


def darkfield(quick: bool, tmp: Path, root: Path = DARKFIELD) -> dict:
    if not (root / "images").is_dir():
        return {"skipped": f"no darkfield data at {root} (CI has no ../shared): section skipped"}
    if quick:
        root = subset_root(root, tmp, 20)
    steps = 2 if quick else None
    cfg = _darkfield_cfg(tmp / "df", root, [f"trainer.limit_train_batches={steps}", "data.crop_size=64"] if steps else [])
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, _convert_="all")
    t = now()
    dm.prepare()
    decode_s = now() - t  # reading + decoding every PNG (+ statistics, cached after the first run)
    t = now()
    dm.read()
    decode_only_s = now() - t
    _full_augment(dm)
    n_train = len(dm.split["train"])
    module = build_module(cfg, dm, None)
    epoch_steps = steps or -(-n_train * dm.crops_per_image // dm.batch_size)
    # the same number of steps on in-memory tensors of the same size, no crops, no augmentation
    images, masks = synthetic_tensors(epoch_steps * dm.batch_size, dm.crop_size)
    mem_loader = tensor_loader(images, masks, dm.batch_size)
    mem_cfg = cfg.copy()
    with open_dict(mem_cfg):
        mem_cfg.trainer.limit_train_batches = epoch_steps
    # warm-up (allocator, kernels), then one epoch each, interleaved
    _epoch(mem_cfg.copy(), module, train_dataloaders=tensor_loader(images[: 2 * BATCH], masks[: 2 * BATCH], BATCH))
    rounds = 1 if quick else 2
    df_s, mem_s, df_steps, mem_steps = [], [], [], []
    for _ in range(rounds):
        s, d = _epoch(cfg, module, datamodule=dm)
        df_s.append(s)
        df_steps += d
        s, d = _epoch(mem_cfg, module, train_dataloaders=mem_loader)
        mem_s.append(s)
        mem_steps += d
    # the pipeline alone: sampling + crops + collate + batched augmentation, no model
    loader = dm.train_dataloader()
    gen = torch.Generator().manual_seed(0)
    t, n = now(), 0
    for i, batch in enumerate(loader):
        if steps and i >= steps:
            break
        dm.augmenter(batch["image"], batch["mask"], generator=gen)
        n += len(batch["image"])
    pipeline_sps = n / (now() - t)
    t, n = now(), 0
    for i, batch in enumerate(loader):
        if steps and i >= steps:
            break
        n += len(batch["image"])
    loader_only_sps = n / (now() - t)
    step_s = median(mem_s) / epoch_steps
    return {
        "images": {"train": n_train, "val": len(dm.split["val"]), "test": len(dm.split.get("test", []))},
        "crop_size": dm.crop_size, "batch": dm.batch_size, "steps_per_epoch": epoch_steps, "rounds": rounds,
        "darkfield_epoch_s": round(median(df_s), 2), "in_memory_epoch_s": round(median(mem_s), 2),
        "ratio": round(median(df_s) / median(mem_s), 3),
        "step_ratio": round(median(df_steps) / median(mem_steps), 3) if df_steps and mem_steps else None,
        "pipeline_samples_per_s": round(pipeline_sps, 1), "loader_only_samples_per_s": round(loader_only_sps, 1),
        "model_samples_per_s": round(dm.batch_size / step_s, 2),
        "prepare_s": round(decode_s, 2), "decode_all_s": round(decode_only_s, 2),
        "workers": workers(dm, steps),
    }


def workers(dm, steps: int | None) -> dict:
    """One epoch of the darkfield train loader (crops + collate; augmentation runs in the main process
    after transfer) with 0, 1 and 2 workers: first epoch (worker start-up included) and second epoch
    (persistent workers)."""
    out = {}
    for n in (0, 1, 2):
        dm.num_workers = n
        loader = dm.train_dataloader()
        epochs = []
        for _ in range(2):
            t = now()
            for i, _batch in enumerate(loader):
                if steps and i >= steps:
                    break
            epochs.append(round(now() - t, 3))
        out[str(n)] = {"first_epoch_s": epochs[0], "second_epoch_s": epochs[1]}
        del loader
    dm.num_workers = 0
    return out


def scaling(quick: bool, tmp: Path) -> dict:
    """Epoch time of segkit's loop (U-Net, in-memory tensors) vs the number of images (1x, 2x, 4x at
    crop 128) and vs the crop size (128, 256, 512 at a constant number of pixels per step and per
    epoch); seconds per megapixel should stay flat."""
    crop, base = (64, 8) if quick else (128, 16)
    cfg = compose(tmp / "scaling", ["model=unet", "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false",
                                    "trainer.max_epochs=1", "trainer.limit_val_batches=0"])
    module = build_module(cfg, data_stub(), None)
    _epoch(cfg, module, train_dataloaders=tensor_loader(*synthetic_tensors(2 * BATCH, crop), BATCH))  # warm-up
    images_rows = []
    for mult in (1, 2, 4):
        n = base * mult
        s, _ = _epoch(cfg, module, train_dataloaders=tensor_loader(*synthetic_tensors(n, crop), BATCH))
        mpx = n * crop * crop / 1e6
        images_rows.append({"images": n, "crop": crop, "epoch_s": round(s, 3), "s_per_mpx": round(s / mpx, 3)})
    crop_rows = []
    pixels_per_step = 16 * 128 * 128 if not quick else 4 * 64 * 64
    for size in ((64, 128) if quick else (128, 256, 512)):
        batch = max(pixels_per_step // (size * size), 1)
        n = batch * (2 if quick else 3)
        s, _ = _epoch(cfg, module, train_dataloaders=tensor_loader(*synthetic_tensors(n, size), batch))
        mpx = n * size * size / 1e6
        crop_rows.append({"crop": size, "batch": batch, "images": n, "epoch_s": round(s, 3), "s_per_mpx": round(s / mpx, 3)})
    return {"images": images_rows, "crop": crop_rows}


# ---------------------------------------------------------------------------------------- memory
def _probe(args: list[str]) -> dict:
    """Runs ``python -m benchmarks.pipeline_bench memory ...`` in a fresh process; returns its JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "benchmarks.pipeline_bench", "memory", *args], capture_output=True,
                         text=True, cwd=ROOT, env=env, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(quick: bool, tmp: Path) -> dict:
    sizes = (512, 1024) if quick else (2048, 4096)
    predict = [_probe(["predict", str(s)]) for s in sizes]
    root = DARKFIELD
    if quick and (root / "images").is_dir():
        root = subset_root(root, tmp, 20)
    train = _probe(["train", str(tmp / "mem"), "1" if quick else "3", str(root), "64" if quick else "256"])
    return {"predict": predict, "train": train}


def _memory_main(argv: list[str]) -> None:
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 1)
    if argv[0] == "predict":
        from segkit.inference import sliding_window_probs
        from segkit.models import UNet

        size = int(argv[1])
        net = UNet(in_channels=3, num_classes=3, depth=2, base_width=4).eval().to(memory_format=torch.channels_last)
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8).float()
        before = rss_mb()
        probs = sliding_window_probs(net, image, 3, tile=512, overlap=0.25, stride=4, batch_size=4)
        peak = peak_rss_mb()
        probs_mb = probs.numel() * 4 / 2**20
        # stitching holds the [K, H, W] accumulator (the output) and an [H, W] weight sum
        stitched_mb = probs_mb + size * size * 4 / 2**20
        print(json.dumps({"size": size, "peak_mb": round(peak, 1), "before_mb": round(before, 1),
                          "image_mb": round(image.numel() * 4 / 2**20, 1), "probs_mb": round(probs_mb, 1),
                          "stitched_mb": round(stitched_mb, 1),
                          "extra_mb": round(peak - before - stitched_mb, 1)}))
    elif argv[0] == "train":
        tmp, steps, root, crop = Path(argv[1]), int(argv[2]), Path(argv[3]), int(argv[4])
        root = root if (root / "images").is_dir() else None
        if root is None:
            cfg = compose(tmp, ["trainer.num_sanity_val_steps=0", "trainer.max_epochs=1", "trainer.limit_val_batches=0",
                                f"trainer.limit_train_batches={steps}", "data.synthetic.num_images=16", f"data.crop_size={crop}"])
        else:
            cfg = _darkfield_cfg(tmp, root, [f"trainer.limit_train_batches={steps}", f"data.crop_size={crop}"])
        from hydra.utils import instantiate

        dm = instantiate(cfg.data, _convert_="all")
        dm.prepare()
        decoded = sum(a.nbytes for pair in dm._cache.values() for a in pair) / 2**20
        after_prepare = peak_rss_mb()
        module = build_module(cfg, dm, None)
        build_trainer(cfg).fit(module, datamodule=dm)
        print(json.dumps({"data": f"darkfield, {len(dm._cache)} images" if root else "synthetic", "steps": steps, "decoded_images_mb": round(decoded, 1),
                          "peak_after_prepare_mb": round(after_prepare, 1), "peak_mb": round(peak_rss_mb(), 1)}))


def run(quick: bool = False, tmp: Path | None = None) -> dict:
    tmp = Path(tmp or tempfile.mkdtemp(prefix="segkit-bench-"))
    out: dict = {"timing_s": {}}
    for name, fn in (("darkfield", darkfield), ("scaling", scaling), ("memory", memory)):
        t = now()
        out[name] = fn(quick, tmp)
        out["timing_s"][name] = round(now() - t, 1)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "memory":
        _memory_main(sys.argv[2:])
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
