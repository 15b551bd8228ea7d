"""Lean loading: safetensors read tensor by tensor, leaves placed one at a time, dtypes kept.

Memory claims run in fresh processes and compare peak RSS growth with the file's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import vitjax
from vitjax.weights import convert
from vitjax.weights.errors import CheckpointError, WeightMismatchError
from vitjax.weights.lazy import LazySafetensors, address, load, owned

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


@pytest.fixture(params=["numpy", "program"])
def placement(request, monkeypatch):
    """Both ways place.Placer puts leaves: through numpy (models up to HOST_MODEL_BYTES) and
    through the jitted program (bigger ones); the same values, dtypes and errors."""
    from vitjax.weights import place

    monkeypatch.setattr(place, "HOST_MODEL_BYTES", 1 << 40 if request.param == "numpy" else -1)
    return request.param


def test_lazy_safetensors_reads_what_safetensors_reads(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "bf16": rng.standard_normal((2, 3, 4)).astype(ml_dtypes.bfloat16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "bool": np.array([True, False, True]),
        "scalar": np.array(3.5, np.float64),
        "empty": np.zeros((0, 4), np.float32),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"writer": "test"})
    lazy = LazySafetensors(path)
    assert lazy.metadata == {"writer": "test"}
    assert {k: (v.shape, v.dtype) for k, v in lazy.items()} == {
        k: (v.shape, v.dtype) for k, v in tensors.items()
    }
    ref, got = load_file(str(path)), load(path)
    for k in tensors:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
        assert got[k].dtype == ref[k].dtype and owned(got[k]), k
        assert address(got[k]) % 64 == 0 or got[k].size == 0, k


def _write_raw(path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


@pytest.mark.parametrize(
    "header, data, says",
    [
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "outside"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, "bytes for"),
        ({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "not supported"),
        ({"a": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}, b"\0" * 4, "bad entry"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlap",
        ),
    ],
    ids=["past-the-end", "size-mismatch", "unknown-dtype", "bad-shape", "overlap"],
)
def test_lazy_safetensors_refuses_a_bad_header_naming_file_and_tensor(tmp_path, header, data, says):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(CheckpointError, match=says) as e:
        LazySafetensors(path)
    assert str(path) in str(e.value)


def test_a_file_truncated_after_open_names_the_tensor(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.ones(1000, np.float32)}, str(path))
    lazy = LazySafetensors(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(CheckpointError, match="truncated: tensor a"):
        np.asarray(lazy["a"])


def test_stacked_lists_convert_both_ways():
    rng = np.random.default_rng(1)
    sd = {f"blocks.{i}.fc.weight": rng.standard_normal((3, 2)).astype(np.float32) for i in range(4)}
    sd.update(
        {f"blocks.{i}.norm.bias": rng.standard_normal(3).astype(np.float32) for i in range(4)}
    )
    sd["head.weight"] = rng.standard_normal((5, 3)).astype(np.float32)
    expected = {
        "params": {
            "blocks": {"fc": {"kernel": np.zeros((4, 2, 3))}, "norm": {"bias": np.zeros((4, 3))}},
            "head": {"kernel": np.zeros((3, 5))},
        }
    }
    got = convert.torch_to_flax_variables(dict(sd), expected, stacked={"blocks": 4})
    kernel = got["params"]["blocks"]["fc"]["kernel"]
    assert kernel.shape == (4, 2, 3)
    np.testing.assert_array_equal(kernel[2], sd["blocks.2.fc.weight"].T)
    back = convert.flax_to_torch(got["params"], stacked={"blocks": 4})
    assert back.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    with pytest.raises(WeightMismatchError, match=r"missing key blocks\.3\.fc\.weight"):
        convert.torch_to_flax_variables(
            {k: v for k, v in sd.items() if k != "blocks.3.fc.weight"}, expected,
            stacked={"blocks": 4},
        )  # fmt: skip


def test_consumed_state_dict_empties_as_it_converts():
    model, variables = vitjax.create_model("vit_tiny_patch16_224", **TINY)
    sd = vitjax.to_timm_state_dict(model, variables)
    mine = dict(sd)
    back = convert.torch_to_flax_variables(mine, variables, consume=True)
    assert mine == {}
    np.testing.assert_array_equal(
        back["params"]["head"]["kernel"], variables["params"]["head"]["kernel"]
    )


@pytest.mark.parametrize("file_dtype", [np.float16, ml_dtypes.bfloat16])
def test_dtype_rules_on_load(tmp_path, file_dtype, placement):
    model, variables = vitjax.create_model("vit_tiny_patch16_224", **TINY)
    sd = {k: v.astype(file_dtype) for k, v in vitjax.to_timm_state_dict(model, variables).items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, str(path))

    def dtypes(v):
        return {np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(v)}

    _, v = vitjax.create_model("vit_tiny_patch16_224", checkpoint_path=path, **TINY)
    assert dtypes(v) == {np.dtype(np.float32)}  # half weights are never trained as half by default
    _, v = vitjax.create_model(
        "vit_tiny_patch16_224", checkpoint_path=path, dtype=file_dtype, **TINY
    )
    assert dtypes(v) == {np.dtype(file_dtype)}  # asked for: the file's dtype, no fp32 copy
    model, v = vitjax.create_model(
        "vit_tiny_patch16_224", checkpoint_path=path, param_dtype=jnp.bfloat16, **TINY
    )
    assert dtypes(v) == {np.dtype(jnp.bfloat16)}  # cast straight from the file's values
    back = vitjax.to_timm_state_dict(model, v)
    for k, want in sd.items():
        got, want = back[k].astype(np.float32), want.astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(got, want, err_msg=k)


def test_nonfinite_weights_are_named_after_placing(tmp_path, placement):
    model, variables = vitjax.create_model("vit_tiny_patch16_224", **TINY)
    sd = vitjax.to_timm_state_dict(model, variables)
    sd["blocks.1.mlp.fc1.weight"] = sd["blocks.1.mlp.fc1.weight"].copy()
    sd["blocks.1.mlp.fc1.weight"][0, :3] = np.nan
    path = tmp_path / "nan.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight \(3 of"):
        vitjax.create_model("vit_tiny_patch16_224", checkpoint_path=path, **TINY)
    _, v = vitjax.create_model(
        "vit_tiny_patch16_224", checkpoint_path=path, allow_nonfinite=True, **TINY
    )
    assert np.isnan(np.asarray(v["params"]["blocks_1"]["mlp"]["fc1"]["kernel"])).sum() == 3


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import jax, jax.numpy as jnp, numpy as np, vitjax
    kw = json.loads(sys.argv[3])
    if kw.pop("bf16", False):
        kw.update(dtype=jnp.bfloat16)
    jax.block_until_ready(jnp.zeros(8) + 1)  # the runtime's own memory before the baseline
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if sys.argv[2]:
        kw["checkpoint_path"] = sys.argv[2]
    model, variables = vitjax.create_model(sys.argv[1], **kw)
    jax.block_until_ready(variables)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dtypes = sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(variables)})
    print(json.dumps({"grew": peak - rss0, "params": vitjax.factory.count_params(variables),
                      "dtypes": dtypes}))
    """
)


def _file_from_shapes(name: str, dtype, **cut) -> dict[str, np.ndarray]:
    """A timm state_dict for name made from its shapes alone (no model initialised): 4,099
    random values repeated (drawing every value of a 7B-width model took ~6 s)."""
    model = vitjax.build_model(name, **cut)
    shapes = convert.expected_torch_shapes(vitjax.factory.variable_shapes(model))
    seed = (0.02 * np.random.default_rng(0).standard_normal(4099, np.float32)).astype(dtype)
    return {k: np.resize(seed, s) for k, s in shapes.items()}


def _measure(name: str, path, **kw) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, name, str(path or ""), json.dumps(kw)],
        capture_output=True, text=True, timeout=300, env={"JAX_PLATFORMS": "cpu",
                                                          "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_grows_memory_by_about_the_file_size(tmp_path):
    # vit_base at depth 6 (about 180 MB): before lean loading a load held ~3x the file
    cut = dict(depth=6)
    path = tmp_path / "base.safetensors"
    save_file(_file_from_shapes("vit_base_patch16_224", np.float32, **cut), str(path))
    size = path.stat().st_size
    got = _measure("vit_base_patch16_224", path, **cut)
    assert got["grew"] <= 1.15 * size + 48 * 2**20, (got, size)


@pytest.mark.slow
def test_a_7b_width_model_loads_in_bf16_without_a_float32_copy(tmp_path):
    # vit_7b_patch16_dinov3 at depth 2 keeps its width (4096, SwiGLU 8192). Its bf16 file is
    # written from the model's shapes alone (no fp32 model anywhere); with dtype=bf16 the load
    # keeps bf16, and memory grows by about the file's size, not twice it
    name, cut = "vit_7b_patch16_dinov3", dict(depth=2)
    path = tmp_path / "7b_cut.safetensors"
    save_file(_file_from_shapes(name, ml_dtypes.bfloat16, **cut), str(path))
    got = _measure(name, path, bf16=True, **cut)
    size = path.stat().st_size
    assert got["dtypes"] == ["bfloat16"] and 2 * got["params"] == size - _header(path)
    assert got["grew"] <= 1.15 * size + 64 * 2**20, (got, size)


def _header(path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_random_init_casts_inside_the_jitted_init():
    _, v = vitjax.create_model("vit_tiny_patch16_224", param_dtype=jnp.bfloat16, **TINY)
    _, ref = vitjax.create_model("vit_tiny_patch16_224", **TINY)
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(v), strict=True):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(b))


@pytest.mark.parametrize(
    "name,kwargs",
    [("vit_tiny_patch16_224", TINY),
     ("vit_tiny_r_s16_p8_224", dict(img_size=32, depth=1)),  # ResNetV2 stem: StdConv, GroupNorm
     ("eva02_tiny_patch14_224", dict(img_size=28, depth=1))],
)  # fmt: skip
def test_random_init_compiled_with_its_options_is_bit_identical(name, kwargs, monkeypatch):
    """vitjax.one_off's compiler options (a quicker compile) give exactly the default program's
    values."""
    from vitjax import factory, one_off

    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the children's level would win (conftest)
    model, v = vitjax.create_model(name, **kwargs)
    x = jnp.zeros(factory._dummy_input(model.cfg).shape, jnp.float32)
    ref = jax.jit(lambda r: model.init(r, x))(jax.random.PRNGKey(0))  # XLA's defaults
    assert one_off.COMPILER_OPTIONS["cpu"]  # what the CPU test compares with the default
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(dict(ref))[0])
    flat = dict(jax.tree_util.tree_flatten_with_path(v)[0])
    assert flat.keys() == flat_ref.keys()
    for k, want in flat_ref.items():
        np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(want), err_msg=str(k))


def test_the_same_model_again_reuses_its_compiled_init():
    """A second create_model of one config (another seed, or a bf16 cast) compiles nothing new
    for the init; each seed gives what a freshly compiled init gives."""
    from vitjax import factory

    factory._init_program.cache_clear()
    model, v0 = vitjax.create_model("vit_tiny_patch16_224", seed=0, **TINY)
    _, v1 = vitjax.create_model("vit_tiny_patch16_224", seed=1, **TINY)
    assert factory._init_program.cache_info().misses == 1
    fresh = factory._compile_init(model, None, None)
    for seed, got in ((0, v0), (1, v1)):
        want = fresh(jax.random.PRNGKey(seed))
        for a, b in zip(
            jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pairs = zip(jax.tree_util.tree_leaves(v0), jax.tree_util.tree_leaves(v1), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)  # the seed reached the program
    _, half = vitjax.create_model("vit_tiny_patch16_224", param_dtype=jnp.bfloat16, **TINY)
    assert factory._init_program.cache_info().misses == 2  # another program for another dtype
    assert {x.dtype for x in jax.tree_util.tree_leaves(half)} == {jnp.dtype(jnp.bfloat16)}


def test_scanned_load_places_stacks_as_the_unrolled_load(tmp_path, placement):
    """scan_blocks=True: the stacked leaves (built on the device for a big model, in one host
    buffer for a small one) hold the unrolled load's values and dtypes; NaN is named by block."""
    model, variables = vitjax.create_model("vit_tiny_patch16_224", **TINY)
    sd = {k: v.astype(np.float16) for k, v in vitjax.to_timm_state_dict(model, variables).items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, str(path))
    for kw in ({}, {"param_dtype": jnp.bfloat16}, {"dtype": np.float16}):
        _, flat = vitjax.create_model("vit_tiny_patch16_224", checkpoint_path=path, **kw, **TINY)
        scanned, v = vitjax.create_model(
            "vit_tiny_patch16_224", checkpoint_path=path, scan_blocks=True, **kw, **TINY
        )
        back = vitjax.to_timm_state_dict(scanned, v)
        want = vitjax.to_timm_state_dict(model, flat)
        assert back.keys() == want.keys()
        for k in want:
            assert back[k].dtype == want[k].dtype, (kw, k)
            np.testing.assert_array_equal(back[k], want[k], err_msg=f"{kw} {k}")
    sd["blocks.1.mlp.fc1.weight"][0, :3] = np.nan
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight \(3 of"):
        vitjax.create_model("vit_tiny_patch16_224", checkpoint_path=path, scan_blocks=True, **TINY)
