"""timm's HybridEmbed (CNN feature map -> ``proj`` conv -> tokens), and the reader that turns a
live timm HybridEmbed into its backbone config.

The backbone configs (frozen dataclasses, JSON through ``backbone_to_dict`` /
``backbone_from_dict``, ``feature_info(img_size)`` as integer arithmetic) live in the jax-free
``vitjax.models.hybrid_config`` and are re-exported here. timm's HybridEmbed stores
strict_img_size but never checks it; neither does this one.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.layers.cnn_stems import HYBRID_STD_CONV_EPS, make_divisible
from vitjax.layers.helpers import Dtype, to_2tuple
from vitjax.layers.linear import PatchConv
from vitjax.layers.patch_embed import check_images
from vitjax.models.hybrid_config import (  # noqa: F401  (re-exported)
    BACKBONES,
    BackboneConfig,
    ConvStemConfig,
    ResNetConfig,
    ResNetV2Config,
    Size,
    backbone_from_dict,
    backbone_to_dict,
)

# --- HybridEmbed ---------------------------------------------------------------------------------


class HybridEmbed(nn.Module):
    """(B, H, W, C) -> backbone feature map -> ``proj`` (patch_size conv) -> (B, N, D) tokens.

    ``output_fmt='NHWC'`` keeps the (B, gh, gw, D) grid (timm's dynamic_img_size path);
    ``use_proj=False`` is timm's ``proj=False`` (Identity; the backbone width is embed_dim).
    """

    backbone_cfg: BackboneConfig
    img_size: int | Size = 224
    patch_size: int | Size = 1
    in_chans: int = 3
    embed_dim: int = 768
    bias: bool = True
    use_proj: bool = True
    flatten: bool = True
    output_fmt: str | None = None
    dynamic_img_pad: bool = False
    dtype: Dtype = jnp.float32
    dense_impl: str = "auto"

    def setup(self) -> None:
        (fh, fw), (ph, pw) = self.feature_size, to_2tuple(self.patch_size)
        if not self.dynamic_img_pad and (fh % ph or fw % pw):
            raise ValueError(
                f"feature size {(fh, fw)} is not divisible by patch_size {(ph, pw)} "
                "(timm asserts this unless dynamic_img_pad=True)"
            )
        if not self.use_proj and self.feature_dim != self.embed_dim:
            raise ValueError(
                f"the feature dim ({self.feature_dim}) must match embed_dim ({self.embed_dim}) "
                "when the projection is disabled"
            )
        if self.output_fmt not in (None, "NHWC", "NLC"):
            raise ValueError(f"output_fmt={self.output_fmt!r}: expected None, 'NHWC' or 'NLC'")
        self.backbone = self.backbone_cfg.build(self.dtype)
        self.proj = None
        if self.use_proj:
            self.proj = PatchConv(
                self.embed_dim,
                (ph, pw),
                use_bias=self.bias,
                dtype=self.dtype,
                impl=self.dense_impl,
            )

    @property
    def feature_size(self) -> Size:
        """The backbone's (H, W) at img_size (timm infers it with a forward pass)."""
        return self.backbone_cfg.feature_info(self.img_size)[0]

    @property
    def feature_dim(self) -> int:
        """The backbone's output width."""
        return self.backbone_cfg.feature_info(self.img_size)[1]

    @property
    def feature_ratio(self) -> Size:
        """img_size // feature_size per axis, as timm stores it."""
        (h, w), (fh, fw) = to_2tuple(self.img_size), self.feature_size
        return h // fh, w // fw

    @property
    def grid_size(self) -> Size:
        """The token grid at img_size (floor, as timm)."""
        (fh, fw), (ph, pw) = self.feature_size, to_2tuple(self.patch_size)
        return fh // ph, fw // pw

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    def feat_ratio(self, as_scalar: bool = True) -> int | Size:
        """Total reduction (feature_ratio * patch_size), as timm's feat_ratio."""
        (rh, rw), (ph, pw) = self.feature_ratio, to_2tuple(self.patch_size)
        return max(rh * ph, rw * pw) if as_scalar else (rh * ph, rw * pw)

    def dynamic_feat_size(self, img_size: Size) -> Size:
        """The token grid timm predicts for another image size (via feature_ratio)."""
        (rh, rw), (ph, pw) = self.feature_ratio, to_2tuple(self.patch_size)
        fh, fw = img_size[0] // rh, img_size[1] // rw
        if self.dynamic_img_pad:
            return math.ceil(fh / ph), math.ceil(fw / pw)
        return fh // ph, fw // pw

    def _backbone(self, x: jax.Array, train: bool) -> jax.Array:
        if isinstance(self.backbone, (list, tuple)):  # ConvStem: torch's Sequential
            for layer in self.backbone:
                x = layer(x, train)
            return x
        return self.backbone(x, train)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x, self.in_chans)
        x = self._backbone(x, train)  # (B, fh, fw, C)
        B, H, W, C = x.shape
        if self.dynamic_img_pad:
            ph, pw = to_2tuple(self.patch_size)
            x = jnp.pad(x, ((0, 0), (0, (ph - H % ph) % ph), (0, (pw - W % pw) % pw), (0, 0)))
        if self.proj is not None:
            x = self.proj(x)  # (B, gh, gw, D)
        if self.output_fmt == "NHWC" or (self.output_fmt is None and not self.flatten):
            return x
        return x.reshape(B, -1, x.shape[-1])  # (B, N, D)


# --- Reading a live timm HybridEmbed (torch and timm come with the module handed in) ------------


def _cls(m: Any) -> str:
    return type(m).__name__


def _require(ok: bool, what: str) -> None:
    if not ok:
        from vitjax.models.common import UnsupportedModelError  # lazy: models import layers

        raise UnsupportedModelError(f"{what} is not supported by vitjax")


def _act(m: Any, where: str) -> str:
    table = {"ReLU": "relu", "SiLU": "silu", "GELU": "gelu"}
    _require(_cls(m) in table, f"{where}: activation {_cls(m)}")
    _require(getattr(m, "approximate", "none") == "none", f"{where}: tanh-approximate GELU")
    return table[_cls(m)]


def _check_conv(m: Any, where: str, k: int, s: int, bias: bool = False) -> None:
    got = (tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation), m.groups, m.bias is not None)
    _require(got == ((k, k), (s, s), (1, 1), 1, bias), f"{where} {got} (expected k={k}, s={s})")


def _check_group_norm(m: Any, where: str, act: bool) -> None:
    _require(_cls(m) == "GroupNormAct", f"{where} of type {_cls(m)}")
    _require((m.num_groups, m.eps, m.affine) == (32, 1e-5, True), f"{where} {m}")
    _require(_cls(m.drop) == "Identity", f"{where} with dropout")
    if act:
        _require(_cls(m.act) == "ReLU", f"{where}: activation {_cls(m.act)}")
    else:
        _require(_cls(m.act) == "Identity", f"{where} with an activation")


def _check_batch_norm(m: Any, where: str) -> str | None:
    """Checks a BatchNorm2d / BatchNormAct2d; returns its activation (None for none)."""
    _require(_cls(m) in ("BatchNorm2d", "BatchNormAct2d"), f"{where} of type {_cls(m)}")
    ok = m.affine and m.track_running_stats and m.momentum == 0.1 and m.eps == 1e-5
    _require(ok, f"{where} {m} (affine, tracked stats, momentum 0.1, eps 1e-5)")
    if _cls(m) == "BatchNorm2d":
        return None
    _require(_cls(m.drop) == "Identity", f"{where} with dropout")
    return None if _cls(m.act) == "Identity" else _act(m.act, where)


def _read_resnetv2_stem(stem: Any, where: str) -> tuple[int, bool]:
    """(stem_chs, padding_same) of create_resnetv2_stem(stem_type='same' or '', preact=False)."""
    names = [n for n, _ in stem.named_children()]
    _require(names == ["conv", "norm", "pool"], f"{where} with children {names}")
    same = _cls(stem.conv) == "StdConv2dSame"
    _require(_cls(stem.conv) in ("StdConv2d", "StdConv2dSame"), f"{where}.conv {_cls(stem.conv)}")
    _require(stem.conv.eps == HYBRID_STD_CONV_EPS, f"{where}.conv with eps {stem.conv.eps}")
    _check_conv(stem.conv, f"{where}.conv", 7, 2)
    _check_group_norm(stem.norm, f"{where}.norm", act=True)
    pool = stem.pool
    want_pool = "MaxPool2dSame" if same else "MaxPool2d"
    _require(_cls(pool) == want_pool, f"{where}.pool {_cls(pool)} with {_cls(stem.conv)}")
    _require(same or pool.padding == 1, f"{where}.pool with padding {pool.padding}")
    return stem.conv.out_channels, same


def _read_resnetv2(bb: Any, where: str) -> ResNetV2Config:
    stem_chs, same = _read_resnetv2_stem(bb.stem, f"{where}.stem")
    _require(_cls(bb.norm) == "Identity", f"{where}.norm {_cls(bb.norm)} (pre-activation)")
    _require(_cls(bb.head.fc) == "Identity", f"{where}.head with a classifier")
    _require(_cls(bb.head.global_pool.pool) == "Identity", f"{where}.head with pooling")
    conv_cls = "StdConv2dSame" if same else "StdConv2d"
    layers, channels = [], []
    for i, stage in enumerate(bb.stages):
        blocks = list(stage.blocks)
        out_chs = blocks[0].conv3.out_channels
        for j, b in enumerate(blocks):
            w = f"{where}.stages.{i}.blocks.{j}"
            _require(_cls(b) == "Bottleneck", f"{w} of type {_cls(b)}")
            mid = make_divisible(out_chs * 0.25)
            stride = 2 if i > 0 and j == 0 else 1
            for name, k, s, o in (
                ("conv1", 1, 1, mid),
                ("conv2", 3, stride, mid),
                ("conv3", 1, 1, out_chs),
            ):
                conv = getattr(b, name)
                _require(_cls(conv) == conv_cls, f"{w}.{name} {_cls(conv)} (stem has {conv_cls})")
                _require(conv.eps == HYBRID_STD_CONV_EPS, f"{w}.{name} with eps {conv.eps}")
                _require(conv.out_channels == o, f"{w}.{name} with {conv.out_channels} channels")
                _check_conv(conv, f"{w}.{name}", k, s)
            for name in ("norm1", "norm2", "norm3"):
                _check_group_norm(getattr(b, name), f"{w}.{name}", act=name != "norm3")
            _require(_cls(b.act3) == "ReLU", f"{w}.act3 {_cls(b.act3)}")
            _require(_cls(b.drop_path) == "Identity", f"{w}.drop_path (stochastic depth)")
            _require((b.downsample is not None) == (j == 0), f"{w}.downsample")
            if b.downsample is not None:
                d = b.downsample
                _require(_cls(d) == "DownsampleConv", f"{w}.downsample {_cls(d)}")
                _require(_cls(d.conv) == conv_cls, f"{w}.downsample.conv {_cls(d.conv)}")
                _check_conv(d.conv, f"{w}.downsample.conv", 1, stride)
                _check_group_norm(d.norm, f"{w}.downsample.norm", act=False)
        layers.append(len(blocks))
        channels.append(out_chs)
    return ResNetV2Config(tuple(layers), tuple(channels), stem_chs, same)


def _read_resnet(bb: Any, where: str) -> ResNetConfig:
    out_indices = tuple(bb.feature_info.out_indices)
    n = max(out_indices)
    _require(n > 0, f"{where} with out_indices {out_indices} (the stem's feature)")
    want = ["conv1", "bn1", "act1", "maxpool"] + [f"layer{i}" for i in range(1, n + 1)]
    names = [k for k, _ in bb.named_children()]
    _require(names == want, f"{where} with children {names} (expected {want})")
    c = bb.conv1
    deep = _cls(c) == "Sequential" and len(c) == 7
    _require(deep, f"{where}.conv1 of type {_cls(c)} (hybrids use resnet's deep stem)")
    w = c[0].out_channels
    for i, (k, s, o) in zip((0, 3, 6), ((3, 2, w), (3, 1, w), (3, 1, 2 * w)), strict=True):
        _require(_cls(c[i]) == "Conv2d", f"{where}.conv1.{i} {_cls(c[i])}")
        _require(c[i].out_channels == o, f"{where}.conv1.{i} width (tiered stem)")
        _check_conv(c[i], f"{where}.conv1.{i}", k, s)
        _require(c[i].padding == (1, 1), f"{where}.conv1.{i} with padding {c[i].padding}")
    for i in (1, 4):
        _require(_check_batch_norm(c[i], f"{where}.conv1.{i}") is None, f"{where}.conv1.{i}")
    for i in (2, 5):
        _require(_act(c[i], f"{where}.conv1.{i}") == "relu", f"{where}.conv1.{i}")
    _check_batch_norm(bb.bn1, f"{where}.bn1")
    _require(_act(bb.act1, f"{where}.act1") == "relu", f"{where}.act1")
    mp = bb.maxpool
    ok = _cls(mp) == "MaxPool2d" and (mp.kernel_size, mp.stride, mp.padding) == (3, 2, 1)
    _require(ok, f"{where}.maxpool {mp}")
    layers, channels = [], []
    for i in range(1, n + 1):
        blocks = list(getattr(bb, f"layer{i}"))
        planes = blocks[0].conv3.out_channels // 4
        for j, b in enumerate(blocks):
            _check_resnet_block(b, f"{where}.layer{i}.{j}", planes, 2 if i > 1 and j == 0 else 1)
        layers.append(len(blocks))
        channels.append(planes)
    return ResNetConfig(tuple(layers), tuple(channels), w, out_indices)


def _check_resnet_block(b: Any, w: str, planes: int, stride: int) -> None:
    _require(_cls(b) == "Bottleneck", f"{w} of type {_cls(b)}")
    for name, k, s, o in (
        ("conv1", 1, 1, planes),
        ("conv2", 3, stride, planes),
        ("conv3", 1, 1, planes * 4),
    ):
        conv = getattr(b, name)
        _require(_cls(conv) == "Conv2d", f"{w}.{name} {_cls(conv)}")
        _require(conv.out_channels == o, f"{w}.{name} with {conv.out_channels} channels")
        _check_conv(conv, f"{w}.{name}", k, s)
        _require(conv.padding == (k // 2, k // 2), f"{w}.{name} with padding {conv.padding}")
        _check_batch_norm(getattr(b, name.replace("conv", "bn")), f"{w}.{name}")
    for name in ("act1", "act2", "act3"):
        _require(_act(getattr(b, name), f"{w}.{name}") == "relu", f"{w}.{name}")
    extras = (b.se is None, _cls(b.aa) == "Identity", _cls(b.drop_block) == "Identity")
    _require(all(extras), f"{w} with se / aa / drop_block")
    _require(b.drop_path is None, f"{w}.drop_path (stochastic depth)")
    if b.downsample is None:
        _require(stride == 1 and b.conv1.in_channels == planes * 4, f"{w} without a downsample")
        return
    d = list(b.downsample)
    ok = len(d) == 3 and _cls(d[0]) == ("AvgPool2d" if stride > 1 else "Identity")
    _require(ok, f"{w}.downsample {b.downsample} (avg_down)")
    if stride > 1:
        p = d[0]
        ok = (p.kernel_size, p.stride, p.padding, p.ceil_mode, p.count_include_pad)
        _require(ok == (2, 2, 0, True, False), f"{w}.downsample.0 {p}")
    _require(_cls(d[1]) == "Conv2d", f"{w}.downsample.1 {_cls(d[1])}")
    _check_conv(d[1], f"{w}.downsample.1", 1, 1)
    _require(_check_batch_norm(d[2], f"{w}.downsample.2") is None, f"{w}.downsample.2 act")


def _read_conv_stem(bb: Any, where: str) -> ConvStemConfig:
    layers = list(bb)
    chans, ks, ss, pads, acts = [], [], [], [], set()
    for i, m in enumerate(layers):
        w, last = f"{where}.{i}", i == len(layers) - 1
        _require(_cls(m) == "ConvNormAct" and m.aa is None, f"{w} {_cls(m)}")
        conv = m.conv
        _require(_cls(conv) == "Conv2d", f"{w}.conv {_cls(conv)} (same-padded convs)")
        k, s = conv.kernel_size[0], conv.stride[0]
        _check_conv(conv, f"{w}.conv", k, s, bias=last)
        ph, pw = conv.padding
        _require(ph == pw and conv.padding_mode == "zeros", f"{w}.conv padding {conv.padding}")
        if last:
            _require(_cls(m.bn) == "Sequential" and len(m.bn) == 0, f"{w}.bn (the last is a conv)")
        else:
            act = _check_batch_norm(m.bn, f"{w}.bn")
            _require(act is not None, f"{w}.bn without an activation")
            acts.add(act)
        chans.append(conv.out_channels)
        ks.append(k)
        ss.append(s)
        pads.append(ph)
    _require(len(acts) == 1, f"{where} with activations {sorted(acts)}")
    return ConvStemConfig(tuple(chans), tuple(ks), tuple(ss), tuple(pads), acts.pop())


def backbone_from_timm(backbone: Any, where: str = "patch_embed.backbone") -> BackboneConfig:
    """The config of a live timm hybrid backbone; refuses what vitjax does not mirror."""
    name = _cls(backbone)
    if name == "ResNetV2":
        return _read_resnetv2(backbone, where)
    if name == "FeatureListNet":
        return _read_resnet(backbone, where)
    if name == "ConvStem":
        return _read_conv_stem(backbone, where)
    if name == "Sequential" and hasattr(backbone, "conv"):  # create_resnetv2_stem alone
        stem_chs, same = _read_resnetv2_stem(backbone, where)
        return ResNetV2Config((), stem_chs=stem_chs, padding_same=same)
    _require(False, f"{where} of type {name}")
    raise AssertionError  # unreachable


def hybrid_embed_from_timm(pe: Any) -> dict[str, Any]:
    """HybridEmbed's fields read from a live timm HybridEmbed (and checked against timm's sizes)."""
    _require(_cls(pe) == "HybridEmbed", f"patch_embed of type {_cls(pe)}")
    cfg = backbone_from_timm(pe.backbone)
    fields = dict(
        backbone_cfg=cfg,
        img_size=tuple(pe.img_size),
        patch_size=tuple(pe.patch_size),
        in_chans=pe.in_chans,
        use_proj=_cls(pe.proj) != "Identity",
        flatten=pe.flatten,
        output_fmt=None if pe.flatten or pe.output_fmt.value == "NCHW" else pe.output_fmt.value,
        dynamic_img_pad=pe.dynamic_img_pad,
    )
    if fields["use_proj"]:
        p = pe.proj
        _check_conv(p, "patch_embed.proj", p.kernel_size[0], p.stride[0], bias=p.bias is not None)
        ok = tuple(p.kernel_size) == tuple(p.stride) == tuple(pe.patch_size) and p.padding == (0, 0)
        _require(ok, f"patch_embed.proj {p}")
        fields.update(embed_dim=p.out_channels, bias=p.bias is not None)
    else:
        fields.update(embed_dim=pe.feature_dim)
    (fh, fw), dim = cfg.feature_info(pe.img_size)
    ok = ((fh, fw), dim) == (tuple(pe.feature_size), pe.feature_dim)
    _require(
        ok,
        f"patch_embed feature map {tuple(pe.feature_size)}x{pe.feature_dim} "
        f"(vitjax computes {(fh, fw)}x{dim})",
    )
    return fields
