"""``folder``: ``<root>/images/<stem>.<ext>`` with ``<root>/masks/<stem>.<ext>`` (or ``labels/``),
any of PNG / TIFF / JPEG / NPY, matched by file stem; ``<root>/codes.txt`` (one class name per line)
names the classes when present. Also registered as ``darkfield`` (the Kaggle darkfield layout)."""

from __future__ import annotations

from pathlib import Path

from segkit.data.formats import ReadContext, Reading, Sample, register, short_list
from segkit.data.io import IMAGE_SUFFIXES, read_array, read_mask, to_image
from segkit.errors import SegkitError


def _listing(folder: Path) -> tuple[dict[str, Path], list[str]]:
    files: dict[str, Path] = {}
    dupes: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in files:
                dupes.append(f"'{files[p.stem].name}' and '{p.name}' in '{folder}' share the stem '{p.stem}'; expected one file per stem")
            files[p.stem] = p
    return files, dupes


def read_codes(root: Path) -> list[str] | None:
    codes = root / "codes.txt"
    if not codes.is_file():
        return None
    names = [ln.strip() for ln in codes.read_text().splitlines() if ln.strip()]
    return names or None


@register("folder")
@register("darkfield")
def read_folder(ctx: ReadContext, options: dict) -> Reading:
    image_dir = options.pop("image_dir", "images")
    mask_dirs = options.pop("mask_dirs", ["masks", "labels"])
    if options:
        raise SegkitError(f"data.format_options has unknown keys {sorted(options)}; expected image_dir, mask_dirs for this format")
    root = ctx.root
    where = f" Get it from {ctx.source} and set data.root to its folder." if ctx.source else ""
    expected = ctx.layout or f"<root>/{image_dir}/<name>.png and <root>/{mask_dirs[0]}/<name>.png"
    images_path = root / image_dir
    mask_path = next((root / d for d in mask_dirs if (root / d).is_dir()), None)
    missing = ([f"{image_dir}/"] if not images_path.is_dir() else []) + ([" or ".join(f"{d}/" for d in mask_dirs)] if mask_path is None else [])
    if missing:
        raise SegkitError(f"dataset at data.root '{root}' has no {' and no '.join(missing)} folder; expected {expected}.{where}")
    reading = Reading(class_names=read_codes(root))
    images, dupes = _listing(images_path)
    masks, mask_dupes = _listing(mask_path)
    reading.problems += dupes + mask_dupes
    if not images:
        reading.problems.append(f"no images ({', '.join(IMAGE_SUFFIXES)}) in '{images_path}'; expected {expected}")
        return reading
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images:
        reading.problems.append(f"{len(lonely_images)} images without a mask in '{mask_path}': {short_list(lonely_images)}; expected a mask with the same file name stem")
    if lonely_masks:
        reading.problems.append(f"{len(lonely_masks)} masks without an image in '{images_path}': {short_list(lonely_masks)}; expected an image with the same file name stem")
    for stem in sorted(set(images) & set(masks)):
        try:
            raw = read_array(images[stem])
            image = to_image(raw, images[stem], ctx.in_channels)
            mask = read_mask(masks[stem], ctx.value_map)
        except SegkitError as err:
            reading.problems.append(str(err))
            continue
        reading.samples.append(Sample(stem, image, mask, group=stem, source=str(images[stem]), mask_source=str(masks[stem]), dtype=str(raw.dtype)))
    return reading
