"""The Omniglot loader (zip and folders, cache, split, rotations, errors) and task sampling."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omniglot_fixture import Layout, fixture_files, write_folders, write_zips
from PIL import Image

from metarl.supervised import omniglot_data as od
from metarl.supervised.omniglot_data import (
    ClassPool,
    OmniglotDataError,
    class_images,
    load_omniglot,
    sample_tasks,
    split_pools,
)

LAYOUT = Layout(alphabets=(2, 2), characters=3, drawings=6)
REAL_ROOT = Path(
    os.environ.get("METARL_OMNIGLOT", Path(__file__).parents[2] / "shared/data/omniglot")
)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return fixture_files(LAYOUT)


@pytest.fixture(scope="module")
def zip_root(files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_zips(tmp_path_factory.mktemp("zips"), files)


@pytest.fixture(scope="module")
def data(zip_root: Path) -> od.OmniglotImages:
    return load_omniglot(zip_root)


def _pool(data: od.OmniglotImages) -> ClassPool:
    return ClassPool(torch.from_numpy(data.images), data.characters)


# --------------------------------------------------------------------------- loading


def test_zips_and_folders_load_to_the_same_sorted_characters(
    files: dict[str, bytes], zip_root: Path, data: od.OmniglotImages, tmp_path: Path
) -> None:
    assert data.images.shape == (LAYOUT.total_characters, LAYOUT.drawings, 28, 28)
    assert data.images.dtype == np.uint8
    expected = sorted({p.rsplit("/", 1)[0] for p in files})
    assert list(data.characters) == expected
    assert data.characters[0].startswith("images_background/")
    assert data.characters[-1].startswith("images_evaluation/")
    unpacked = load_omniglot(write_folders(tmp_path, files))
    assert unpacked.characters == data.characters
    np.testing.assert_array_equal(unpacked.images, data.images)
    again = load_omniglot(zip_root)
    np.testing.assert_array_equal(again.images, data.images)


def test_images_are_inverted_and_keep_the_ink_of_the_original(
    files: dict[str, bytes], data: od.OmniglotImages
) -> None:
    """Strokes become bright on black; Lanczos keeps the share of ink of the 105x105 drawing."""
    character = data.characters[4]
    names = sorted(p for p in files if p.startswith(character + "/"))
    for drawing, name in enumerate(names):
        with Image.open(io.BytesIO(files[name])) as img:
            ink = 1.0 - np.asarray(img, dtype=np.float64).mean()  # mode "1": white is True
        small = data.images[4, drawing] / 255.0
        assert abs(small.mean() - ink) < 0.02
        assert small.max() > 0.9 and np.median(small) < 0.05


def test_cache_is_used_and_renewed_when_the_source_changes(
    files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = write_zips(tmp_path / "data", files), tmp_path / "cache"
    first = load_omniglot(root, cache_dir=cache)
    assert len(list(cache.glob("omniglot-28px-*.npz"))) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache is current")

    with monkeypatch.context() as m:
        m.setattr(od, "decode_omniglot", no_decoding)
        cached = load_omniglot(root, cache_dir=cache)
    assert cached.characters == first.characters
    np.testing.assert_array_equal(cached.images, first.images)
    changed = dict(files)
    victim = sorted(changed)[0]
    changed[victim] = fixture_files(LAYOUT, seed=1)[victim]
    write_zips(root, changed)
    os.utime(root / "images_background.zip", ns=(1, 1))
    renewed = load_omniglot(root, cache_dir=cache)
    assert len(list(cache.glob("omniglot-28px-*.npz"))) == 2
    assert not np.array_equal(renewed.images[0, 0], first.images[0, 0])


def test_a_corrupt_cache_is_decoded_again(files: dict[str, bytes], tmp_path: Path) -> None:
    root, cache = write_zips(tmp_path / "data", files), tmp_path / "cache"
    first = load_omniglot(root, cache_dir=cache)
    (path,) = cache.glob("*.npz")
    path.write_bytes(b"garbage")
    np.testing.assert_array_equal(load_omniglot(root, cache_dir=cache).images, first.images)


# --------------------------------------------------------------------------- errors


def test_missing_paths_say_what_was_expected(tmp_path: Path, files: dict[str, bytes]) -> None:
    with pytest.raises(
        OmniglotDataError,
        match=r"does not exist; expected a folder holding "
        r"images_background\.zip and images_evaluation\.zip",
    ):
        load_omniglot(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OmniglotDataError, match="is not a folder"):
        load_omniglot(tmp_path / "file")
    partial = tmp_path / "partial"
    write_folders(partial, {k: v for k, v in files.items() if k.startswith("images_background")})
    with pytest.raises(
        OmniglotDataError, match=r"holds neither images_evaluation\.zip nor images_evaluation/"
    ):
        load_omniglot(partial)


def test_broken_sources_give_clear_errors(tmp_path: Path, files: dict[str, bytes]) -> None:
    root = write_zips(tmp_path / "broken_zip", files)
    (root / "images_background.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(OmniglotDataError, match=r"images_background\.zip' is not a readable zip"):
        load_omniglot(root)

    root = write_zips(tmp_path / "empty", files)
    with zipfile.ZipFile(root / "images_evaluation.zip", "w") as archive:
        archive.writestr("images_evaluation/readme.txt", b"nothing here")
    with pytest.raises(OmniglotDataError, match=r"holds no images at images_evaluation/<Alph"):
        load_omniglot(root)

    root = write_folders(tmp_path / "bad_png", files)
    bad = sorted(files)[3]
    (root / bad).write_bytes(b"\x89PNG but truncated")
    with pytest.raises(OmniglotDataError, match=f"image '{bad}' cannot be decoded"):
        load_omniglot(root)

    root = write_folders(tmp_path / "uneven", files)
    (root / sorted(files)[0]).unlink()
    with pytest.raises(OmniglotDataError, match=r"same number of drawings; found \[5, 6\]"):
        load_omniglot(root)


# --------------------------------------------------------------------------- split, classes


def test_split_takes_the_first_characters_by_path_for_training(data: od.OmniglotImages) -> None:
    train, test = split_pools(data, 7)
    assert train.characters == data.characters[:7] and test.characters == data.characters[7:]
    assert (train.num_classes, test.num_classes) == (28, 4 * (LAYOUT.total_characters - 7))
    assert torch.equal(test.images[0], torch.from_numpy(data.images[7]))
    for bad in (0, LAYOUT.total_characters):
        with pytest.raises(OmniglotDataError, match="must leave characters for both splits"):
            split_pools(data, bad)


def test_rotated_classes_are_rot90_of_the_character(data: od.OmniglotImages) -> None:
    pool = _pool(data)
    for character in range(len(data.characters)):
        original = data.images[character]
        np.testing.assert_array_equal(class_images(pool, 4 * character), original)
        for turns in (1, 2, 3):
            rotated = class_images(pool, 4 * character + turns)
            np.testing.assert_array_equal(rotated, np.rot90(original, turns, axes=(1, 2)))
            assert not np.array_equal(rotated, original)


@pytest.mark.skipif(not REAL_ROOT.is_dir(), reason=f"no Omniglot copy at {REAL_ROOT}")
def test_the_real_zips_give_the_standard_split() -> None:
    data = load_omniglot(REAL_ROOT)
    assert data.images.shape == (1623, 20, 28, 28)
    background = [c for c in data.characters if c.startswith("images_background/")]
    assert len(background) == 964 and len(set(data.characters)) == 1623
    train, test = split_pools(data, 1200)
    assert (train.num_classes, test.num_classes) == (4800, 1692)
    assert train.characters[:964] == tuple(background)
    assert test.characters[0] == "images_evaluation/Gurmukhi/character42"
    assert not set(train.characters) & set(test.characters)
    ink = data.images.mean() / 255
    assert 0.03 < ink < 0.2  # strokes are bright and sparse: inverted, as the MAML code
    np.testing.assert_array_equal(
        class_images(test, 4 * 5 + 3), np.rot90(test.images[5].numpy(), 3, axes=(1, 2))
    )


# --------------------------------------------------------------------------- task sampling


def _sample(pool: ClassPool, seed: int, **kw: int) -> od.FewShotBatch:
    shape = {"num_tasks": 40, "ways": 5, "shots": 2, "query": 3} | kw
    return sample_tasks(pool, generator=torch.Generator().manual_seed(seed), **shape)


def test_tasks_have_distinct_classes_and_disjoint_support_and_query(
    data: od.OmniglotImages,
) -> None:
    batch = _sample(_pool(data), 0)
    assert batch.x_support.shape == (40, 10, 1, 28, 28) and batch.x_query.shape == (
        40,
        15,
        1,
        28,
        28,
    )
    assert (
        batch.x_support.dtype == torch.float32
        and 0 <= batch.x_support.min() <= batch.x_support.max() <= 1
    )
    assert batch.y_support[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.y_query[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    for classes, drawings in zip(batch.classes, batch.drawings, strict=True):
        assert len(set(classes.tolist())) == 5
        for per_class in drawings:
            assert len(set(per_class.tolist())) == 5  # 2 support + 3 query, all different
            assert not set(per_class[:2].tolist()) & set(per_class[2:].tolist())


def test_task_images_are_the_rotated_drawings_of_their_classes(data: od.OmniglotImages) -> None:
    pool = _pool(data)
    batch = _sample(pool, 1, num_tasks=6)
    for t in range(6):
        for label, class_id in enumerate(batch.classes[t].tolist()):
            images = class_images(pool, class_id) / 255.0
            drawings = batch.drawings[t, label].tolist()
            support = batch.x_support[t, label * 2 : label * 2 + 2, 0].double().numpy()
            query = batch.x_query[t, label * 3 : label * 3 + 3, 0].double().numpy()
            np.testing.assert_allclose(support, images[drawings[:2]], atol=1e-6)
            np.testing.assert_allclose(query, images[drawings[2:]], atol=1e-6)


def test_sampling_is_deterministic_for_a_seed(data: od.OmniglotImages) -> None:
    pool = _pool(data)
    a, b, c = _sample(pool, 3), _sample(pool, 3), _sample(pool, 4)
    for field in ("x_support", "x_query", "classes", "drawings"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.classes, c.classes)


def test_labels_carry_no_information_about_the_class(data: od.OmniglotImages) -> None:
    """Over many tasks a class gets every label about equally often."""
    batch = _sample(_pool(data), 5, num_tasks=4000, shots=1, query=1)
    counts = torch.zeros(4 * LAYOUT.total_characters, 5)
    for label in range(5):
        counts[:, label] = torch.bincount(batch.classes[:, label], minlength=counts.shape[0])
    share = counts / counts.sum(1, keepdim=True)
    assert (share - 0.2).abs().max() < 0.1
    assert counts.sum(0).min() == 4000  # every label is used once per task


def test_impossible_task_shapes_are_refused(data: od.OmniglotImages) -> None:
    pool = _pool(data)
    with pytest.raises(OmniglotDataError, match="49-way tasks need 49 classes; the split has 48"):
        _sample(pool, 0, ways=49)
    with pytest.raises(OmniglotDataError, match="need 7 drawings of each character; there are 6"):
        _sample(pool, 0, shots=2, query=5)
