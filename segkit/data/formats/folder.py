"""``folder``: ``<root>/images/<stem>.<ext>`` with ``<root>/masks/<stem>.<ext>`` (or ``labels/``),
any of PNG / TIFF / JPEG / NPY or OME-Zarr directories, matched by file stem (``x.ome.tif`` has the stem
``x``); ``<root>/codes.txt`` (one class name per line) names the classes when present. Large images (an
OME-Zarr, or a TIFF of more than 4 tiles of ``data.tile_size``) are cut into tiles read from disk on demand
(:mod:`segkit.data.regions`). Also registered as ``darkfield`` (the Kaggle darkfield layout)."""

from __future__ import annotations

from pathlib import Path

from segkit.data.formats import ReadContext, Reading, Sample, register, short_list
from segkit.data.io import IMAGE_SUFFIXES, read_array, read_mask, to_image
from segkit.data.regions import is_large, region_views
from segkit.errors import SegkitError
from segkit.inference.large import is_zarr


def file_stem(path: Path) -> str:
    """The name without its suffix, and without ``.ome`` before it (``slide.ome.tif`` -> ``slide``)."""
    stem = path.stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def _listing(folder: Path) -> tuple[dict[str, Path], list[str]]:
    files: dict[str, Path] = {}
    dupes: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or is_zarr(p):
            stem = file_stem(p)
            if stem in files:
                dupes.append(f"'{files[stem].name}' and '{p.name}' in '{folder}' share the stem '{stem}'; expected one file per stem")
            files[stem] = p
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
    # the tiles of a large image form one group (never split apart) unless tile_groups=tile (one large image: its
    # tiles are split like images; neighbouring tiles then sit in train and val, so val is optimistic)
    tile_groups = options.pop("tile_groups", "image")
    if options:
        raise SegkitError(f"data.format_options has unknown keys {sorted(options)}; expected image_dir, mask_dirs, tile_groups for this format")
    if tile_groups not in ("image", "tile"):
        raise SegkitError(f"data.format_options.tile_groups is '{tile_groups}'; expected image (a large image's tiles stay in one split) or tile")
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
        if is_large(images[stem], ctx.tile_size) or is_large(masks[stem], ctx.tile_size):
            try:
                views = region_views(images[stem], masks[stem], ctx.in_channels, ctx.value_map, ctx.tile_size)
            except SegkitError as err:
                reading.problems.append(str(err))
                continue
            for (y0, y1, x0, x1), image, mask in views:
                region = f"[{y0}:{y1}, {x0}:{x1}]"
                name = f"{stem}_y{y0}_x{x0}"
                reading.samples.append(Sample(name, image, mask, group=stem if tile_groups == "image" else name, source=f"{images[stem]}{region}",
                                              mask_source=f"{masks[stem]}{region}", dtype=str(_source_dtype(images[stem])),
                                              tile=(y0, y1, x0, x1)))
            continue
        try:
            raw = read_array(images[stem])
            image = to_image(raw, images[stem], ctx.in_channels)
            mask = read_mask(masks[stem], ctx.value_map)
        except SegkitError as err:
            reading.problems.append(str(err))
            continue
        reading.samples.append(Sample(stem, image, mask, group=stem, source=str(images[stem]), mask_source=str(masks[stem]), dtype=str(raw.dtype)))
    return reading


def _source_dtype(path: Path) -> str:
    from segkit.data.regions import _source

    return str(_source(str(path), 0).dtype)
