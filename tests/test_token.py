"""Token (Wu et al., AAAI 2022): shapes through every stage, the tokeniser's spatial attention,
released-layout checkpoints, the shared extractor, the training task, and ASMK on its local features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.datasets import load_sfm
from retrieval.extract import extract_vectors
from retrieval.models import build_global_net, load_model, save_model
from retrieval.models.local import extract_local, token_local_features, top_locations
from retrieval.models.token import (Attention, Decoder, Encoder, build_token, init_backbone_from_global,
                                    load_token_state_dict, multihead_attention, spatial_attention, tokenize)
from retrieval.search import asmk_bytes_per_image, asmk_index, asmk_params, asmk_search

SMALL = dict(backbone="resnet18", dim=32, tokens=3, heads=4, outputdim=24)


def _model(**kw):
    torch.manual_seed(0)
    return build_token(**dict(SMALL, **kw)).eval()


@pytest.fixture(scope="module")
def root(tiny_data):
    return tiny_data


# --------------------------------------------------------------------------- functions
def test_spatial_attention_is_a_softmax_over_tokens_per_location():
    g = torch.Generator().manual_seed(0)
    q, x = torch.randn(5, 8, generator=g), torch.randn(2, 11, 8, generator=g)
    attn = spatial_attention(q, x)
    assert attn.shape == (2, 5, 11)
    assert torch.allclose(attn.sum(1), torch.ones(2, 11), atol=1e-6)          # over tokens, every location
    assert not torch.allclose(attn.sum(2), torch.ones(2, 5))                  # not over locations
    manual = torch.stack([torch.softmax(q @ x[b, n], 0) for b in range(2) for n in range(11)]).view(2, 11, 5)
    assert torch.allclose(attn, manual.transpose(1, 2), atol=1e-6)
    assert torch.allclose(spatial_attention(q[None], x), attn)                # (1, L, d) queries too
    with pytest.raises(ValueError, match="queries"):
        spatial_attention(torch.randn(5, 7), x)
    with pytest.raises(ValueError, match="local features"):
        spatial_attention(q, x[0])


def test_tokenize_is_the_weighted_sum_of_local_features():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 4, generator=g)
    attn = spatial_attention(torch.randn(3, 4, generator=g), x)
    t = tokenize(attn, x)
    assert t.shape == (2, 3, 4)
    assert torch.allclose(t[1, 2], sum(attn[1, 2, n] * x[1, n] for n in range(6)), atol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        tokenize(attn[:, :, :5], x)


def test_multihead_attention_matches_per_head_softmax():
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 3, 8, generator=g), torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    out = multihead_attention(q, k, v, heads=2)
    assert out.shape == (2, 3, 8)
    h0 = torch.softmax(q[..., :4] @ k[..., :4].transpose(1, 2) / 2.0, -1) @ v[..., :4]
    assert torch.allclose(out[..., :4], h0, atol=1e-5)
    with pytest.raises(ValueError, match="heads"):
        multihead_attention(q, k, v, heads=3)


# --------------------------------------------------------------------------- modules, shapes
def test_shapes_through_every_stage():
    m = _model(classes=7)
    x = torch.randn(2, 3, 96, 64)
    fmap = m.backbone(x)
    assert fmap.shape == (2, 512, 3, 2)
    local = m.tr.local_features(fmap)
    assert local.shape == (2, 6, 32)
    attn = spatial_attention(m.tr.query, local)
    assert attn.shape == (2, 3, 6)
    tokens = m.tr.token_norm(tokenize(attn, local))
    assert tokens.shape == (2, 3, 32)
    for dec in m.tr.decoder:
        tokens = dec(tokens, local)
        assert tokens.shape == (2, 3, 32)
    v, attn2 = m.tr(fmap, return_attention=True)
    assert v.shape == (2, 24) and torch.allclose(attn2, attn)
    assert torch.allclose(m.tr.proj(tokens.reshape(2, -1)), v, atol=1e-5)
    d = m(x)
    assert d.shape == (2, 24) and torch.allclose(d.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(d, F.normalize(v, dim=-1), atol=1e-6)
    logits = m(x, torch.tensor([0, 6]))
    assert logits.shape == (2, 7)
    maps = m.attention_maps(x)
    assert maps.shape == (2, 3, 3, 2) and torch.allclose(maps.sum(1), torch.ones(2, 3, 2), atol=1e-5)


def test_blocks_keep_shapes_and_start_as_identity_attention():
    x = torch.randn(2, 5, 16)
    enc, dec = Encoder(16, heads=4).eval(), Decoder(16, heads=4).eval()
    assert enc(x).shape == (2, 5, 16) and dec(torch.randn(2, 3, 16), x).shape == (2, 3, 16)
    attn = Attention(16, heads=4)
    assert torch.equal(attn(x, x, x), torch.zeros_like(x))          # proj starts at zero (released init)
    with pytest.raises(ValueError, match="heads"):
        Attention(10, heads=4)


def test_build_token_defaults_are_the_paper_and_errors_name_parameters():
    m = build_token("resnet18")   # paper sizes on a small backbone
    assert (m.tr.mid_dim, m.tr.tokens, len(m.tr.encoder), len(m.tr.decoder)) == (1024, 4, 1, 2)
    assert m.tr.proj[0].out_features == 1024 and m.tr.encoder[0].attn.heads == 8
    assert m.classifier is None and m.meta["outputdim"] == 1024
    head = build_token("resnet18", dim=32, heads=4, outputdim=64, classes=10).classifier
    assert head.kind == "arcface" and head.margin == 0.2 and head.scale == pytest.approx(8.0)   # √64
    with pytest.raises(ValueError, match="backbone"):
        build_token("vgg16")
    with pytest.raises(ValueError, match="tokens"):
        build_token("resnet18", tokens=0)
    with pytest.raises(ValueError, match="train_blocks"):
        build_token("resnet18", dim=32, heads=4, train_blocks=6)
    with pytest.raises(ValueError, match="no classifier"):
        _model()(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))


def test_frozen_blocks_have_no_gradient_and_stay_in_eval_mode():
    m = _model(classes=4, train_blocks=1).train()
    assert not any(p.requires_grad for p in m.backbone.block4.parameters())
    assert all(p.requires_grad for p in m.backbone.block5.parameters())
    assert not m.backbone.block1.training and m.backbone.block5.training and m.tr.training
    before = m.backbone.block1[1].running_mean.clone()
    loss = F.cross_entropy(m(torch.randn(2, 3, 64, 64), torch.tensor([0, 3])), torch.tensor([0, 3]))
    loss.backward()
    assert torch.equal(m.backbone.block1[1].running_mean, before)
    assert m.tr.query.grad is not None and m.classifier.weight.grad is not None


# --------------------------------------------------------------------------- checkpoints
# every parameter name of the authors' Token (networks/RetrievalNet.py: Token, Token_Refine, Encoder,
# Decoder, Attention, Mlp, ArcFace; networks/backbone.py: ResNet) for one encoder and two decoders
RELEASED_TR = (["tr.query", "tr.conv.0.weight", "tr.conv.0.bias", "tr.conv.1.weight", "tr.conv.1.bias",
                "tr.conv.1.running_mean", "tr.conv.1.running_var", "tr.token_norm.0.weight", "tr.token_norm.0.bias",
                "tr.token_norm.1.weight", "tr.token_norm.1.bias", "tr.proj.0.weight", "tr.proj.0.bias",
                "tr.proj.1.weight", "tr.proj.1.bias", "tr.proj.1.running_mean", "tr.proj.1.running_var",
                "tr.encoder.0.bn.weight", "tr.encoder.0.bn.running_var", "tr.encoder.0.mlp.weight",
                "tr.encoder.0.mlp.bias"]
               + [f"tr.encoder.0.attn.{p}.{w}" for p in "qkv" for w in ("weight", "bias")]
               + [f"tr.decoder.{i}.{a}.{p}.{w}" for i in (0, 1) for a in ("self_attn", "cross_attn")
                  for p in ("q", "k", "v", "proj") for w in ("weight", "bias")]
               + [f"tr.decoder.{i}.{n}.{w}" for i in (0, 1) for n in ("bn1", "bn2", "mlp.fc1", "mlp.fc2")
                  for w in ("weight", "bias")])
RELEASED_BACKBONE = ["backbone.block1.0.weight", "backbone.block1.1.running_mean", "backbone.block2.0.conv1.weight",
                     "backbone.block3.0.downsample.0.weight", "backbone.block5.1.bn2.bias"]


def test_module_names_are_the_released_layout():
    keys = set(_model(classes=5).state_dict())
    assert set(RELEASED_TR) <= keys and set(RELEASED_BACKBONE) <= keys and "classifier.weight" in keys


def test_load_released_state_dict():
    src = _model()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    released = {"module." + k: v.clone() for k, v in src.state_dict().items()}   # DataParallel-saved
    released["module.classifier.weight"] = torch.randn(100, 24)                  # the GLDv2 ArcFace head
    dst = build_token(**SMALL).eval()
    load_token_state_dict(dst, {"state_dict": released})
    x = torch.randn(2, 3, 64, 96)
    assert torch.allclose(dst(x), src(x), atol=1e-6)
    with_head = build_token(**SMALL, classes=100)
    load_token_state_dict(with_head, released, classifier=True)
    assert torch.equal(with_head.classifier.weight, released["module.classifier.weight"])
    with pytest.raises(ValueError, match="missing"):
        load_token_state_dict(build_token(**SMALL), {k: v for k, v in released.items() if "decoder.1." not in k})
    with pytest.raises(ValueError, match="wrong shape"):
        load_token_state_dict(build_token(**dict(SMALL, outputdim=32)), released)


def test_backbone_from_global_network_and_save_load(tmp_path):
    torch.manual_seed(4)
    gem = build_global_net("resnet18").eval()
    m = _model(classes=5)
    init_backbone_from_global(m, {"state_dict": gem.state_dict(), "meta": {}})
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(m.backbone(x), gem.features(x), atol=1e-6)
    with pytest.raises(ValueError, match="backbone weights"):
        init_backbone_from_global(m, build_global_net("resnet34").state_dict())
    path = save_model(m, tmp_path / "token.pth")
    back = load_model(path)
    assert torch.allclose(back(x), m(x), atol=1e-6) and back.classifier is not None
    assert back.meta["tokens"] == 3 and back.meta["mean"] == m.meta["mean"]


# --------------------------------------------------------------------------- extraction, task
def test_shared_extractor_single_and_multi_scale(root):
    paths = load_sfm(root, "synth-tiny")["train"]["paths"][:3]
    m = _model()
    for scales in ([1.0], [1.0, 0.7071]):
        v = extract_vectors(m, paths, image_size=64, scales=scales, progress=False)
        assert v.shape == (3, 24) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)


def test_token_task_trains_and_resume_refuses_another_experiment(root, tmp_path):
    from retrieval.datasets.training import LabelledImages
    from retrieval.tasks import token_classification, token_config, train_token

    cfg = token_config(root=str(root), preset="tiny", **SMALL, image_size=48, images_per_epoch=8, epochs=1,
                       batch_size=4, optimizer="adamw", lr=1e-3, warmup_epochs=0, device="cpu",
                       out_dir=str(tmp_path / "tok"), train_blocks=1)
    model, data, loss_fn = token_classification(cfg)
    ds = data(0)
    assert isinstance(ds, LabelledImages) and len(ds) == 8
    img, label = ds[0]
    assert img.shape == (3, 48, 48) and 0 <= label < model.classifier.weight.shape[0]
    model, history = train_token(cfg)
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and not model.training
    with pytest.raises(ValueError):
        train_token(dict(cfg, resume=True, tokens=2))
    with pytest.raises(ValueError, match="images_per_epoch"):
        token_classification(dict(cfg, images_per_epoch=10 ** 6))
    with pytest.raises(ValueError, match="tokenz"):
        token_config(tokenz=2)


# --------------------------------------------------------------------------- local features, ASMK
def test_local_features_are_the_strongest_refined_locations(root):
    m = _model()
    x = torch.randn(1, 3, 96, 96)
    v = token_local_features(m, x, n=5, scales=[1.0])
    assert v.shape == (5, 32) and torch.allclose(v.norm(dim=1), torch.ones(5), atol=1e-5)
    fmap = m.backbone(x)
    best = top_locations(fmap[0].flatten(1).norm(dim=0), 5)
    assert torch.allclose(v, F.normalize(m.tr.local_features(fmap)[0, best], dim=-1), atol=1e-5)
    assert token_local_features(m, x, n=1000, scales=[1.0, 0.5]).shape == (9 + 4, 32)
    with pytest.raises(ValueError, match="n "):
        top_locations(torch.ones(3), 0)
    paths = load_sfm(root, "synth-tiny")["train"]["paths"][:3]
    vecs, imids = extract_local(m, paths, image_size=64, scales=[1.0], n=3, progress=False)
    assert vecs.shape == (9, 32) and imids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_asmk_ranks_the_image_sharing_local_features_first():
    rng = np.random.default_rng(0)
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    train = unit(rng.standard_normal((400, 16)))
    db = unit(rng.standard_normal((60, 16)))
    db_imids = np.repeat(np.arange(6), 10)
    query = unit(np.concatenate([db[db_imids == 4] + 0.05 * rng.standard_normal((10, 16)), db[db_imids == 1]]))
    query_imids = np.repeat([0, 1], 10)
    method = asmk_index(train, db, db_imids, asmk_params(codebook_size=8))
    ranks, scores = asmk_search(method, query, query_imids, n_query=2)
    assert ranks.shape == (6, 2) and sorted(ranks[:, 0]) == list(range(6))
    assert ranks[0].tolist() == [4, 1] and np.all(np.diff(scores, axis=0) <= 1e-9)
    per_image = method.inverted_file.stats["vectors_per_image"]
    assert asmk_bytes_per_image(method, 16) == pytest.approx(per_image * (2 + 4))
    with pytest.raises(ValueError, match="codebook size"):
        asmk_index(train[:4], db, db_imids, asmk_params(codebook_size=8))
    with pytest.raises(ValueError, match="every db image"):
        asmk_index(train, db, np.where(db_imids == 2, 3, db_imids), asmk_params(codebook_size=8))
    with pytest.raises(ValueError, match="every query"):
        asmk_search(method, query, query_imids, n_query=3)


def test_gem_control_arm_differs_only_in_the_aggregator(root, tmp_path):
    """aggregator="gem": the same backbone, frozen blocks, margin head and output dimension as Token, GeM +
    Linear + BN in place of the tokeniser; trains through the same task (cached too) and its checkpoint
    rebuilds it."""
    from retrieval.models.token import GeMHead
    from retrieval.tasks import token_classification, token_config, train_token

    tok = build_token(**SMALL, classes=5, train_blocks=1)
    gem = build_token(**SMALL, classes=5, train_blocks=1, aggregator="gem")
    assert isinstance(gem.tr, GeMHead) and gem.name == "gem-tokenrecipe-resnet18" and gem.meta["aggregator"] == "gem"
    assert [k for k in tok.state_dict() if not k.startswith("tr.")] == [k for k in gem.state_dict()
                                                                         if not k.startswith("tr.")]
    x = torch.randn(2, 3, 64, 64)
    v = gem.eval()(x)
    assert v.shape == (2, 24) and torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)
    # by hand: GeM (p = 3) of the backbone map, Linear, BatchNorm1d in eval, L2
    fmap = gem.backbone(x)
    pooled = fmap.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
    want = F.normalize(gem.tr.proj(pooled), dim=-1)
    assert torch.allclose(v, want, atol=1e-5)
    with pytest.raises(ValueError, match="aggregator"):
        build_token(**SMALL, aggregator="mac")
    cfg = token_config(root=str(root), preset="tiny", **SMALL, aggregator="gem", image_size=48, images_per_epoch=8,
                       epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, warmup_epochs=0, device="cpu",
                       out_dir=str(tmp_path / "gem"), train_blocks=1, views=1, cache_frozen=True)
    model, history = train_token(cfg)
    assert model.name == "gem-tokenrecipe-resnet18" and np.isfinite(history[0]["loss"])
    back = load_model(save_model(model, tmp_path / "gem.pth"))
    assert isinstance(back.tr, GeMHead) and torch.allclose(back(x), model(x), atol=1e-6)
    assert token_classification(dict(cfg, aggregator="token"))[0].name == "token-resnet18"
