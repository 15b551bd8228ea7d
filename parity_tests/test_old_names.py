"""The names the tutorial notebook printed (an older timm's list_models('vit*')), and timm's
deprecated names: vitjax resolves them as timm 1.0.31 does (same architecture, the tag's class
count and input size, timm's warning), from a table that needs no timm.

Every notebook name timm can still build converts through both paths: its config is read off a
timm model built on the meta device at depth 1 (vitjax.from_timm's reader) and equals
vitjax.registry.get_config(name, depth=1) (what vitjax.create_model(name, ...) builds); a spread
of them also converts real weights, both paths, and exports back into timm.create_model(name).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from devtools.timm_verify import (
    flax_forward,
    images,
    make_timm,
    max_diff,
    save_timm_checkpoint,
    timm_forward,
)

import vitjax
from parity_tests.parity import assert_close
from vitjax import registry
from vitjax.models import deprecated

NOTEBOOK_FILE = Path(__file__).parent / "data" / "notebook_vit_models.txt"
NOTEBOOK_LINES = NOTEBOOK_FILE.read_text().split()
NOTEBOOK_NAMES = list(dict.fromkeys(NOTEBOOK_LINES))  # the notebook printed one name twice

# Real weights through both paths and back, depth 1, batch 1: a spread over the old names
# (in21k / DINO / MIIL / CLIP heads), the alternative blocks, relpos and the sizes.
WEIGHT_NAMES = [
    "vit_tiny_patch16_224_in21k",
    "vit_small_patch16_224_dino",
    "vit_base_patch16_224_miil_in21k",
    "vit_base_patch32_224_clip_laion2b",
    "vit_large_patch32_224_in21k",
    "vit_small_patch16_18x2_224",
    "vit_base_patch16_rpn_224",
    "vit_relpos_small_patch16_rpn_224",
]


def _quiet_timm(name: str, meta: bool = False, **kwargs) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if meta:
            with torch.device("meta"):
                return timm.create_model(name, pretrained=False, **kwargs)
        return make_timm(name, **kwargs)


def _timm_error(name: str) -> Exception | None:
    """What timm raises building name on the meta device (None if it builds)."""
    try:
        _quiet_timm(name, meta=True, depth=1)
    except Exception as e:  # noqa: BLE001  (timm raises RuntimeError / AssertionError)
        return e
    return None


def test_notebook_list_is_the_notebooks():
    assert len(NOTEBOOK_LINES) == 79 and len(NOTEBOOK_NAMES) == 78
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / NOTEBOOK_FILE.name
    if shared.is_file():
        assert shared.read_text().split() == NOTEBOOK_LINES


def test_deprecated_table_matches_timm():
    want_deprecated, want_pretrained = deprecated.from_timm()
    assert deprecated.DEPRECATED == want_deprecated
    assert deprecated.PRETRAINED == want_pretrained
    assert len(deprecated.DEPRECATED) == 34 and len(deprecated.PRETRAINED) == 31


@pytest.mark.parametrize(
    "name",
    ["vit_base_patch16_224_in21k", "vit_small_patch8_224_dino", "deit3_base_patch16_224_in21ft1k"],
)
def test_old_name_resolves_with_timms_warning(name):
    with pytest.warns(UserWarning) as timm_warned, torch.device("meta"):
        tm = timm.create_model(name, pretrained=False, depth=1)
    with pytest.warns(UserWarning) as vitjax_warned:
        family, arch, tag = registry.resolve(name)
    mapping = [str(w.message) for w in timm_warned if "deprecated" in str(w.message)]
    assert [str(w.message) for w in vitjax_warned] == mapping and len(mapping) == 1
    assert f"{arch}.{tag}" == f"{tm.pretrained_cfg['architecture']}.{tm.pretrained_cfg['tag']}"
    with pytest.warns(UserWarning, match="Mapping deprecated model name"):
        cfg = registry.get_config(name, depth=1)
    assert (cfg.num_classes, cfg.img_size) == (tm.num_classes, tm.patch_embed.img_size[0])
    fields = deprecated.pretrained_cfg(name)
    for key in ("mean", "std", "crop_pct", "interpolation", "input_size"):
        assert fields[key] == tm.pretrained_cfg[key], key


@pytest.mark.parametrize("name", ["vit_base_patch16_224_sam", "vit_base_patch32_224_sam"])
def test_old_name_timm_cannot_build_is_refused_alike(name):
    err = _timm_error(name)
    assert err is not None  # timm 1.0.31 maps it to a tag it no longer has
    with pytest.warns(UserWarning), pytest.raises(ValueError) as got:
        registry.get_config(name)
    assert str(err) in str(got.value)
    assert name not in vitjax.list_models(include_deprecated=True)


def test_list_models_lists_old_names_on_request():
    plain = vitjax.list_models("vit_*")
    with_old = vitjax.list_models("vit_*", include_deprecated=True)
    old = sorted(set(with_old) - set(plain))
    buildable = {
        n
        for n, cur in deprecated.DEPRECATED.items()
        if n.startswith("vit_")
        and cur in deprecated.PRETRAINED
        and registry.find_family(cur.split(".")[0])
    }
    assert old == sorted(buildable) and "vit_base_patch16_224_in21k" in old
    assert not set(old) & set(timm.list_models("vit_*"))  # timm never lists them


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_name_converts(name):
    """Config read off timm's model (from_timm) == the config create_model(name) builds."""
    err = _timm_error(name)
    if err is not None:  # timm 1.0.31 cannot build it either: vitjax refuses it too
        with warnings.catch_warnings(), pytest.raises(ValueError):
            warnings.simplefilter("ignore")
            registry.get_config(name, depth=1)
        return
    tm = _quiet_timm(name, meta=True, depth=1)
    family = registry.family_of_timm(tm)
    got = registry.model_module(family).config_from_timm(tm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = registry.get_config(name, depth=1)
    assert got == want


@pytest.mark.parametrize("name", WEIGHT_NAMES)
def test_notebook_name_weights_match_torch(name, tmp_path):
    """Both paths on real (random) weights, and the export loads into timm's model strictly."""
    assert name in NOTEBOOK_NAMES
    module = _quiet_timm(name, depth=1)
    x = images(module, batch=1)
    want = timm_forward(module, x)[0]
    model, variables = vitjax.from_timm(module)
    got = flax_forward(model, variables, x)[0]
    path = save_timm_checkpoint(module, tmp_path / "ckpt", "safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_model, file_vars = vitjax.create_model(name, checkpoint_path=path, depth=1)
    assert file_model.cfg == model.cfg
    got_file = flax_forward(file_model, file_vars, x)[0]
    for label, out in (("from_timm", got), ("checkpoint_path", got_file)):
        assert_close(out, want, f"{name} logits ({label})")
        assert max_diff(out, want)["rel"] <= 1e-5, label

    sd = vitjax.to_timm_state_dict(file_model, file_vars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = timm.create_model(name, pretrained=False, depth=1)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    assert_close(got_file, timm_forward(twin.eval(), x)[0], f"{name} exported logits")
