"""musicguide's models against the reference implementation (stable-audio-tools).

Always: our state-dict key names and shapes for Stable Audio Open 1.0 equal the reference's, as
recorded in tests/data/sao_reference_keys.json (regenerate with
`python bench/conformance.py keys --reference-python REFENV/bin/python`).

With a reference environment (`bash ../shared/tools/reference-env.sh .refenv`, then
`MUSICGUIDE_REFERENCE_PYTHON=.refenv/bin/python`): the full numerical comparison of
bench/conformance.py, VAE and DiT outputs, and for rectified flow the sampler's time grid and a whole
ping-pong run, within 1e-4 relative error in float32.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from musicguide.models import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[1]
REFERENCE_KEYS = json.loads((REPO / "tests" / "data" / "sao_reference_keys.json").read_text())
# What the full comparison must report for every case, and on top for rectified-flow models: the
# sampler's time grid (t_max 1 and 0.7) and a whole 8-step ping-pong run.
COMPONENTS = {"vae_encode_mean", "vae_kl", "vae_decode", "dit_null_text", "dit_null_text_later",
              "dit_text_tokens", "x0_hat_0", "x0_hat_1"}
RF_COMPONENTS = {"rf_grid_8", "rf_grid_8_tmax_0.7", "pingpong_8"}


def load_bench_module():
    spec = importlib.util.spec_from_file_location("conformance", REPO / "bench" / "conformance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_state_dict_keys_and_shapes_equal_the_reference() -> None:
    """The published checkpoint loads only if every name and shape matches (on meta: no allocation)."""
    with torch.device("meta"):
        model = build_model(ModelConfig.from_dict(REFERENCE_KEYS["config"]))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = REFERENCE_KEYS["keys"]
    assert sorted(set(theirs) - set(ours))[:5] == [], "keys the reference has and we lack"
    assert sorted(set(ours) - set(theirs))[:5] == [], "keys we have and the reference lacks"
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}, "shape mismatches"
    assert REFERENCE_KEYS["reference"].startswith("stable-audio-tools 0.0.19")


def test_reference_key_list_was_made_from_the_published_config() -> None:
    shared_config = REPO.parent / "shared" / "docs" / "models" / "sao-1.0.model_config.json"
    if not shared_config.is_file():
        pytest.skip(f"{shared_config} is not present in this checkout")
    assert REFERENCE_KEYS["config"] == json.loads(shared_config.read_text())


@pytest.mark.conformance
@pytest.mark.slow
def test_outputs_equal_the_reference_implementation(tmp_path: Path) -> None:
    reference_python = os.environ.get("MUSICGUIDE_REFERENCE_PYTHON")
    if not reference_python:
        pytest.skip("set MUSICGUIDE_REFERENCE_PYTHON to a stable-audio-tools environment's python "
                    "(bash ../shared/tools/reference-env.sh .refenv) to compare with the reference")
    bench = load_bench_module()
    shims = Path(os.environ.get("MUSICGUIDE_REFERENCE_SHIMS", bench.DEFAULT_SHIMS))
    assert shims.is_dir(), f"reference shims not found at {shims} (set MUSICGUIDE_REFERENCE_SHIMS)"
    rows = bench.run_conformance(reference_python, shims, workdir=tmp_path)
    print("\n" + bench.format_table(rows))
    expected = {(case, name) for case in bench.CASES
                for name in COMPONENTS | (RF_COMPONENTS if case == "sao-small-rf" else set())}
    assert sorted((case, name) for case, name, *_ in rows) == sorted(expected)  # each once
    failures = [(case, name, rel) for case, name, _, rel in rows if not rel <= bench.TOLERANCE]
    assert failures == []
