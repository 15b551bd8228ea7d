"""GPU parity (marker gpu; skipped without a GPU): the same models on CUDA on both sides.

fp32 at the pinned highest precision (conftest: jax "highest", torch TF32 off): whole-model logits
and pre-logits of three families against timm on cuda. bf16: the cuDNN attention kernel against
the plain XLA formulation (outputs and gradients, kernel and whole model), "auto" choosing cuDNN
and the kernel being in the compiled training step, and vitjax bf16 against timm under
torch.autocast on cuda.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from devtools.timm_verify import images, make_timm

import vitjax
from parity_tests.helpers import nchw
from parity_tests.parity import assert_close
from vitjax.layers import dot_product_attention
from vitjax.layers.attention import resolve_attn_impl

pytestmark = pytest.mark.gpu

# timm name -> create_model kwargs: depth cut where that keeps every feature of the family.
MODELS = {
    "vit_base_patch16_224": dict(depth=2),
    "eva02_tiny_patch14_224": dict(depth=2),  # EVA: rope, SwiGLU
    "vit_small_patch16_dinov3": dict(depth=2),  # registers, dinov3 rope, LayerScale
}


def _on_gpu(tree):
    """tree on the first GPU (the test fails if jax has none)."""
    gpu = jax.devices("gpu")[0]
    return jax.device_put(tree, gpu)


def _timm_cuda(tm: torch.nn.Module, x: np.ndarray, autocast: bool = False):
    """(logits, pre_logits) of a timm model on cuda for an NHWC batch, as float32 numpy."""
    tm = tm.cuda().eval()
    xt = nchw(x).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        feats = tm.forward_features(xt)
        logits, pre = tm.forward_head(feats), tm.forward_head(feats, pre_logits=True)
    return logits.float().cpu().numpy(), pre.float().cpu().numpy()


def _jax_outputs(model, variables, x):
    fwd = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, pre_logits=True)))
    logits, pre = fwd(_on_gpu(variables), _on_gpu(jnp.asarray(x)))
    assert logits.devices() == {jax.devices("gpu")[0]}
    return np.asarray(logits.astype(jnp.float32)), np.asarray(pre.astype(jnp.float32))


@pytest.mark.parametrize("name", list(MODELS))
def test_whole_model_fp32_matches_timm_on_cuda(name):
    assert torch.backends.cuda.matmul.allow_tf32 is False  # conftest's pin
    assert jax.config.jax_default_matmul_precision == "highest"
    tm = make_timm(name, num_classes=10, **MODELS[name])
    x = images(tm)
    model, variables = vitjax.from_timm(tm)  # converted on the host, before tm moves to cuda
    want_logits, want_pre = _timm_cuda(tm, x)
    logits, pre = _jax_outputs(model, variables, x)
    assert_close(logits, want_logits, f"{name} logits[gpu,fp32]", dtype="float32_model")
    assert_close(pre, want_pre, f"{name} pre_logits[gpu,fp32]", dtype="float32_model")


def test_auto_takes_cudnn_attention_in_bf16_and_the_train_step_contains_it():
    assert resolve_attn_impl("auto", jnp.bfloat16, 64) == "cudnn"
    assert resolve_attn_impl("auto", jnp.float32, 64) == "xla"
    model, variables = vitjax.create_model("vit_base_patch16_224", depth=2, dtype=jnp.bfloat16)
    x = _on_gpu(jnp.zeros((2, 224, 224, 3), jnp.float32))
    grad = jax.jit(jax.grad(lambda p, x: model.apply({"params": p}, x).astype(jnp.float32).sum()))
    lowered = grad.lower(_on_gpu(variables["params"]), x)
    targets = set(re.findall(r"__cudnn\$fmha\w*", lowered.as_text()))
    targets |= set(re.findall(r"__cudnn\$fmha\w*", lowered.compile().as_text()))
    assert any("Backward" not in t for t in targets), f"no cuDNN forward kernel: {targets}"
    assert any("Backward" in t for t in targets), f"no cuDNN backward kernel: {targets}"


def test_cudnn_attention_kernel_matches_xla_in_bf16():
    rng = np.random.default_rng(0)
    shape = (2, 12, 197, 64)  # vit_base: 12 heads, 196 patches + class token, head_dim 64
    q, k, v, ct = (_on_gpu(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)) for _ in range(4))
    scale = 64**-0.5

    def run(impl):
        f = lambda q, k, v: dot_product_attention(q, k, v, scale, impl=impl)  # noqa: E731
        out, vjp = jax.vjp(jax.jit(f), q, k, v)
        return (out, *vjp(ct))

    cudnn, xla = run("cudnn"), run("xla")
    for what, a, b in zip(("out", "dq", "dk", "dv"), cudnn, xla, strict=True):
        a, b = np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32))
        s = max(float(np.abs(b).max()), 1e-6)
        assert_close(
            a / s, b / s, f"dot_product_attention.{what}[cudnn vs xla,bf16]", dtype="bfloat16"
        )


def test_whole_model_cudnn_matches_xla_attention_in_bf16():
    kw = dict(depth=2, num_classes=10, dtype=jnp.bfloat16)
    m_cudnn, variables = vitjax.create_model("vit_base_patch16_224", attn_impl="cudnn", **kw)
    m_xla, _ = vitjax.create_model("vit_base_patch16_224", attn_impl="xla", **kw)
    x = _on_gpu(
        jnp.asarray(np.random.default_rng(1).standard_normal((4, 224, 224, 3)), jnp.float32)
    )
    params = _on_gpu(variables["params"])
    labels = _on_gpu(jnp.arange(4) % 10)

    def loss_and_logits(model):
        def loss(p):
            logits = model.apply({"params": p}, x).astype(jnp.float32)
            ll = jax.nn.log_softmax(logits)[jnp.arange(4), labels]
            return -ll.mean(), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, logits_c), grads_c = loss_and_logits(m_cudnn)
    (_, logits_x), grads_x = loss_and_logits(m_xla)
    assert_close(logits_c, logits_x, "vit_base logits[cudnn vs xla,bf16]", dtype="bfloat16")
    flat = jax.tree_util.tree_leaves_with_path(grads_x)
    for (path, gx), gc in zip(flat, jax.tree_util.tree_leaves(grads_c), strict=True):
        gx, gc = np.asarray(gx, np.float32), np.asarray(gc, np.float32)
        s = max(float(np.abs(gx).max()), 1e-12)  # each gradient relative to its own scale
        name = f"vit_base grad{jax.tree_util.keystr(path)}[cudnn vs xla,bf16]"
        assert_close(gc / s, gx / s, name, dtype="bfloat16")


def test_bf16_vit_base_matches_timm_autocast_on_cuda():
    tm = make_timm("vit_base_patch16_224", num_classes=10, depth=2)
    x = images(tm)
    model, variables = vitjax.from_timm(tm, dtype=jnp.bfloat16)  # bf16 compute, fp32 params
    assert jax.tree_util.tree_leaves(variables["params"])[0].dtype == jnp.float32
    want_logits, want_pre = _timm_cuda(tm, x, autocast=True)
    logits, pre = _jax_outputs(model, variables, x)
    assert_close(logits, want_logits, "vit_base logits[gpu,bf16 vs autocast]", dtype="bfloat16")
    assert_close(pre, want_pre, "vit_base pre_logits[gpu,bf16 vs autocast]", dtype="bfloat16")
