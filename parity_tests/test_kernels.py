"""The kernel switches (attn_impl, dense_impl): every implementation on this machine equals torch.

"auto" picks per platform; forward-mode autodiff works through the plain ("xla") formulation,
which is the default on GPU/TPU and an option on the CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vittorch.vit as tv
from parity_tests.conftest import HAS_GPU
from parity_tests.helpers import flax_twin, nchw, randomize_
from parity_tests.parity import assert_close
from vitjax.layers import attention, dot_product_attention, linear
from vitjax.models import vit as jv
from vitjax.models.vit_config import ViTConfig

CFG = dict(img_size=(20, 28), patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=5)
IMPLS = [("xla", "xla"), ("cpu", "cpu"), ("xla", "cpu"), ("cpu", "xla")]
if HAS_GPU:
    IMPLS.append(("cudnn", "xla"))


def _x(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((batch, 20, 28, 3)).astype(np.float32)


@pytest.mark.parametrize("attn_impl,dense_impl", IMPLS, ids=[f"{a}-{d}" for a, d in IMPLS])
def test_vision_transformer_impl_matches_torch(attn_impl, dense_impl):
    cfg = ViTConfig(**CFG, attn_impl=attn_impl, dense_impl=dense_impl)
    x = _x()
    t = randomize_(tv.VisionTransformer(cfg))
    j = jv.VisionTransformer(cfg)
    with torch.no_grad():
        ref = t(nchw(x)).numpy()
    assert_close(j.apply(flax_twin(j, t, x), x), ref, f"logits[{attn_impl}-{dense_impl}]")


@pytest.mark.parametrize("impl", ["xla", "cpu"])
def test_dot_product_attention_impl_matches_torch_sdpa(impl):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 7, 8)).astype(np.float32) for _ in range(3))
    bias = rng.standard_normal((1, 3, 7, 7)).astype(np.float32)
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), attn_mask=torch.from_numpy(bias), scale=0.3
    ).numpy()
    out = dot_product_attention(q, k, v, 0.3, bias=bias, impl=impl)
    assert_close(out, ref, f"dot_product_attention[{impl}]")


def test_gradients_agree_between_impls():
    x = _x()
    grads = {}
    for impl in ("xla", "cpu"):
        model = jv.VisionTransformer(ViTConfig(**CFG, attn_impl=impl, dense_impl=impl))
        variables = model.init(jax.random.PRNGKey(0), x)
        loss = lambda p, m=model: m.apply({"params": p}, x).sum()  # noqa: E731
        grads[impl] = jax.grad(loss)(variables["params"])
    flat = jax.tree_util.tree_leaves_with_path(grads["xla"])
    other = jax.tree_util.tree_leaves(grads["cpu"])
    for (path, a), b in zip(flat, other, strict=True):
        assert_close(b, a, f"grad{jax.tree_util.keystr(path)}[cpu vs xla]")


def test_auto_chooses_per_platform(monkeypatch):
    if jax.default_backend() == "cpu":
        assert attention.resolve_attn_impl("auto", jnp.float32, 64) == "cpu"
    monkeypatch.setattr(attention, "platform", lambda: "gpu")
    assert attention.resolve_attn_impl("auto", jnp.bfloat16, 64) == "cudnn"
    assert attention.resolve_attn_impl("auto", jnp.float16, 128) == "cudnn"
    assert attention.resolve_attn_impl("auto", jnp.float32, 64) == "xla"  # cuDNN: half only
    assert attention.resolve_attn_impl("auto", jnp.bfloat16, 72 + 1) == "xla"
    assert attention.resolve_attn_impl("auto", jnp.bfloat16, 256) == "xla"
    assert attention.resolve_attn_impl("auto", jnp.bfloat16, 64, dropout=True) == "xla"
    monkeypatch.setattr(linear, "platform", lambda: "gpu")
    assert linear.resolve_dense_impl("auto") == "xla"
    monkeypatch.setattr(linear, "platform", lambda: "cpu")
    assert linear.resolve_dense_impl("auto") == "cpu"
    with pytest.raises(ValueError, match="attn_impl='flash'"):
        ViTConfig(**CFG, attn_impl="flash")


def _jvp_through(cfg: ViTConfig) -> tuple[np.ndarray, np.ndarray]:
    model = jv.VisionTransformer(cfg)
    x = _x()
    variables = model.init(jax.random.PRNGKey(0), x)
    f = lambda xx: model.apply(variables, xx)  # noqa: E731
    tangent = np.ones_like(x)
    _, jvp = jax.jvp(f, (x,), (tangent,))
    _, lin = jax.linearize(f, x)
    eps = 1e-2  # a central difference checks the directional derivative's value
    fd = (np.asarray(f(x + eps * tangent)) - np.asarray(f(x - eps * tangent))) / (2 * eps)
    np.testing.assert_allclose(np.asarray(lin(tangent)), np.asarray(jvp), rtol=1e-5, atol=1e-5)
    return np.asarray(jvp), fd


def test_forward_mode_autodiff_with_the_plain_kernels():
    jvp, fd = _jvp_through(ViTConfig(**CFG, dense_impl="xla"))
    np.testing.assert_allclose(jvp, fd, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU default")
def test_cpu_default_is_reverse_mode_only():
    with pytest.raises(TypeError, match="custom_vjp"):
        _jvp_through(ViTConfig(**CFG))


@pytest.mark.gpu
def test_forward_mode_autodiff_through_the_gpu_default():
    jvp, fd = _jvp_through(ViTConfig(**CFG))
    np.testing.assert_allclose(jvp, fd, rtol=2e-2, atol=2e-2)
