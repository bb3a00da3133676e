"""Show what training would choose, without training: ``python -m segkit.plan [data=<name>] [budget=45m] [key=value ...]``.

Composes the same configuration as ``segkit.train`` (any override that works there works here), reads and
checks the data, computes the train split's fingerprint (:mod:`segkit.planning.fingerprint`) and prints it
with the plan (:mod:`segkit.planning.planner`): each choice, who made it (the plan, or you) and why.
``--yaml`` prints the whole record, as ``segkit.train`` writes it to ``<run>/plan.yaml``.
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m segkit.plan [data=<name>] [data.root=<folder>] [budget=45m] [model=<name>] [key=value ...] [--yaml]"


def fingerprint_text(fp: dict) -> str:
    """The fingerprint in a few lines a user can check against their data."""
    lines = [f"train split: {fp['num_images']} images, {fp['channels']} channel(s), height {fp['height']['min']}-{fp['height']['max']} "
             f"(median {fp['height']['median']:.0f}) x width {fp['width']['min']}-{fp['width']['max']} (median {fp['width']['median']:.0f}) px; "
             f"intensity (8-bit as read) p1 {[round(v) for v in fp['intensity']['p1']]} p99 {[round(v) for v in fp['intensity']['p99']]}"]
    for c in fp["classes"]:
        text = f"  {c['name']}: {100 * c['pixel_share']:.2f} % of labelled pixels, in {c['images']} of {fp['num_images']} images"
        if c.get("objects"):
            text += f"; {c['objects']} objects, median area {c['median_area']:.0f} px, median width {c['median_width']:.1f} px"
        lines.append(text)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(f"{USAGE}\n\n{__doc__.split(chr(10), 2)[2].strip()}")
        return 0
    as_yaml = "--yaml" in argv
    overrides = [a for a in argv if a != "--yaml"]
    from hydra.utils import instantiate

    from segkit.config_check import check_config
    from segkit.data.inspect import compose_data
    from segkit.errors import exit_on_user_error
    from segkit.planning.plan import plan_for

    with exit_on_user_error():
        cfg = compose_data(overrides)
        from omegaconf import open_dict

        with open_dict(cfg):  # no run folder: nothing is written but the data's cached records
            cfg.paths.output_dir = cfg.paths.log_dir
        check_config(cfg, "train")
        if str(cfg.get("plan", "auto")) == "off":
            print("plan=off: segkit.train uses the config as composed; nothing to plan")
            return 0
        dm = instantiate(cfg.data, _convert_="all")
        dm.prepare()
        record = plan_for(cfg, dm, overrides=overrides)
        if as_yaml:
            import yaml

            print(yaml.safe_dump({k: v for k, v in record.items() if k != "table"}, sort_keys=False))
            return 0
        mach = record["machine"]
        print(f"data={cfg.data.get('name')} root={dm.root} (fingerprint {record['fingerprint']['source']})")
        print(fingerprint_text(record["fingerprint"]))
        if dm.storage_record.get("region_tiles"):
            from segkit.data.regions import storage_line

            print(storage_line(dm))
        gpus = ", ".join(f"{g['name']} {g['memory_gb']} GB" for g in mach["gpus"]) or "none"
        budget = f"{record['budget_s'] / 60:.1f} min" if record["budget_s"] else "none (epoch-based: give budget=45m to plan the compute too)"
        print(f"machine: {mach['cpu_cores']} CPU cores, torch threads {mach['torch_threads']}, GPUs: {gpus}; budget: {budget}\n")
        print(record["table"])
        return 0
    return 2  # pragma: no cover - exit_on_user_error exits


if __name__ == "__main__":
    sys.exit(main())
