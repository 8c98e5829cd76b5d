"""structloss.data: splits, offline datasets, torchvision loaders on fixtures in the datasets' on-disk formats."""
import gzip, os, pickle, struct
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
import structloss.data as D


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see conftest.py


# ---------- splits ----------
@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6), f_val=st.floats(0, 0.4), f_test=st.floats(0, 0.4),
       seed=st.integers(0, 10))
def test_stratified_split_partition_and_fractions(sizes, f_val, f_test, seed):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(seed); labels = labels[rng.permutation(len(labels))]
    rest, val, test = D.stratified_split(labels, (f_val, f_test), seed)
    assert np.array_equal(np.sort(np.concatenate([rest, val, test])), np.arange(len(labels)))
    for c, n in enumerate(sizes):  # eq. 1, class by class
        assert (labels[val] == c).sum() == round(f_val * n)
        assert (labels[test] == c).sum() == min(round(f_test * n), n - round(f_val * n))
    again = D.stratified_split(labels, (f_val, f_test), seed)
    for a, b in zip((rest, val, test), again): assert np.array_equal(a, b)


def test_split_errors():
    with pytest.raises(ValueError, match="sum to < 1"): D.stratified_split([0, 1], (0.6, 0.4))
    with pytest.raises(ValueError, match="1-D"): D.stratified_split(np.zeros((2, 2)), (0.1,))


def test_digits_fixed_and_disjoint():
    a, b = D.digits_splits(seed=3), D.digits_splits(seed=3)
    assert np.array_equal(a.val.targets, b.val.targets) and torch.equal(a.test.x, b.test.x)
    n = len(a.train) + len(a.val) + len(a.test)
    assert n == 1797 and a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train_eval) == len(a.train) and a.train_eval.transform is None
    aug = D.digits_splits(seed=3, augment=True)
    x1, y1 = aug.train[0]; x2, _ = aug.train[0]
    assert x1.shape == (1, 8, 8) and not torch.equal(x1, x2) and y1 == int(aug.train.targets[0])


def test_mnist1d_more_samples_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTLOSS_DATA", str(tmp_path))
    d = D.mnist1d_splits(num_samples=6000, seed=0)
    assert len(d.train) + len(d.val) + len(d.test) == 6000 and d.input_shape == (1, 40)
    assert os.path.exists(tmp_path / "mnist1d_n6000_seed42.npz")
    d2 = D.mnist1d_splits(num_samples=6000, seed=0)  # from the cache: identical
    assert torch.equal(d.train.x, d2.train.x)
    assert np.bincount(d.val.targets).min() > 0


def test_two_view_and_augmentations():
    torch.manual_seed(0)
    d = D.digits_splits(augment=True)
    tv = D.TwoViewDataset(d.train, views=3)
    x, y = tv[5]
    assert x.shape == (3, 1, 8, 8) and y == int(d.train.targets[5]) and not torch.equal(x[0], x[1])
    assert np.array_equal(tv.targets, d.train.targets)
    with pytest.raises(ValueError, match="views"): D.TwoViewDataset(d.train, views=0)
    s = D.RandomShift(2)(torch.ones(1, 40))
    assert s.shape == (1, 40) and s.sum() >= 38  # at most 2 zeros shifted in


def test_dataset_labels_variants():
    class A(torch.utils.data.Dataset):
        def __init__(self): self._labels = [3, 1, 2]
    assert D.dataset_labels(A()).tolist() == [3, 1, 2]
    class Cars: _samples = [("a", 4), ("b", 0)]
    assert D.dataset_labels(Cars()).tolist() == [4, 0]
    sub = torch.utils.data.Subset(D.ArrayDataset(torch.zeros(4, 1), [0, 1, 2, 3]), [3, 1])
    assert D.dataset_labels(sub).tolist() == [3, 1]
    class Plain(torch.utils.data.Dataset):
        def __len__(self): return 2
        def __getitem__(self, i): return torch.zeros(1), 7 - i
    assert D.dataset_labels(Plain()).tolist() == [7, 6]


# ---------- torchvision loaders on tiny fixtures ----------
def _images(n, rng, channels=3, size=32):
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _write_cifar(root, hundred=False, per_batch=20):
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py"); folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    ncls = 100 if hundred else 10
    files = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for f in files:
        n = per_batch * (5 if hundred and f == "train" else 1)
        x = _images(n, rng).transpose(0, 3, 1, 2).reshape(n, -1)  # CIFAR stores CHW rows
        y = (np.arange(n) % (10 if not hundred else 5)).tolist()
        with open(folder / f, "wb") as fh: pickle.dump({"data": x, key: y}, fh)
    meta = {"fine_label_names": [f"c{i}" for i in range(ncls)]} if hundred else {"label_names": [f"c{i}" for i in range(ncls)]}
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as fh: pickle.dump(meta, fh)


@pytest.fixture
def no_checksums(monkeypatch):
    "CIFAR and SVHN verify MD5 sums of the official files; the fixtures are not those files."
    import torchvision.datasets.cifar as c, torchvision.datasets.svhn as s
    monkeypatch.setattr(c, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(s, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("name,hundred", [("cifar10", False), ("cifar100", True)])
def test_cifar_fixture(tmp_path, no_checksums, name, hundred):
    _write_cifar(tmp_path, hundred)
    d = D.load_dataset(name, seed=0, root=str(tmp_path))
    assert len(d.train) + len(d.val) == 100 and len(d.test) == 20 and d.num_classes == (100 if hundred else 10)
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == int(d.train.targets[0])
    xv, _ = d.val[0]; assert torch.equal(xv, d.val[0][0])  # validation is not augmented
    assert d.classes[:2] == ["c0", "c1"]
    assert len(d.train_eval) == len(d.train)
    # the same seed gives the same split
    assert np.array_equal(D.load_dataset(name, seed=0, root=str(tmp_path)).val.indices, d.val.indices)


def test_svhn_fixture(tmp_path, no_checksums):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        X = _images(n, rng).transpose(1, 2, 3, 0)  # SVHN .mat: [32, 32, 3, N]
        y = (np.arange(n) % 10 + 1)[:, None]       # labels 1..10, 10 meaning the digit 0
        savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": y})
    d = D.load_dataset("svhn", root=str(tmp_path))
    assert len(d.train) + len(d.val) == 40 and len(d.test) == 10
    assert set(np.concatenate([d.train.targets, d.val.targets]).tolist()) == set(range(10))  # 10 -> 0
    assert d.test[0][0].shape == (3, 32, 32)


def _idx(path, arr):
    magic = 0x0800 + arr.ndim  # unsigned bytes
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape) + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_fixture(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"; raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 10)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    d = D.load_dataset("fashion_mnist", root=str(tmp_path))
    assert len(d.train) + len(d.val) == 50 and len(d.test) == 10
    x, y = d.train[0]
    assert x.shape == (1, 28, 28) and d.input_shape == (1, 28, 28)


@pytest.mark.parametrize("augment,size", [("autoaugment", 64), ("autoaugment", 96), ("crop_flip", 32), ("crop", 28), (None, 40)])
def test_fake_data_pipelines(augment, size):
    "Formats with checksums (Flowers, Aircraft, Caltech, Cars): the same pipelines on torchvision's FakeData."
    d = D.fake_splits(num_samples=30, size=size, augment=augment, channels=3 if size != 28 else 1)
    x, y = d.train[0]
    assert x.shape == (3 if size != 28 else 1, size, size)
    assert d.val[0][0].shape == x.shape
    assert np.array_equal(sorted(np.concatenate([d.train.indices, d.val.indices, d.test.indices])), np.arange(30))


@pytest.mark.parametrize("name", sorted(D.TORCHVISION_DATASETS))
def test_missing_dataset_error_names_the_fix(tmp_path, name):
    with pytest.raises(D.DatasetUnavailableError, match="download=True"):
        D.load_dataset(name, root=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown dataset"): D.load_dataset("imagenet-1k")


# ---------- the fine-grained sets of the Silhouette paper ----------
def _jpg(path, rng, size=(40, 30), mode="RGB"):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def _check_image_splits(d, n_total, size=64):
    x, y = d.train[0]
    assert x.shape == (3, size, size) and y == int(d.train.targets[0])
    assert d.test[0][0].shape == (3, size, size) and d.val[0][0].shape == (3, size, size)
    assert len(d.train) + len(d.val) + len(d.test) == n_total
    assert len(d.train_eval) == len(d.train)


def test_fgvc_aircraft_fixture(tmp_path):
    "FGVC-Aircraft is read without checksums: variants.txt, images_variant_<split>.txt, data/images/*.jpg."
    rng = np.random.default_rng(0)
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A320", "Cessna 172"]  # names with spaces, as in the real file
    data.mkdir(parents=True); (data / "variants.txt").write_text("\n".join(variants) + "\n")
    k = 0
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        lines = []
        for i in range(n):
            name = f"{1000000 + k}"; k += 1
            _jpg(data / "images" / f"{name}.jpg", rng); lines.append(f"{name} {variants[i % 3]}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    d = D.load_dataset("fgvc_aircraft", root=str(tmp_path), size=64)
    _check_image_splits(d, 24)
    assert (len(d.train), len(d.val), len(d.test)) == (12, 6, 6)  # the official validation split
    assert sorted(set(d.train.targets.tolist())) == [0, 1, 2]


def test_caltech101_fixture(tmp_path):
    "Caltech-101: 101_ObjectCategories/<class>/image_NNNN.jpg (BACKGROUND_Google is dropped); some images are grayscale."
    rng = np.random.default_rng(0)
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for c, n in (("BACKGROUND_Google", 3), ("accordion", 10), ("airplanes", 10), ("ant", 10)):
        for i in range(1, n + 1): _jpg(cats / c / f"image_{i:04d}.jpg", rng, mode="L" if i % 2 else "RGB")
    d = D.load_dataset("caltech101", root=str(tmp_path), size=64, seed=1)
    _check_image_splits(d, 30)
    assert np.bincount(d.test.targets).tolist() == [2, 2, 2]  # 20% of each class, carved with the seed


def test_caltech256_fixture(tmp_path):
    rng = np.random.default_rng(0)
    cats = tmp_path / "caltech256" / "256_ObjectCategories"
    for j, c in enumerate(("001.ak47", "002.american-flag", "257.clutter")):
        for i in range(1, 11): _jpg(cats / c / f"{j + 1:03d}_{i:04d}.jpg", rng)
    d = D.load_dataset("caltech256", root=str(tmp_path), size=64)
    _check_image_splits(d, 30)


def test_stanford_cars_fixture(tmp_path):
    "Stanford Cars: devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, images."
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    base = tmp_path / "stanford_cars"; (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(["Audi A4", "BMW M3", "Fiat 500"], dtype=object)})
    for split, annos, n in (("cars_train", base / "devkit" / "cars_train_annos.mat", 30),
                            ("cars_test", base / "cars_test_annos_withlabels.mat", 6)):
        rec = np.zeros(n, dtype=[("fname", object), ("class", object)])
        for i in range(n):
            fname = f"{i + 1:05d}.jpg"; _jpg(base / split / fname, rng)
            rec[i] = (fname, np.uint8(i % 3 + 1))  # classes are 1-based in the .mat files
        savemat(annos, {"annotations": rec})
    d = D.load_dataset("stanford_cars", root=str(tmp_path), size=64)
    _check_image_splits(d, 36)
    assert sorted(set(d.test.targets.tolist())) == [0, 1, 2] and d.classes == ["Audi A4", "BMW M3", "Fiat 500"]


def test_flowers102_fixture(tmp_path, monkeypatch):
    "Flowers-102 checks the MD5 of its .mat files; with the checksum bypassed, the real parsing runs."
    import torchvision.datasets.flowers102 as f
    from scipy.io import savemat
    monkeypatch.setattr(f, "check_integrity", lambda *a, **k: True)
    rng = np.random.default_rng(0)
    base = tmp_path / "flowers-102"
    for i in range(1, 19): _jpg(base / "jpg" / f"image_{i:05d}.jpg", rng)
    savemat(base / "imagelabels.mat", {"labels": np.arange(18) % 3 + 1})
    savemat(base / "setid.mat", {"trnid": np.arange(1, 10), "valid": np.arange(10, 14), "tstid": np.arange(14, 19)})
    d = D.load_dataset("flowers102", root=str(tmp_path), size=64)
    _check_image_splits(d, 18)
    assert (len(d.train), len(d.val), len(d.test)) == (9, 4, 5)
    assert d.train.targets.tolist() == [0, 1, 2] * 3
