"""Stable Audio 3 (issue 31): the SAME autoencoder against the reference package, and its config.

The numerical comparison needs the reference's environment (`bash ../shared/tools/reference-sa3-env.sh
/tmp/musicguide-sa3env`, then MUSICGUIDE_SA3_REFERENCE_PYTHON=/tmp/musicguide-sa3env/bin/python;
.ci/run builds it); the rest runs anywhere."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from musicguide.models.same import SAME, same_config_from_dict

REPO = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("conformance_sa3", REPO / "bench" / "conformance_sa3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.conformance
@pytest.mark.slow
def test_same_and_the_dit_equal_the_reference():
    """Both SAME structures (chunks with the midpoint shift; a sliding window), random weights, a
    whole number of chunks and a length the model pads: encode and decode within 1e-5 relative. The
    DiT: one forward for each way of conditioning (adaLN with cross-attention, the global condition
    and the inpainting input; a prepended global token with a patch and a sliding window; none)."""
    python = os.environ.get("MUSICGUIDE_SA3_REFERENCE_PYTHON")
    if not python:
        pytest.skip("set MUSICGUIDE_SA3_REFERENCE_PYTHON to the stable-audio-3 environment's python "
                    "(bash ../shared/tools/reference-sa3-env.sh DIR) to compare with the reference")
    module = bench()
    rows = module.compare(module.run_reference(python))
    assert len(rows) == 2 * len(module.CASES) * len(module.AUDIO_SAMPLES) + len(module.DIT_CASES)
    assert [row for row in rows if not row[2] <= module.TOLERANCE] == []


def test_same_shapes_and_lengths():
    """Latents: one per patch x strides samples, the input padded to whole chunks; decode returns
    the padded length; the state dict has the reference's top-level names."""
    config = bench().CASES["same-chunks-midpoint"]
    model = SAME(same_config_from_dict(config)).eval()
    assert model.config.downsampling_ratio == 4 * 2 * 4
    with torch.no_grad():
        latents = model.encode(torch.randn(1, 2, 1000))
        assert latents.shape == (1, 8, 32)  # 1000 samples -> 250 patches -> padded to 256 -> / 8
        assert model.decode(latents).shape == (1, 2, 1024)
    assert {key.split(".")[0] for key in model.state_dict()} == {"encoder", "decoder", "bottleneck"}
    assert "encoder.layers.0.transformers.0.self_attn.to_qkv.weight" in model.state_dict()
    assert "encoder.layers.0.mapping.weight_g" in model.state_dict()


@pytest.mark.parametrize("change, words", [
    (lambda c: c["encoder"]["config"].update(conformer=True), "conformer"),
    (lambda c: c["decoder"]["config"].update(mask_noise=0.1), "mask_noise"),
    (lambda c: c["decoder"]["config"].update(chunk_size=16), "differ"),
    (lambda c: c["pretransform"]["config"].update(oversampling=2), "oversampled"),
    (lambda c: c["bottleneck"]["config"].update(noise_regularize=True), "noise"),
    (lambda c: c["encoder"]["config"].update(made_up=1), "made_up"),
])
def test_a_config_the_reference_would_build_differently_is_refused(change, words):
    config = copy.deepcopy(bench().CASES["same-chunks-midpoint"])
    change(config)
    with pytest.raises(ValueError, match=words):
        same_config_from_dict(config)


@pytest.mark.parametrize("change, words", [
    (lambda c: c["config"].update(prepend_cond_dim=4), "prepend_cond_dim"),
    (lambda c: c["config"].update(modular_local_cond_configs=[{"id": "x", "dim": 4}]), "modular"),
    (lambda c: c["config"]["attn_kwargs"].update(made_up=True), "made_up"),
    (lambda c: c["config"].update(global_cond_type="cross"), "global_cond_type"),
])
def test_a_dit_config_the_reference_would_build_differently_is_refused(change, words):
    from musicguide.models.sa3_dit import sa3_dit_config_from_dict

    config = copy.deepcopy(bench().DIT_CASES["dit-adaln-cross-concat"])
    change(config)
    with pytest.raises(ValueError, match=words):
        sa3_dit_config_from_dict(config)


def test_the_dit_keeps_the_frames_and_takes_each_condition():
    from musicguide.models.sa3_dit import SA3DiT, sa3_dit_config_from_dict

    module = bench()
    for name, config in module.DIT_CASES.items():
        model = SA3DiT(sa3_dit_config_from_dict(config)).eval()
        inputs = module.dit_inputs(config, torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = model(inputs.pop("x"), inputs.pop("t"), **inputs)
        assert out.shape == (2, 8, module.DIT_FRAMES) and torch.isfinite(out).all(), name
