"""The vit family's timm rules: read a ViTConfig off a live timm model; timm's checkpoint filter.

``config_from_timm`` refuses, by name, every timm part that vitjax does not mirror. The checkpoint
half is pure numpy (plus jax for resampling): OpenAI-CLIP / DINOv2 / OpenCLIP layouts, DeiT-3 gamma
renames and position-embedding resampling, as timm's ``checkpoint_filter_fn`` applies them.
Imports nothing from torch or timm: a module handed in brings them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from vitjax.layers.pos_embed import resample_abs_pos_embed
from vitjax.models.common import (
    UnsupportedModelError,
    act_name,
    check_linear,
    cls_name,
    is_identity,
    norm_kind,
    require,
)
from vitjax.models.vit_config import VARIANTS, ViTConfig, mlp_ratio_for
from vitjax.util import to_2tuple
from vitjax.weights.errors import WeightMismatchError

# Other timm ViT classes, and what they have that VisionTransformer does not.
_OTHER_CLASSES = {
    "Eva": "rotary position embeddings, SwiGLU: EVA, DINOv3, PE, RoPE ViTs",
    "VisionTransformerRelPos": "relative-position attention bias",
    "VisionTransformerSAM": "windowed attention, relative positions",
    "NaFlexVit": "variable-resolution NaFlex embedding",
}


TIMM_CLASSES = ("VisionTransformer", "VisionTransformerDistilled")


def _check_block(blk: Any, i: int, ref: dict[str, Any]) -> None:
    """Refuse a block vitjax cannot mirror or one that differs from block 0 (``ref``)."""
    w = f"blocks.{i}"
    require(
        cls_name(blk) == "Block",
        f"{w} of type {cls_name(blk)} (parallel / res-post / scaled blocks)",
    )
    attn, mlp = blk.attn, blk.mlp
    require(cls_name(attn) == "Attention", f"{w}.attn of type {cls_name(attn)}")
    require(cls_name(mlp) == "Mlp", f"{w}.mlp of type {cls_name(mlp)} (SwiGLU / GLU MLPs)")
    dim, heads = ref["dim"], ref["num_heads"]
    require(attn.num_heads == heads, f"{w}.attn with {attn.num_heads} heads (block 0 has {heads})")
    require(attn.head_dim * heads == dim, f"{w}.attn with attn_head_dim != dim / num_heads")
    check_linear(attn.qkv, f"{w}.attn.qkv", dim, 3 * dim, ref["qkv_bias"])
    check_linear(attn.proj, f"{w}.attn.proj", dim, dim, ref["proj_bias"])
    require(is_identity(getattr(attn, "norm", None)), f"{w}.attn.norm (scale_attn_norm)")
    require(getattr(attn, "gate", None) is None, f"{w}.attn.gate (gated attention)")
    require(abs(attn.scale - attn.head_dim**-0.5) < 1e-12, f"{w}.attn with a custom scale")
    for qk in ("q_norm", "k_norm"):
        has = not is_identity(getattr(attn, qk))
        require(has == ref["qk_norm"], f"{w}.attn.{qk} differing from block 0")
        if has:
            require(
                norm_kind(getattr(attn, qk), f"{w}.attn.{qk}") == ref["norm"],
                f"{w}.attn.{qk} with another norm kind or eps",
            )
    check_linear(mlp.fc1, f"{w}.mlp.fc1", dim, ref["hidden"], ref["proj_bias"])
    check_linear(mlp.fc2, f"{w}.mlp.fc2", ref["hidden"], dim, ref["proj_bias"])
    require(is_identity(getattr(mlp, "norm", None)), f"{w}.mlp.norm (scale_mlp_norm)")
    require(act_name(mlp.act, f"{w}.mlp.act") == ref["act"], f"{w}.mlp.act differing from block 0")
    for n in ("norm1", "norm2"):
        require(norm_kind(getattr(blk, n), f"{w}.{n}") == ref["norm"], f"{w}.{n} with another eps")
    for ls in ("ls1", "ls2"):
        mod = getattr(blk, ls)
        has = not is_identity(mod)
        require(has == (ref["init_values"] is not None), f"{w}.{ls} differing from block 0")
        if has:
            require(cls_name(mod) == "LayerScale", f"{w}.{ls} of type {cls_name(mod)}")


def _check_pool(model: Any, ref: dict[str, Any]) -> None:
    pool = model.attn_pool
    if model.global_pool == "prr" or cls_name(pool) == "AttentionPoolPrr":
        raise UnsupportedModelError(
            "global_pool='prr' (AttentionPoolPrr) is not supported by vitjax"
        )
    if pool is None:
        return
    require(cls_name(pool) == "AttentionPoolLatent", f"attn_pool of type {cls_name(pool)}")
    require(
        pool.latent_len == 1 and pool.pos_embed is None and pool.pool == "token",
        "attn_pool with latent_len > 1, a position embedding or non-token pooling",
    )
    require(
        is_identity(pool.q_norm) and pool.mlp is not None,
        "attn_pool with qk_norm or out_features=0",
    )
    dim, hidden = ref["dim"], ref["hidden"]
    require(pool.num_heads == ref["num_heads"], "attn_pool with its own head count")
    check_linear(pool.q, "attn_pool.q", dim, dim, True)
    check_linear(pool.kv, "attn_pool.kv", dim, 2 * dim, True)
    check_linear(pool.proj, "attn_pool.proj", dim, dim, True)
    require(ref["proj_bias"], "attn_pool ('map') together with proj_bias=False")
    check_linear(pool.mlp.fc1, "attn_pool.mlp.fc1", dim, hidden, True)
    check_linear(pool.mlp.fc2, "attn_pool.mlp.fc2", hidden, dim, True)
    require(is_identity(getattr(pool.mlp, "norm", None)), "attn_pool.mlp.norm")
    require(
        act_name(pool.mlp.act, "attn_pool.mlp.act") == ref["act"],
        "attn_pool.mlp.act differing from the blocks'",
    )
    require(
        norm_kind(pool.norm, "attn_pool.norm") == ref["norm"], "attn_pool.norm with another eps"
    )


def _check_patch_embed(model: Any, pre_norm: bool, norm: tuple[str, float]) -> None:
    pe = model.patch_embed
    require(cls_name(pe) == "PatchEmbed", f"patch_embed of type {cls_name(pe)} (hybrid CNN stems)")
    proj = pe.proj
    require(cls_name(proj) == "Conv2d", f"patch_embed.proj of type {cls_name(proj)}")
    require(
        tuple(proj.kernel_size) == tuple(proj.stride) == tuple(pe.patch_size)
        and tuple(proj.padding) == (0, 0)
        and proj.groups == 1,
        "patch_embed.proj that is not a plain patchify convolution",
    )
    require(
        (proj.bias is None) == pre_norm,
        f"patch_embed.proj with bias={proj.bias is not None} and pre_norm={pre_norm}",
    )
    if not is_identity(pe.norm):
        require(norm_kind(pe.norm, "patch_embed.norm") == norm, "patch_embed.norm with another eps")


def _square(x: tuple[int, int]) -> int | tuple[int, int]:
    return x[0] if x[0] == x[1] else (int(x[0]), int(x[1]))


def _drop(m: Any) -> float:
    return float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)


def config_from_timm(model: Any) -> ViTConfig:
    """ViTConfig equal to a timm VisionTransformer / VisionTransformerDistilled instance."""
    name = cls_name(model)
    require(
        name in ("VisionTransformer", "VisionTransformerDistilled"),
        f"model class {name} ({_OTHER_CLASSES.get(name, 'another ViT class')})",
    )
    require(is_identity(getattr(model, "patch_drop", None)), "patch_drop (patch dropout)")
    require(len(model.blocks) > 0, "a model with no blocks")
    blk = model.blocks[0]
    dim = model.embed_dim
    require(
        cls_name(blk) == "Block", f"blocks.0 of type {cls_name(blk)} (parallel / res-post blocks)"
    )
    require(cls_name(blk.attn) == "Attention", f"blocks.0.attn of type {cls_name(blk.attn)}")
    require(
        cls_name(blk.mlp) == "Mlp", f"blocks.0.mlp of type {cls_name(blk.mlp)} (SwiGLU / GLU MLPs)"
    )
    ls = getattr(blk, "ls1", None)
    ref = dict(
        dim=dim,
        num_heads=blk.attn.num_heads,
        qkv_bias=blk.attn.qkv.bias is not None,
        proj_bias=blk.attn.proj.bias is not None,
        qk_norm=not is_identity(blk.attn.q_norm),
        hidden=blk.mlp.fc1.out_features,
        act=act_name(blk.mlp.act, "blocks.0.mlp.act"),
        norm=norm_kind(blk.norm1, "blocks.0.norm1"),
        init_values=None if is_identity(ls) else float(ls.init_values),
    )
    for i, b in enumerate(model.blocks):
        _check_block(b, i, ref)
    _check_pool(model, ref)
    pre_norm = not is_identity(model.norm_pre)
    _check_patch_embed(model, pre_norm, ref["norm"])
    for n in ("norm_pre", "norm", "fc_norm"):
        if not is_identity(getattr(model, n)):
            require(
                norm_kind(getattr(model, n), n) == ref["norm"], f"{n} with another norm kind or eps"
            )
    pe = model.patch_embed
    global_pool = model.global_pool
    final_norm = not (is_identity(model.norm) and is_identity(model.fc_norm))
    use_fc_norm = not is_identity(model.fc_norm)
    fc_norm = (
        None
        if not final_norm or use_fc_norm == (global_pool in ("avg", "max", "avgmax"))
        else use_fc_norm
    )
    cfg = ViTConfig(
        img_size=_square(tuple(pe.img_size)),
        patch_size=_square(tuple(pe.patch_size)),
        in_chans=pe.proj.in_channels,
        num_classes=model.num_classes,
        global_pool=global_pool,
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=ref["num_heads"],
        mlp_ratio=mlp_ratio_for(dim, ref["hidden"]),
        qkv_bias=ref["qkv_bias"],
        qk_norm=ref["qk_norm"],
        proj_bias=ref["proj_bias"],
        init_values=ref["init_values"],
        class_token=model.cls_token is not None,
        pos_embed="learn" if model.pos_embed is not None else "none",
        no_embed_class=bool(model.no_embed_class),
        reg_tokens=int(getattr(model, "num_reg_tokens", 0)),
        pre_norm=pre_norm,
        final_norm=final_norm,
        fc_norm=fc_norm,
        pool_include_prefix=bool(model.pool_include_prefix),
        dynamic_img_size=bool(model.dynamic_img_size),
        dynamic_img_pad=bool(pe.dynamic_img_pad),
        drop_rate=_drop(model.head_drop),
        pos_drop_rate=_drop(model.pos_drop),
        proj_drop_rate=_drop(blk.attn.proj_drop),
        attn_drop_rate=_drop(blk.attn.attn_drop),
        drop_path_rate=_drop(model.blocks[-1].drop_path1),
        embed_norm=not is_identity(pe.norm),
        norm_layer=ref["norm"][0],
        norm_eps=ref["norm"][1],
        act_layer=ref["act"],
        distilled=getattr(model, "dist_token", None) is not None,
    )
    if model.pos_embed is not None:
        shape = tuple(model.pos_embed.shape)
        require(
            shape == (1, cfg.embed_len, dim),
            f"pos_embed of shape {shape} (the tokens need {(1, cfg.embed_len, dim)}; e.g. "
            "VisionTransformerDistilled with no_embed_class, which timm cannot run either)",
        )
    return cfg


# --- timm's checkpoint conventions (numpy) ----------------------------------------------------

_CLIP_SWAPS = (
    ("conv1", "patch_embed.proj"),
    ("positional_embedding", "pos_embed"),
    ("transformer.resblocks.", "blocks."),
    ("ln_pre", "norm_pre"),
    ("ln_post", "norm"),
    ("ln_", "norm"),
    ("in_proj_", "qkv."),
    ("out_proj", "proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)


def _convert_openai_clip(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """OpenAI CLIP visual tower keys -> timm keys (timm's _convert_openai_clip)."""
    out: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        k = k.replace(prefix, "")
        for a, b in _CLIP_SWAPS:
            k = k.replace(a, b)
        if k == "proj":
            k, v = "head.weight", v.T
            out["head.bias"] = np.zeros(v.shape[0], v.dtype)
        elif k == "class_embedding":
            k, v = "cls_token", v[None, None]
        elif k == "pos_embed":
            v = v[None]
        out[k] = v
    return out


def _convert_dinov2(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Meta DINOv2 keys -> timm keys (timm's _convert_dinov2)."""
    sd = {k: v for k, v in sd.items() if k != "mask_token"}
    out: dict[str, np.ndarray] = {}
    if "register_tokens" in sd:
        out["reg_token"] = sd.pop("register_tokens")
        out["cls_token"] = sd.pop("cls_token") + sd["pos_embed"][:, 0]
        out["pos_embed"] = sd.pop("pos_embed")[:, 1:]
    for k, v in sd.items():
        k = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", k)
        k = re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", k)
        out[k] = v
    return out


def _strip(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def filter_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Foreign layouts -> timm keys, as timm's checkpoint_filter_fn does (no resampling here)."""
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    if "visual.class_embedding" in sd:
        sd = _convert_openai_clip(sd, "visual.")
    elif "module.visual.class_embedding" in sd:
        sd = _convert_openai_clip(sd, "module.visual.")
    elif "mask_token" in sd:
        sd = _convert_dinov2(sd)
    elif "vision_encoder.mask_token" in sd:
        sd = _convert_dinov2(_strip(sd, "vision_encoder."))
    elif "visual.trunk.pos_embed" in sd or "visual.trunk.blocks.0.norm1.weight" in sd:
        head = sd.get("visual.head.proj.weight")
        sd = _strip(sd, "visual.trunk.")
        if head is not None:
            sd["head.weight"], sd["head.bias"] = head, np.zeros(head.shape[0], head.dtype)
    elif "module.visual.trunk.pos_embed" in sd:
        sd = _strip(sd, "module.visual.trunk.")
    elif any(k.startswith("radio_model.") for k in sd):
        raise UnsupportedModelError(
            "NVIDIA RADIO checkpoints (radio_model.*) are not converted by vitjax; load them in "
            "timm and use vitjax.from_timm(model)"
        )
    out = {}
    for k, v in sd.items():
        if k.startswith("pre_logits"):
            continue  # representation layer, dropped by timm
        out[re.sub(r"gamma_([0-9])", r"ls\1.gamma", k)] = v  # DeiT-3 layer scale
    return out


def source_grid(num_tokens: int, default: tuple[int, int] | None = None) -> tuple[int, int]:
    """The position grid a checkpoint was trained on: ``default`` if it fits, else a square."""
    if default is not None and default[0] * default[1] == num_tokens:
        return tuple(default)
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"cannot infer the position-embedding grid from {num_tokens} patch tokens "
            "(not square and not the model's default grid)"
        )
    return side, side


def adapt_pos_embed(
    state_dict: dict[str, np.ndarray],
    cfg: ViTConfig,
    old_grid: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> dict[str, np.ndarray]:
    """Resample the checkpoint's pos_embed to cfg's grid, as timm does when loading weights."""
    pe = state_dict.get("pos_embed")
    if pe is None or not cfg.has_pos_embed or pe.ndim != 3:
        return state_dict
    n_prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
    grid = source_grid(pe.shape[1] - n_prefix, old_grid)
    if pe.shape[1] == cfg.embed_len and grid == cfg.grid_size:
        return state_dict
    new = resample_abs_pos_embed(
        jnp.asarray(pe, jnp.float32),
        cfg.grid_size,
        grid,
        n_prefix,
        method=interpolation,
        antialias=antialias,
    )
    return {**state_dict, "pos_embed": np.asarray(new).astype(pe.dtype)}


def reshape_linear_patch_embed(state_dict: dict[str, np.ndarray], cfg: ViTConfig) -> None:
    """Old linear patch projections (O, C*ph*pw) -> conv weights (O, C, ph, pw), in place."""
    w = state_dict.get("patch_embed.proj.weight")
    if w is not None and w.ndim < 4:
        ph, pw = to_2tuple(cfg.patch_size)
        state_dict["patch_embed.proj.weight"] = w.reshape(w.shape[0], -1, ph, pw)


def describe_state_dict(state_dict: Mapping[str, Any]) -> str:
    """A one-line guess of the architecture a timm-key state_dict holds (for error messages)."""
    parts = []
    w = state_dict.get("patch_embed.proj.weight")
    if w is not None and np.ndim(w) == 4:
        parts += [f"embed_dim={np.shape(w)[0]}", f"patch_size={tuple(np.shape(w)[2:])}"]
    blocks = {int(m[1]) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        parts.append(f"depth={max(blocks) + 1}")
    for k in ("pos_embed", "reg_token", "head.weight"):
        if k in state_dict:
            parts.append(f"{k} {tuple(np.shape(state_dict[k]))}")
    return ", ".join(parts) or "no timm ViT keys"


def timm_model_args(name: str, cfg: ViTConfig) -> dict[str, Any]:
    """timm.create_model kwargs that turn the named timm model into cfg (differences only)."""
    base = ViTConfig(**VARIANTS[name.partition(".")[0]])
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        new, old = getattr(cfg, f.name), getattr(base, f.name)
        if new == old or f.name in ("attn_impl", "dense_impl"):
            continue
        if f.name == "embed_norm":
            out["embed_norm_layer"] = cfg.norm_layer if new else None
        elif f.name in ("norm_eps", "attn_scale", "distilled"):
            raise ValueError(f"{f.name}={new!r} (model default {old!r}) has no timm argument")
        else:
            out[f.name] = new
    return out


# --- The tutorial notebook's own layout -------------------------------------------------------

_NOTEBOOK_RULES = [
    (r"input_layer\.patch_emb_layer\.", "patch_embed.proj."),
    (r"input_layer\.cls_token$", "cls_token"),
    (r"input_layer\.pos_emb$", "pos_embed"),
    (r"encoder\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"encoder\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"encoder\.(\d+)\.msa\.w_o\.0\.", r"blocks.\1.attn.proj."),
    (r"encoder\.(\d+)\.mlp\.0\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.(\d+)\.mlp\.3\.", r"blocks.\1.mlp.fc2."),
    (r"mlp_head\.0\.", "norm."),
    (r"mlp_head\.1\.", "head."),
]
_NOTEBOOK_QKV = re.compile(r"encoder\.(\d+)\.msa\.w_([qkv])\.(weight|bias)$")


def is_notebook_layout(state_dict: Mapping[str, Any]) -> bool:
    """True for a state_dict saved from the tutorial notebook's ViT class."""
    return "input_layer.cls_token" in state_dict and any(
        k.startswith("encoder.") for k in state_dict
    )


def notebook_to_timm(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rename the notebook's keys to timm's and fuse its w_q/w_k/w_v into one qkv."""
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        arr = np.asarray(value)
        m = _NOTEBOOK_QKV.match(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = arr
            continue
        for pattern, repl in _NOTEBOOK_RULES:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = arr
                break
        else:
            raise WeightMismatchError(f"unexpected key {key!r} in a notebook-layout state_dict")
    for (i, leaf), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise WeightMismatchError(f"block {i}: w_q/w_k/w_v.{leaf} incomplete: {sorted(parts)}")
        out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate([parts[c] for c in "qkv"], axis=0)
    return out


def checkpoint_overrides(state_dict: Mapping[str, Any], cfg: ViTConfig) -> dict[str, Any]:
    """Config overrides a file's layout implies: the notebook's sqrt(num_heads) scale, qkv bias."""
    if not is_notebook_layout(state_dict):
        return {}
    has_bias = any(k.endswith("msa.w_q.bias") for k in state_dict)
    return dict(attn_scale=cfg.num_heads**-0.5, qkv_bias=has_bias)


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any],
    cfg: ViTConfig,
    resample_pos_embed: bool = False,
    source_grid: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> dict[str, np.ndarray]:
    """Any layout the vit family's weights are published in -> timm keys, as timm's filter.

    The notebook's class layout, OpenAI CLIP, OpenCLIP, DINOv2, DeiT-3 gamma names and linear
    patch projections; with resample_pos_embed, pos_embed is resized to cfg's grid from
    source_grid (or the square / default grid its length implies).
    """
    if is_notebook_layout(state_dict):
        sd = notebook_to_timm(state_dict)
    else:
        sd = filter_state_dict(state_dict)
        reshape_linear_patch_embed(sd, cfg)
    if resample_pos_embed:
        try:
            sd = adapt_pos_embed(sd, cfg, source_grid, interpolation, antialias=antialias)
        except ValueError as e:
            raise WeightMismatchError(f"pos_embed: {e}") from e
    return sd
