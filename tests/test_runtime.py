"""segkit.runtime.tune_allocator: freed activations are reused from the heap instead of being re-mapped
(and re-faulted) on every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from segkit.config_check import check_config
from segkit.errors import SegkitError
from segkit.runtime import tune_allocator
from tests.conftest import compose_cfg

PROBE = """
import json, resource, sys
import torch
from segkit.runtime import tune_allocator
note = tune_allocator(sys.argv[1])
def step():  # a 40 MB block allocated, written and freed, like an activation in each training step
    x = torch.empty(10 << 20, dtype=torch.float32)
    x.fill_(1.0)
    del x
for _ in range(10):  # warm-up: the heap reaches its steady state (freed blocks coalesce) within a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(json.dumps({"note": note, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str, env: dict | None = None) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **(env or {})}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_stops_refaulting_freed_blocks():
    default, tuned = probe("default"), probe("tuned")
    pages = 20 * (40 << 20) // 4096  # every page of every re-allocation touched once
    assert default["faults"] > 0.8 * pages, default  # glibc maps each 40 MB block afresh
    assert tuned["faults"] < 0.05 * pages, tuned  # the block is reused from the heap
    assert "reused from the heap" in tuned["note"] and "default" in default["note"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_settings_in_the_environment_are_left_alone():
    res = probe("tuned", {"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert "left to the environment" in res["note"]
    assert res["faults"] > 0.8 * 20 * (40 << 20) // 4096


def test_unknown_mode_is_refused():
    with pytest.raises(SegkitError, match="cpu_allocator is 'fast'; expected tuned or default"):
        tune_allocator("fast")


def test_config_check_names_the_key(tmp_path):
    cfg = compose_cfg(tmp_path, ["cpu_allocator=fast"])
    with pytest.raises(SegkitError, match="cpu_allocator is 'fast'; expected tuned or default"):
        check_config(cfg, "train")


@pytest.mark.parametrize("task", ["predict", "eval"])
def test_predict_and_eval_take_the_key_and_name_it(tmp_path, task):
    good = compose_cfg(tmp_path, ["ckpt_path=x.ckpt", "input=y.png"] if task == "predict" else ["ckpt_path=x.ckpt"], task)
    assert good.cpu_allocator == "tuned"
    bad = compose_cfg(tmp_path, ["ckpt_path=x.ckpt", "cpu_allocator=fast"] + (["input=y.png"] if task == "predict" else []), task)
    with pytest.raises(SegkitError, match="cpu_allocator is 'fast'; expected tuned or default"):
        check_config(bad, task)
