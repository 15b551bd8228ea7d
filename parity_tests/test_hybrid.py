"""Hybrid ViT embeddings: StdConv2d, the CNN backbones and HybridEmbed against timm's own modules,
in eval and in training mode (outputs and every BatchNorm's running statistics), plus the reader
that turns each of timm's 14 hybrid models' HybridEmbed into vitjax's config."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.layers import GroupNormAct as TGroupNormAct
from timm.layers import HybridEmbed as THybridEmbed
from timm.layers import StdConv2d as TStdConv2d
from timm.layers import StdConv2dSame as TStdConv2dSame
from timm.layers.norm_act import BatchNormAct2d as TBatchNormAct2d
from timm.models.resnetv2 import ResNetV2 as TResNetV2
from timm.models.vision_transformer_hybrid import ConvStem as TConvStem
from timm.models.vision_transformer_hybrid import _resnetv2

from parity_tests.helpers import nchw
from parity_tests.parity import assert_close
from vitjax.layers.cnn_stems import BatchNorm2d, GroupNormAct
from vitjax.layers.hybrid_embed import (
    ConvStemConfig,
    HybridEmbed,
    ResNetConfig,
    ResNetV2Config,
    backbone_from_dict,
    backbone_from_timm,
    backbone_to_dict,
    hybrid_embed_from_timm,
)
from vitjax.layers.std_conv import StdConv2d, StdConv2dSame
from vitjax.models.common import UnsupportedModelError
from vitjax.weights.convert import (
    flatten,
    flax_to_torch_variables,
    torch_leaf_to_flax,
    torch_to_flax_variables,
)

HYBRID_NAMES = timm.list_models(module="vision_transformer_hybrid")


# --- torch state <-> Flax variables (params + batch_stats), through the converter --------------


def flax_variables(module: Any, torch_module: torch.nn.Module, *example: Any) -> dict[str, Any]:
    """The Flax variables holding torch_module's weights and running stats; keys, shapes checked."""
    want = jax.eval_shape(module.init, jax.random.PRNGKey(0), *example)
    state = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
    variables = torch_to_flax_variables(state, want, type(torch_module).__name__)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), variables)


# --- Weights, inputs and comparisons ------------------------------------------------------------


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights, norm scales near 1, running stats away from (0, 1); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                is_norm = isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
                noise = torch.randn(p.shape, generator=g) * 0.2
                p.copy_(1.0 + noise if is_norm and name == "weight" else noise)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module.eval()


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def to_nhwc(y: torch.Tensor | list, nchw: bool = True) -> np.ndarray:
    """A torch NCHW output (or a feature list's last) as NHWC numpy; tokens pass as they are."""
    if isinstance(y, (list, tuple)):
        y = y[-1]
    y = y.detach().numpy()
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 and nchw else y


def assert_running_stats(
    variables: dict, torch_module: torch.nn.Module, name: str, dtype: str = "float32"
) -> int:
    """Every BatchNorm's running mean and var equal torch's; returns how many were compared."""
    stats = flatten({"batch_stats": variables["batch_stats"]})
    n = 0
    for key, value in torch_module.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            path, _ = torch_leaf_to_flax(key, value.numpy())
            assert_close(stats[path], value, f"{name} {key}", dtype=dtype)
            n += 1
    return n


def check_train_steps(
    module: Any, tm: torch.nn.Module, shape: tuple, name: str, dtype: str = "float32"
) -> None:
    """Training-mode outputs and running stats equal torch's after each of three passes, then
    eval-mode outputs with the updated stats."""
    variables = flax_variables(module, tm, images(shape, 100))
    apply = jax.jit(module.apply, static_argnames=("train", "mutable"))
    tm.train()
    for step in (1, 2, 3):
        x = images(shape, 100 + step)
        with torch.no_grad():
            y_t = to_nhwc(tm(nchw(x)))
        y_j, updates = apply(variables, x, train=True, mutable=("batch_stats",))
        variables = {**variables, **updates}
        assert_close(y_j, y_t, f"{name} train step {step}", dtype=dtype)
        assert assert_running_stats(variables, tm, f"{name} step {step}", dtype) > 0
    tm.eval()
    x = images(shape, 200)
    with torch.no_grad():
        y_t = to_nhwc(tm(nchw(x)))
    assert_close(apply(variables, x), y_t, f"{name} eval after training", dtype=dtype)


def check_eval(
    module: Any, tm: torch.nn.Module, x: np.ndarray, name: str, dtype: str = "float32"
) -> None:
    """Eval-mode output equals torch's (an NHWC torch output is compared as it is)."""
    with torch.no_grad():
        y_t = to_nhwc(tm(nchw(x)), nchw=getattr(module, "output_fmt", None) != "NHWC")
    variables = flax_variables(module, tm, x)
    assert_close(jax.jit(module.apply)(variables, x), y_t, name, dtype=dtype)


# --- StdConv2d ----------------------------------------------------------------------------------

STD_CONVS = {
    # name: (same padding, kernel, stride, dilation, groups, bias, eps)
    "k3s1-eps1e-6": (False, 3, 1, 1, 1, False, 1e-6),
    "k7s2-eps1e-8": (False, 7, 2, 1, 1, False, 1e-8),
    "k3s2-dil2-groups2-bias": (False, 3, 2, 2, 2, True, 1e-6),
    "same-k7s2": (True, 7, 2, 1, 1, False, 1e-8),
    "same-k3s2": (True, 3, 2, 1, 1, False, 1e-8),
    "same-k1s2": (True, 1, 2, 1, 1, False, 1e-8),
    "same-k3s1-bias": (True, 3, 1, 1, 1, True, 1e-8),
}


@pytest.mark.parametrize("config", list(STD_CONVS))
def test_std_conv_matches_torch(config):
    same, k, s, d, g, bias, eps = STD_CONVS[config]
    t_cls, j_cls = (TStdConv2dSame, StdConv2dSame) if same else (TStdConv2d, StdConv2d)
    tm = randomize(t_cls(6, 10, k, stride=s, dilation=d, groups=g, bias=bias, eps=eps))
    jm = j_cls(10, k, s, dilation=d, groups=g, use_bias=bias, eps=eps)
    x = images((2, 13, 10, 6))
    with torch.no_grad():
        y_t = to_nhwc(tm(nchw(x)))
    variables = flax_variables(jm, tm, x)
    assert_close(jm.apply(variables, x), y_t, f"StdConv2d[{config}]")


# --- Norm layers --------------------------------------------------------------------------------


@pytest.mark.parametrize("act", [True, False], ids=["relu", "no_act"])
def test_group_norm_act_matches_torch(act):
    tm = randomize(TGroupNormAct(64, 32, apply_act=act))
    jm = GroupNormAct(32, act_layer="relu" if act else None)
    x = images((2, 5, 7, 64)) * 3 + 1
    with torch.no_grad():
        y_t = to_nhwc(tm(nchw(x)))
    variables = flax_variables(jm, tm, x)
    assert_close(jm.apply(variables, x), y_t, f"GroupNormAct[{act}]")


@pytest.mark.parametrize("act", [None, "gelu"], ids=["BatchNorm2d", "BatchNormAct2d-gelu"])
def test_batch_norm_matches_torch(act):
    tm = torch.nn.BatchNorm2d(6) if act is None else TBatchNormAct2d(6, act_layer=torch.nn.GELU)
    randomize(tm)
    jm = BatchNorm2d(act_layer=act)
    x = images((2, 5, 3, 6)) * 2 + 0.5
    check_eval(jm, tm, x, f"BatchNorm2d[{act}] eval")
    check_train_steps(jm, tm, (3, 4, 5, 6), f"BatchNorm2d[{act}]")


# --- Backbones ----------------------------------------------------------------------------------


def _timm_resnetv2(layers: tuple[int, ...], same: bool) -> torch.nn.Module:
    """As vision_transformer_hybrid._resnetv2 builds it, at a small width."""
    conv = partial(TStdConv2dSame if same else TStdConv2d, eps=1e-8)
    return TResNetV2(
        layers=layers,
        channels=(128, 256),
        stem_chs=64,
        num_classes=0,
        global_pool="",
        preact=False,
        stem_type="same" if same else "",
        conv_layer=conv,
    )


RESNETV2 = {  # name: (torch module factory, config)
    "stem-same": (lambda: _resnetv2(layers=()), ResNetV2Config(())),
    "stem-torch_pad": (
        lambda: _resnetv2(layers=(), padding_same=False),
        ResNetV2Config((), padding_same=False),
    ),
    "l1-2-same": (
        lambda: _timm_resnetv2((1, 2), True),
        ResNetV2Config((1, 2), (128, 256), stem_chs=64),
    ),
    "l1-2-torch_pad": (
        lambda: _timm_resnetv2((1, 2), False),
        ResNetV2Config((1, 2), (128, 256), stem_chs=64, padding_same=False),
    ),
}


@pytest.mark.parametrize("config", list(RESNETV2))
def test_resnetv2_matches_torch(config):
    make, cfg = RESNETV2[config]
    tm = randomize(make())
    assert backbone_from_timm(tm) == cfg  # the reader sees the config the module was built with
    module = cfg.build(jnp.float32)
    dtype = "float32_cnn" if cfg.layers else "float32"  # the stem alone is one block
    check_eval(module, tm, images((2, 37, 45, 3)), f"ResNetV2[{config}]", dtype=dtype)


def _timm_resnet(arch: str, out_index: int, layers=(1, 1, 1, 2)) -> torch.nn.Module:
    return timm.create_model(
        arch,
        features_only=True,
        out_indices=[out_index],
        layers=layers,
        channels=(4, 8, 8, 16),
        stem_width=4,
    )


RESNETS = {  # name: (timm arch, out index, train too): the hybrids' resnet26d/50d, features_only
    "resnet26d-out4": ("resnet26d", 4, True),
    "resnet50d-out3": ("resnet50d", 3, False),  # trains in test_hybrid_embed_train_matches_torch
}


@pytest.mark.parametrize("config", list(RESNETS))
def test_resnet_d_matches_torch(config):
    arch, idx, train = RESNETS[config]
    tm = randomize(_timm_resnet(arch, idx))
    cfg = ResNetConfig((1, 1, 1, 2)[:idx], (4, 8, 8, 16)[:idx], 4, (idx,))
    assert backbone_from_timm(tm) == cfg
    module = cfg.build(jnp.float32)
    check_eval(module, tm, images((2, 37, 29, 3)), f"ResNet[{config}] eval")
    if train:
        # A whole backbone in training mode, each BatchNorm normalising over few values (layer4:
        # 2 x 3 x 3): torch's own float32 output is 1.4e-5 from float64's, so the model tolerance.
        check_train_steps(module, tm, (2, 67, 75, 3), f"ResNet[{config}]", "float32_model")


CONV_STEMS = {  # name: (timm ConvStem kwargs, config)
    "mci-like": (
        dict(
            channels=(8, 8, 16),
            stride=(4, 2, 2),
            kernel_size=(4, 2, 2),
            padding=0,
            act_layer=torch.nn.GELU,
        ),
        ConvStemConfig((8, 8, 16), (4, 2, 2), (4, 2, 2), (0, 0, 0), "gelu"),
    ),
    "defaults": (dict(), ConvStemConfig()),
}


@pytest.mark.parametrize("config", list(CONV_STEMS))
def test_conv_stem_matches_torch(config):
    kwargs, cfg = CONV_STEMS[config]
    tm = TConvStem(**kwargs)
    assert backbone_from_timm(tm) == cfg
    # timm holds ConvStem's layers as a Sequential: in Flax they are HybridEmbed's backbone_{i}
    th = randomize(THybridEmbed(tm, img_size=(37, 43), proj=False, embed_dim=cfg.channels[-1]))
    embed = HybridEmbed(cfg, img_size=(37, 43), use_proj=False, embed_dim=cfg.channels[-1])
    check_eval(embed, th, images((2, 37, 43, 3)), f"ConvStem[{config}] eval")
    check_train_steps(embed, th, (2, 37, 43, 3), f"ConvStem[{config}]")


# --- HybridEmbed --------------------------------------------------------------------------------

EMBEDS = {  # name: (torch backbone factory, timm HybridEmbed kwargs, image (H, W))
    "resnetv2-p1": (lambda: _timm_resnetv2((1, 2), True), dict(patch_size=1), (37, 45)),
    "resnetv2_stem-p2": (lambda: _resnetv2(layers=()), dict(patch_size=2), (29, 40)),
    "resnet-p1-nobias": (lambda: _timm_resnet("resnet26d", 4), dict(bias=False), (70, 65)),
    "resnet-p2-dynamic_pad": (
        lambda: _timm_resnet("resnet50d", 3),
        dict(patch_size=2, dynamic_img_pad=True),
        (45, 50),
    ),
    "conv_stem-noproj": (
        lambda: TConvStem(
            channels=(8, 8, 24),
            stride=(4, 2, 2),
            kernel_size=(4, 2, 2),
            padding=0,
            act_layer=torch.nn.GELU,
        ),
        dict(proj=False),
        (32, 48),
    ),
    "resnetv2_stem-p2-nhwc": (
        lambda: _resnetv2(layers=()),
        dict(patch_size=2, output_fmt="NHWC"),
        (32, 40),
    ),
}


def _embeds(config: str) -> tuple[THybridEmbed, HybridEmbed]:
    make, kwargs, hw = EMBEDS[config]
    kwargs = {"embed_dim": 24, **kwargs}
    th = randomize(THybridEmbed(make(), img_size=hw, **kwargs))
    return th, HybridEmbed(**hybrid_embed_from_timm(th))


@pytest.mark.parametrize("config", list(EMBEDS))
def test_hybrid_embed_matches_torch(config):
    th, jm = _embeds(config)
    assert (jm.feature_size, jm.feature_dim) == (tuple(th.feature_size), th.feature_dim)
    assert (jm.grid_size, jm.num_patches) == (tuple(th.grid_size), th.num_patches)
    assert (jm.feature_ratio, jm.feat_ratio()) == (tuple(th.feature_ratio), th.feat_ratio())
    for size in [(64, 96), (71, 53)]:
        assert jm.dynamic_feat_size(size) == tuple(th.dynamic_feat_size(size))
    # backbone and projection: a whole stack (torch's float32 is 2.2e-5 from float64's on resnetv2)
    x = images((2, *th.img_size, 3))
    check_eval(jm, th, x, f"HybridEmbed[{config}]", "float32_model")
    # and back: timm loads the export strictly, every tensor bit-exact
    exported = flax_to_torch_variables(flax_variables(jm, th, x))
    th.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()})
    for key, value in th.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert_close(exported[key], value, f"HybridEmbed[{config}] {key}", dtype="exact")


def test_hybrid_embed_train_matches_torch():
    th, jm = _embeds("resnet-p2-dynamic_pad")
    check_train_steps(jm, th, (2, *th.img_size, 3), "HybridEmbed[resnet]", "float32_model")


FEATURE_SIZES = {  # name: (torch backbone factory, config)
    "resnetv2": (lambda: _resnetv2(layers=()), ResNetV2Config(())),
    "resnetv2_torch_pad": (
        lambda: _timm_resnetv2((1, 1), False),
        ResNetV2Config((1, 1), (128, 256), padding_same=False),
    ),
    "resnet": (lambda: _timm_resnet("resnet26d", 4), ResNetConfig((1, 1, 1, 2), (4, 8, 8, 16), 4)),
    "conv_stem": (lambda: TConvStem(**CONV_STEMS["mci-like"][0]), CONV_STEMS["mci-like"][1]),
}


@pytest.mark.parametrize("size", [(64, 64), (37, 45), (97, 130), (224, 224)])
@pytest.mark.parametrize("kind", list(FEATURE_SIZES))
def test_feature_size_matches_timm(kind, size):
    make, cfg = FEATURE_SIZES[kind]
    th = THybridEmbed(make(), img_size=size, embed_dim=8, patch_size=1)
    assert cfg.feature_info(size) == (tuple(th.feature_size), th.feature_dim)


# --- The 14 hybrid models: reader, parameter tree, configs ---------------------------------------


@pytest.mark.parametrize("name", HYBRID_NAMES)
def test_hybrid_reader_matches_timm(name):
    # one block and 64 px keep timm's own feature-size forward pass cheap; the backbone is whole
    model = timm.create_model(name, pretrained=False, depth=1, img_size=64)
    pe = model.patch_embed
    fields = hybrid_embed_from_timm(pe)
    jm = HybridEmbed(**fields)
    assert backbone_from_dict(backbone_to_dict(fields["backbone_cfg"])) == fields["backbone_cfg"]
    assert (jm.grid_size, jm.num_patches, jm.feat_ratio()) == (
        tuple(pe.grid_size),
        pe.num_patches,
        pe.feat_ratio(),
    )
    assert (jm.embed_dim, jm.use_proj) == (model.embed_dim, name != "vit_base_mci_224")
    # every parameter and running stat of timm's patch_embed, by name and shape, both ways
    x = jax.ShapeDtypeStruct((1, *pe.img_size, 3), jnp.float32)
    flax_variables(jm, pe, x)


@pytest.mark.parametrize("name", ["vit_tiny_r_s16_p8_224", "vit_base_mci_224"])
def test_hybrid_embed_full_size_matches_torch(name):
    pe = randomize(timm.create_model(name, pretrained=False, depth=1).patch_embed)
    jm = HybridEmbed(**hybrid_embed_from_timm(pe))
    check_eval(jm, pe, images((1, *pe.img_size, 3)), f"HybridEmbed[{name}]", "float32_model")


REFUSED = {  # name: torch backbone the hybrid reader must refuse, naming the part
    "resnetv2-preact": (
        lambda: TResNetV2(
            layers=(1,),
            channels=(128,),
            num_classes=0,
            global_pool="",
            stem_type="same",
            conv_layer=partial(TStdConv2dSame, eps=1e-8),
        ),
        "stem",
    ),
    "resnetv2-std_conv_eps": (
        lambda: TResNetV2(
            layers=(1,),
            channels=(128,),
            num_classes=0,
            global_pool="",
            preact=False,
            stem_type="same",
        ),
        "stem.conv",
    ),
    "resnet-7x7_stem": (
        lambda: timm.create_model(
            "resnet26", features_only=True, out_indices=[1], layers=(1, 1, 1, 1)
        ),
        "conv1",
    ),
    "resnet-conv_down": (
        lambda: timm.create_model(
            "resnet26d", features_only=True, out_indices=[1], layers=(1, 1, 1, 1), avg_down=False
        ),
        "layer1.0.downsample",
    ),
    "resnet-stem_feature": (
        lambda: timm.create_model("resnet26d", features_only=True, out_indices=[0]),
        "out_indices",
    ),
    "conv_stem-same_pad": (lambda: TConvStem(padding="same"), "0.conv"),
}


@pytest.mark.parametrize("config", list(REFUSED))
def test_hybrid_reader_refuses_unsupported(config):
    make, part = REFUSED[config]
    with pytest.raises(UnsupportedModelError, match=part.replace(".", r"\.")):
        backbone_from_timm(make())
