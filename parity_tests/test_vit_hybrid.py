"""timm's 14 hybrid ViTs (vision_transformer_hybrid) as whole vit-family models, against timm.

Whole models: each backbone kind (ResNetV2 stem alone, R26, R50 three- and four-stage, ResNet-26d,
-50d, -50d/16, MobileCLIP's ConvStem) cut to depth 1 and small images (every feature kept: the
blocks are timm's plain Block), random weights and BatchNorm running statistics; both paths
(vitjax.from_timm and vitjax.create_model(name, checkpoint_path=file, ...)) give the config and the
same variables, logits match timm's in eval mode, and the export loads into timm.create_model with
strict=True (num_batches_tracked included) and gives the same logits. One hybrid at full depth.

Training: Adam trajectories against timm in train mode on the same batches (losses, every
parameter, every BatchNorm running statistic) for a BatchNorm and a GroupNorm hybrid, and with the
backbone frozen as the notebook freezes it (requires_grad=False: running statistics still move) and
with its BatchNorm in eval mode too (freeze_batch_stats / torch's backbone.eval()).

Weights in foreign layouts: the hybrid .npz layout (R50+ViT-B_16.npz, AugReg R26 / R_Ti) read
against timm's own _load_weights, and MobileCLIP's original image-encoder keys against timm's
checkpoint_filter_fn.
"""

from __future__ import annotations

import re
import warnings

import jax
import numpy as np
import pytest
import timm
import torch
from devtools.timm_verify import flax_forward, make_timm, max_diff, save_timm_checkpoint
from timm.models import vision_transformer as tv
from timm.models import vision_transformer_hybrid as tvh

import vitjax
import vittorch
from parity_tests.parity import assert_close
from parity_tests.test_train_cli import write_digit_folder
from vitjax import training as jtrain
from vitjax.models.hybrid_config import ConvStemConfig, ResNetV2Config
from vitjax.models.vit import VisionTransformer
from vitjax.models.vit_config import ViTConfig
from vitjax.models.vit_timm import timm_model_args
from vitjax.registry import get_config
from vitjax.util import to_2tuple
from vitjax.weights import convert, npz_hybrid
from vitjax.weights import files as io
from vittorch import train as ttrain

HYBRID_NAMES = timm.list_models(module="vision_transformer_hybrid")
_NARROW = dict(embed_dim=192, num_heads=3)  # width cut where the blocks are wider; features kept

# id -> (timm name, create_model kwargs, file format): depth 1, a 2x2 to 4x4 token grid. The other
# names share these backbones but for stage depths; their configs are checked against timm at
# depth 1 (test_timm_variants, test_old_names), their backbones module by module (test_hybrid).
CASES = {
    "resnetv2_stem_p8": ("vit_tiny_r_s16_p8_224", dict(depth=1, img_size=64), "safetensors"),
    "resnetv2_r26": ("vit_small_r26_s32_224", dict(depth=1, img_size=64), "pth"),
    # BatchNorm ResNet-26d, non-square, no class token, average pooling with fc_norm
    "resnet26d_avg_nonsquare": (
        "vit_small_resnet26d_224",
        dict(depth=1, img_size=(64, 96), global_pool="avg", class_token=False, **_NARROW),
        "safetensors",
    ),
    # ResNet-50d up to layer3 (out_indices 3). Not here: the 16-bottleneck R50s, whose random
    # weights put torch's own float32 logits 1.0e-5 (relative) from its float64 ones.
    "resnet50d_s16": ("vit_small_resnet50d_s16_224", dict(depth=1, img_size=32, **_NARROW), "pth"),
    "mobileclip_convstem": ("vit_base_mci_224", dict(depth=1, img_size=64), "pth"),
    # dynamic image size (NHWC embed) and feature padding, pre_norm (a proj without bias)
    "resnetv2_stem_dynamic_pad_pre_norm": (
        "vit_tiny_r_s16_p8_224",
        dict(
            depth=1, img_size=(72, 56), dynamic_img_size=True, dynamic_img_pad=True, pre_norm=True
        ),
        "safetensors",
    ),  # fmt: skip
}


# --- helpers ------------------------------------------------------------------------------------


def _randomize_stats(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """BatchNorm running statistics away from (0, 1), so eval mode tests them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module


def _timm_twin(name: str, cfg: ViTConfig, seed: int = 0) -> torch.nn.Module:
    """timm.create_model(name) with the kwargs that make it cfg, random weights, eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _randomize_stats(make_timm(name, seed, **timm_model_args(name, cfg)), seed)


def _timm_loading(name: str, cfg: ViTConfig, sd: dict[str, np.ndarray]) -> torch.nn.Module:
    """timm.create_model(name, ...) for cfg (built on meta, no init) holding sd (strict load)."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        twin = timm.create_model(name, pretrained=False, **timm_model_args(name, cfg))
    sd = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    twin.load_state_dict(sd, strict=True, assign=True)
    return twin.eval()


def _images(cfg: ViTConfig, batch: int = 2, seed: int = 0, size=None) -> np.ndarray:
    """A seeded NHWC batch at cfg's image size (or size)."""
    h, w = to_2tuple(cfg.img_size if size is None else size)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, h, w, cfg.in_chans)).astype(np.float32)


def _timm_forward(module: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        feats = module.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        return module.forward_head(feats).numpy(), module.forward_head(feats, True).numpy()


def _assert_logits(got: np.ndarray, want: np.ndarray, what: str, dtype: str = "float32") -> None:
    assert_close(got, want, what, dtype=dtype)
    rel = max_diff(got, want)["rel"]
    assert rel <= 1e-5, f"{what}: relative max |diff| {rel:.2e}"


def _same_tree(a, b) -> None:
    fa, fb = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


# --- configs ------------------------------------------------------------------------------------


def test_hybrid_variants_cover_timms_hybrid_module():
    assert len(HYBRID_NAMES) == 14
    for name in HYBRID_NAMES:
        assert get_config(name).backbone is not None, name


@pytest.mark.parametrize("name", ["vit_base_mci_224", "vit_small_resnet50d_s16_224"])
def test_hybrid_config_round_trips_through_json(name):
    import json

    cfg = get_config(name, dynamic_img_size=True)
    assert ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert hash(cfg) == hash(ViTConfig.from_dict(cfg.to_dict()))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(backbone=ResNetV2Config((2, 2)), embed_norm=True), "embed_norm"),
        (dict(backbone=ResNetV2Config(()), patch_size=5), "not divisible by patch_size"),
        (dict(backbone=ConvStemConfig(), patch_size=1, embed_proj=False), "backbone width"),
        (dict(embed_proj=False), "needs a backbone"),
        (dict(backbone=ConvStemConfig(padding=(0, 0, 0)), img_size=4, patch_size=1), "too small"),
    ],
)
def test_hybrid_config_refuses_what_timm_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**kwargs)


def test_vittorch_and_timm_args_refuse_a_backbone_change():
    with pytest.raises(ValueError, match="backbone=ResNetV2Config"):
        vittorch.create_model("vit_small_r26_s32_224", depth=1)
    cfg = get_config("vit_small_r26_s32_224", backbone=ResNetV2Config((3, 4, 9)))
    with pytest.raises(ValueError, match="backbone=.*no timm argument"):
        timm_model_args("vit_small_r26_s32_224", cfg)


# --- whole models -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_hybrid_model_matches_torch(case, tmp_path):
    name, kwargs, fmt = CASES[case]
    cfg = get_config(name, **kwargs)
    module = _timm_twin(name, cfg)
    from_timm, from_timm_vars = vitjax.from_timm(module)
    assert from_timm.cfg == cfg
    path = save_timm_checkpoint(module, tmp_path / "ckpt", fmt)
    model, variables = vitjax.create_model(name, checkpoint_path=path, **kwargs)
    assert model.cfg == cfg
    _same_tree(from_timm_vars, variables)  # both paths hold timm's weights, bit for bit
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
    assert ("batch_stats" in variables) == has_bn
    x = _images(cfg)
    want, want_pre = _timm_forward(module, x)
    got, got_pre = flax_forward(model, variables, x)
    _assert_logits(got, want, f"{case} logits", "float32_model")
    _assert_logits(got_pre, want_pre, f"{case} pre_logits", "float32_model")

    sd = vitjax.to_timm_state_dict(model, variables)
    assert set(sd) == set(module.state_dict())  # num_batches_tracked included
    twin = _timm_loading(name, cfg, sd)
    _assert_logits(got, _timm_forward(twin, x)[0], f"{case} exported logits", "float32_model")


@pytest.mark.slow
def test_hybrid_full_depth_matches_torch():
    name = "vit_tiny_r_s16_p8_224"
    cfg = get_config(name, img_size=64)
    module = _timm_twin(name, cfg)
    model, variables = vitjax.from_timm(module)
    assert model.cfg == cfg and cfg.depth == 12
    x = _images(cfg, batch=1)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(model.apply)(variables, x))
    _assert_logits(got, _timm_forward(module, x)[0], f"{name} (full depth)", "float32_model")


# --- training -----------------------------------------------------------------------------------

# id -> (timm name, kwargs, lr, freeze_backbone, freeze_batch_stats): Adam on the same batches as
# timm's model in train mode (drop rates 0), from timm's own init. Random weights throughout make
# the gradient under a stack of train-mode BatchNorms ill-conditioned (torch's float32 one is 1e-2
# off its float64 one); and Adam turns the round-off of a near-zero gradient (BatchNorm's and the
# key bias's invariant directions) into a step of ~lr/3 with a random sign, so the lr keeps such a
# step inside float32_adam, and qkv_bias=False drops the key bias. The frozen runs use MobileCLIP's
# two-BatchNorm stem.
TRAIN_CASES = {
    "resnet26d_batchnorm": (  # stage depths cut to 1-1-1-1 (see _cut_resnet26d_hybrid)
        "vit_small_resnet26d_224", dict(depth=1, img_size=64, qkv_bias=False, **_NARROW), 1e-5,
        False, False,
    ),
    "resnetv2_stem_groupnorm": (
        "vit_tiny_r_s16_p8_224", dict(depth=1, img_size=32, qkv_bias=False), 1e-4, False, False
    ),
    "convstem_frozen_backbone": (
        "vit_base_mci_224", dict(depth=1, img_size=32, num_classes=5), 1e-3, True, False
    ),
    "convstem_frozen_backbone_and_stats": (
        "vit_base_mci_224", dict(depth=1, img_size=32, num_classes=5), 1e-3, True, True
    ),
}  # fmt: skip
_STEPS = 6


def _batches(cfg: ViTConfig, n: int, batch_size: int = 4, seed: int = 1) -> list[dict]:
    """n learnable random batches: the class shifts the image mean."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = rng.integers(0, cfg.num_classes, batch_size).astype(np.int32)
        image = _images(cfg, batch_size, seed + i) + (label / cfg.num_classes)[:, None, None, None]
        out.append({"image": image.astype(np.float32), "label": label})
    return out


def _train_torch(
    module: torch.nn.Module, batches: list, lr: float, freeze_backbone: bool, freeze_stats: bool
) -> list[float]:
    """timm's model trained with torch.optim.Adam, the notebook's way of freezing."""
    module.train()
    if freeze_backbone:
        ttrain.freeze_backbone(module)  # requires_grad=False: BatchNorm statistics still move
    if freeze_stats:
        module.patch_embed.backbone.eval()
    opt = ttrain.make_optimizer(module, "adam", lr)
    losses = []
    for b in batches:
        x = torch.from_numpy(b["image"].transpose(0, 3, 1, 2).copy())
        loss = torch.nn.functional.cross_entropy(module(x), torch.from_numpy(b["label"]).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _cut_resnet26d_hybrid(**kwargs) -> torch.nn.Module:
    """vit_small_resnet26d_224 as timm builds it, its ResNet-26d's stage depths cut from 2-2-2-2
    to 1-1-1-1 (the name takes no backbone arguments): every kind of layer kept (deep stem,
    Bottleneck, avg-pool downsample, a BatchNorm after every conv), its train step compiles in
    half the time."""
    from timm.models.resnet import resnet26d

    backbone = resnet26d(layers=(1, 1, 1, 1), features_only=True, out_indices=[4])
    args = {"embed_dim": 768, "depth": 8, "num_heads": 8, "mlp_ratio": 3, **kwargs}
    return tvh._create_vision_transformer_hybrid("vit_small_resnet26d_224", backbone, **args)


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_hybrid_train_steps_match_torch(case):
    name, kwargs, lr, freeze_backbone, freeze_stats = TRAIN_CASES[case]
    cfg = get_config(name, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        args = timm_model_args(name, cfg)
        if name == "vit_small_resnet26d_224":
            module = _cut_resnet26d_hybrid(**args)
        else:
            module = timm.create_model(name, pretrained=False, **args)
    module = _randomize_stats(module)
    model, variables = vitjax.from_timm(module)
    cfg = model.cfg  # the cut backbone as vitjax read it off timm's model
    assert name != "vit_small_resnet26d_224" or cfg.backbone.layers == (1, 1, 1, 1)
    batches = _batches(cfg, _STEPS)
    stats_before = {k: v.clone() for k, v in module.state_dict().items() if "running" in k}
    t_losses = _train_torch(module, batches, lr, freeze_backbone, freeze_stats)

    tx = jtrain.make_optimizer("adam", lr, freeze_backbone=freeze_backbone)
    state = jtrain.create_train_state(model, variables, tx, freeze_batch_stats=freeze_stats)
    step = jax.jit(jtrain.train_step, donate_argnums=0)
    j_losses = []
    for b in batches:
        state, metrics = step(state, b, jax.random.PRNGKey(0))
        j_losses.append(float(metrics["loss"]))
    assert_close(np.array(j_losses), np.array(t_losses), f"{case}: per-step loss")
    assert len(set(j_losses)) == len(j_losses)  # it trains

    after = convert.flax_to_torch_variables(jax.device_get(jtrain.variables_of(state)))
    frozen = set()
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        is_stat = "running" in k
        if (freeze_backbone and not is_stat and not k.startswith("head.")) or (
            freeze_stats and is_stat
        ):
            frozen.add(k)
        dtype = "float32_model" if is_stat else "float32_adam"
        assert_close(after[k], v, f"{case}: {k}", dtype="exact" if k in frozen else dtype)
    assert bool(stats_before) == ("batch_stats" in variables)
    moved = [k for k in stats_before if not torch.equal(stats_before[k], module.state_dict()[k])]
    assert len(moved) == (0 if freeze_stats else len(stats_before))  # torch's side, as intended


# --- foreign layouts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_small_r26_s32_224", dict(depth=1, img_size=64)),  # stem + stages (block*/unit*)
        ("vit_tiny_r_s16_p8_224", dict(depth=1, img_size=32)),  # stem only: no block* entries
    ],
)
def test_hybrid_npz_reads_as_timms_loader(name, kwargs, tmp_path):
    """A file in the R50+ViT-B_16.npz layout: timm's _load_weights and vitjax read the same."""
    cfg = get_config(name, **kwargs)
    src = _timm_twin(name, cfg)
    sd = {k: v.numpy() for k, v in src.state_dict().items()}
    path = npz_hybrid.save_npz(tmp_path / "ckpt.npz", sd, cfg.num_heads)
    entries = set(np.load(path).files)
    assert {"conv_root/kernel", "gn_root/scale", "embedding/kernel"} <= entries
    assert any(k.startswith("block1/unit1/") for k in entries) == bool(cfg.backbone.layers)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = timm.create_model(name, pretrained=False, **timm_model_args(name, cfg)).eval()
    tv._load_weights(ref, str(path))  # timm's loader, over timm's own init
    for k, v in ref.state_dict().items():
        assert np.array_equal(v.numpy(), sd[k]), k  # the file holds every weight, as timm reads it

    model = VisionTransformer(cfg)
    variables = vitjax.load_checkpoint(model, npz_hybrid.load_npz(path))
    exported = vitjax.to_timm_state_dict(model, variables)
    assert set(exported) == set(sd) and all(np.array_equal(exported[k], sd[k]) for k in sd)
    x = _images(cfg)
    _assert_logits(flax_forward(model, variables, x)[0], _timm_forward(ref, x)[0],
                   f"{name} npz logits", "float32_model")  # fmt: skip

    if io.load_npz is not npz_hybrid.load_npz:
        pytest.xfail("vitjax.weights.files reads .npz with npz.load_npz (ViT entries only)")
    file_model, file_vars = vitjax.create_model(name, checkpoint_path=path, **kwargs)
    _same_tree(file_vars, variables)


def test_plain_npz_reads_the_same_through_the_hybrid_reader(tmp_path):
    from vitjax.weights import npz

    model, variables = vitjax.create_model("test_vit", depth=1, img_size=32)
    sd = vitjax.to_timm_state_dict(model, variables)
    path = npz.save_npz(tmp_path / "plain.npz", sd, model.cfg.num_heads)
    a, b = npz.load_npz(path), npz_hybrid.load_npz(path)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_hybrid_npz_refuses_a_batchnorm_backbone():
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        tm = timm.create_model("vit_small_resnet26d_224", pretrained=False, depth=1)
    sd = {k: np.zeros(v.shape, np.float32) for k, v in tm.state_dict().items()}
    with pytest.raises(ValueError, match=r"no place for .*patch_embed\.backbone\.bn1"):
        npz_hybrid.to_npz_arrays(sd, tm.blocks[0].attn.num_heads)


# timm key -> Apple's MobileCLIP image-encoder key (the inverse of timm's _convert_mobileclip).
_TO_MOBILECLIP = [
    (r"^patch_embed\.backbone\.(\d+)\.conv\.", r"patch_emb.\1.block.conv."),
    (r"^patch_embed\.backbone\.(\d+)\.bn\.", r"patch_emb.\1.block.norm."),
    (r"^blocks\.(\d+)\.norm1\.", r"transformer.\1.pre_norm_mha.0."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"transformer.\1.pre_norm_mha.1.qkv_proj."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"transformer.\1.pre_norm_mha.1.out_proj."),
    (r"^blocks\.(\d+)\.norm2\.", r"transformer.\1.pre_norm_ffn.0."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"transformer.\1.pre_norm_ffn.1."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"transformer.\1.pre_norm_ffn.4."),
    (r"^norm\.", "post_transformer_norm."),
]


def _mobileclip_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm vit_base_mci_224 state_dict in MobileCLIP's own layout (with a text tower)."""
    out = {"text_encoder.embedding_layer.weight": torch.zeros(4, 8), "logit_scale": torch.ones(())}
    for k, v in sd.items():
        if k == "head.bias":
            continue  # MobileCLIP's projection has none; timm's filter makes zeros
        if k == "head.weight":
            k, v = "classifier.proj", v.T.contiguous()
        elif k == "pos_embed":
            k, v = "pos_embed.pos_embed.pos_embed", v[None]
        for pattern, repl in _TO_MOBILECLIP:
            k = re.sub(pattern, repl, k)
        out["image_encoder.model." + k] = v
    return out


def test_mobileclip_layout_loads_as_timm_filters_it(tmp_path):
    name, kwargs = "vit_base_mci_224", dict(depth=1, img_size=64)
    cfg = get_config(name, **kwargs)
    src = _timm_twin(name, cfg)
    original = _mobileclip_layout(src.state_dict())
    want = tvh.checkpoint_filter_fn(original, src)  # timm's filter
    assert set(want) == set(src.state_dict())
    path = tmp_path / "mobileclip_b.pt"
    torch.save(original, path)
    model, variables = vitjax.create_model(name, checkpoint_path=path, **kwargs)
    got = vitjax.to_timm_state_dict(model, variables)
    for k, v in want.items():
        if not k.endswith("num_batches_tracked"):  # dropped on import, re-made on export
            assert np.array_equal(got[k], v.numpy()), k
    twin = _timm_loading(name, cfg, {k: v.numpy() for k, v in want.items()})
    x = _images(cfg)
    _assert_logits(flax_forward(model, variables, x)[0], _timm_forward(twin, x)[0],
                   "MobileCLIP layout logits", "float32_model")  # fmt: skip


@pytest.mark.parametrize("frozen", [False, True], ids=["stats-update", "stats-frozen"])
def test_train_cli_freeze_batch_stats(tmp_path, frozen):
    """--freeze-backbone keeps torch's default (running stats update in training mode);
    --freeze-batch-stats also keeps them, as backbone.eval() in torch."""
    from vitjax.cli import train as cli

    name, kw = "vit_base_mci_224", dict(depth=1, img_size=32)
    model, variables = vitjax.create_model(name, num_classes=3, **kw)
    vitjax.save_pretrained(tmp_path / "init", model, variables)
    # 3 classes of 4 images: one step, not an epoch of the embedded digits (79 steps)
    data = write_digit_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    flags = ["--init", str(tmp_path / "init"), "--data", str(data), "--freeze-backbone",
             "--epochs", "1", "--batch-size", "16", "--out", str(out), "--no-progress"]  # fmt: skip
    cli.main(flags + (["--freeze-batch-stats"] if frozen else []))
    before = vitjax.to_timm_state_dict(model, variables)
    after = io.load_state_dict(out / "model")
    stats = [k for k in before if k.endswith("running_mean")]
    assert stats
    changed = [k for k in stats if not np.array_equal(before[k], after[k])]
    assert (changed == []) if frozen else (changed == stats)
    weights = [k for k in before if k.startswith("patch_embed") and k.endswith("weight")]
    assert all(np.array_equal(before[k], after[k]) for k in weights)  # frozen either way
