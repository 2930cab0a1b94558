"""Omniglot: read the standard distribution, cache it preprocessed, split it, sample tasks.

Source layout (Lake et al.'s Python distribution; nothing is ever downloaded): a folder ``root``
holding, for each split ``images_background`` and ``images_evaluation``, either the zip
``<split>.zip`` (read in place, never unpacked) or the unpacked folder ``<split>/``, with the
images at ``<split>/<Alphabet>/<character>/<drawing>.png``. The folder wins when both exist.

Preprocessing (as the MAML code): each image to 8-bit grey, resized to 28x28 with Lanczos,
inverted so strokes are 1 (stored as 255) and background 0.

Split rule: the 1623 characters sorted by their path ``<split>/<Alphabet>/<character>``
(so ``images_background`` first), then the first ``train_characters`` (1200) are the
meta-training characters and the rest (423) the meta-test characters: all 964 background
characters plus the first 236 evaluation characters train, and the other 423 evaluation
characters test.

Classes: every character gives four classes, its drawings rotated by 0, 90, 180 and 270
degrees (as the paper). Class ``c`` of a split is character ``c // 4`` of that split turned
``c % 4`` quarter turns counter-clockwise, exactly ``np.rot90(image, c % 4)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

SPLITS = ("images_background", "images_evaluation")
IMAGE_SIZE = 28
ROTATIONS = 4
CACHE_FORMAT = 1
EXPECTED = (
    "a folder holding images_background.zip and images_evaluation.zip (or the unpacked "
    "folders images_background/ and images_evaluation/), with the images at "
    "<split>/<Alphabet>/<character>/<drawing>.png"
)


class OmniglotDataError(ValueError):
    """The Omniglot source is missing or malformed; the message says what was expected."""


@dataclass(frozen=True)
class OmniglotImages:
    """All characters of the data set, preprocessed.

    ``images`` is uint8 ``[characters, drawings, 28, 28]`` (strokes 255, background 0), its
    characters in the order of ``characters`` (their sorted ``<split>/<Alphabet>/<character>``).
    """

    images: np.ndarray
    characters: tuple[str, ...]


@dataclass(frozen=True)
class _Source:
    """Where one split's PNGs are read from."""

    split: str
    path: Path
    is_zip: bool

    def fingerprint(self) -> list[object]:
        """Size and modification time of the source, the cache key's ingredients."""
        if self.is_zip:
            st = self.path.stat()
            return [self.split, "zip", str(self.path.resolve()), st.st_size, st.st_mtime_ns]
        stats = [p.stat() for p in sorted(self.path.rglob("*.png"))]
        return [
            self.split,
            "folder",
            str(self.path.resolve()),
            len(stats),
            sum(s.st_size for s in stats),
            max((s.st_mtime_ns for s in stats), default=0),
        ]


def find_sources(root: str | Path) -> list[_Source]:
    """The zip or folder of each split under ``root``, with a clear error when one is missing."""
    root = Path(root).expanduser()
    if not root.exists():
        raise OmniglotDataError(f"Omniglot root {str(root)!r} does not exist; expected {EXPECTED}")
    if not root.is_dir():
        raise OmniglotDataError(f"Omniglot root {str(root)!r} is not a folder; expected {EXPECTED}")
    sources = []
    for split in SPLITS:
        folder, archive = root / split, root / f"{split}.zip"
        if folder.is_dir():
            sources.append(_Source(split, folder, is_zip=False))
        elif archive.is_file():
            sources.append(_Source(split, archive, is_zip=True))
        else:
            raise OmniglotDataError(
                f"Omniglot root {str(root)!r} holds neither {split}.zip nor {split}/; "
                f"expected {EXPECTED}"
            )
    return sources


def _image_names(source: _Source, names: list[str]) -> dict[str, list[str]]:
    """``<split>/<Alphabet>/<character>`` -> its PNG names (sorted), from a list of paths."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != source.split or not parts[3].endswith(".png"):
            continue  # directories, __MACOSX/ and other strays
        if any(p.startswith(".") for p in parts):
            continue
        groups.setdefault("/".join(parts[:3]), []).append(name)
    if not groups:
        raise OmniglotDataError(
            f"{str(source.path)!r} holds no images at {source.split}/<Alphabet>/<character>/"
            f"<drawing>.png; expected {EXPECTED}"
        )
    return {k: sorted(v) for k, v in sorted(groups.items())}


def _read_split(source: _Source, size: int) -> Iterator[tuple[str, np.ndarray]]:
    """Yield each character of the split and its preprocessed drawings ``[drawings, H, W]``."""
    if not source.is_zip:
        base = source.path.parent
        names = [p.relative_to(base).as_posix() for p in source.path.rglob("*.png")]
        for character, files in _image_names(source, names).items():
            yield (
                character,
                np.stack([_preprocess((base / f).read_bytes(), f, size) for f in files]),
            )
        return
    try:
        with zipfile.ZipFile(source.path) as archive:
            for character, files in _image_names(source, archive.namelist()).items():
                yield character, np.stack([_preprocess(archive.read(f), f, size) for f in files])
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise OmniglotDataError(
            f"{str(source.path)!r} is not a readable zip file ({err}); expected {EXPECTED}"
        ) from None


def _preprocess(data: bytes, name: str, size: int) -> np.ndarray:
    """One PNG -> uint8 ``[size, size]``: grey, Lanczos-resized, inverted (strokes 255)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            small = img.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise OmniglotDataError(f"Omniglot image {name!r} cannot be decoded: {err}") from None
    return 255 - np.asarray(small, dtype=np.uint8)


def decode_omniglot(sources: list[_Source], size: int = IMAGE_SIZE) -> OmniglotImages:
    """Decode every PNG of ``sources`` (slow: seconds for the full data set; see the cache)."""
    characters: list[str] = []
    arrays: list[np.ndarray] = []
    for source in sources:
        for character, drawings in _read_split(source, size):
            characters.append(character)
            arrays.append(drawings)
    counts = {a.shape[0] for a in arrays}
    if len(counts) != 1:
        few = min(range(len(arrays)), key=lambda i: arrays[i].shape[0])
        raise OmniglotDataError(
            f"every Omniglot character needs the same number of drawings; found "
            f"{sorted(counts)} (e.g. {characters[few]!r} has {arrays[few].shape[0]})"
        )
    order = sorted(range(len(characters)), key=characters.__getitem__)
    return OmniglotImages(
        images=np.stack([arrays[i] for i in order]),
        characters=tuple(characters[i] for i in order),
    )


def cache_path(sources: list[_Source], cache_dir: Path, size: int) -> Path:
    """The cache file of these sources: named by a hash of their paths, sizes and times."""
    key = json.dumps([CACHE_FORMAT, size, *(s.fingerprint() for s in sources)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir / f"omniglot-{size}px-{digest}.npz"


def _read_cache(path: Path) -> OmniglotImages | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return OmniglotImages(
                images=data["images"], characters=tuple(str(c) for c in data["characters"])
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.warning("ignoring the unreadable Omniglot cache %s (%s)", path, err)
        return None


def _write_cache(path: Path, data: OmniglotImages) -> None:
    """Write atomically, so that a crash never leaves a half-written cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, images=data.images, characters=np.array(data.characters))
    os.replace(tmp, path)


def load_omniglot(
    root: str | Path, *, cache_dir: str | Path | None = None, size: int = IMAGE_SIZE
) -> OmniglotImages:
    """All Omniglot characters under ``root``, preprocessed; from the cache when it is current.

    The cache (one ``.npz`` in ``cache_dir``; None: no cache) is keyed by the sources' paths,
    sizes and modification times, so a changed source is decoded again.
    """
    sources = find_sources(root)
    if cache_dir is None:
        return decode_omniglot(sources, size)
    path = cache_path(sources, Path(cache_dir).expanduser(), size)
    if path.is_file():
        cached = _read_cache(path)
        if cached is not None:
            return cached
    log.info("decoding Omniglot from %s (cached afterwards in %s)", root, path)
    data = decode_omniglot(sources, size)
    _write_cache(path, data)
    return data


# --------------------------------------------------------------------------- splits and tasks


@dataclass(frozen=True)
class ClassPool:
    """The classes of one split: ``images`` uint8 ``[characters, drawings, H, W]`` as a tensor.

    Class ``c`` is character ``c // 4`` rotated by ``c % 4`` quarter turns (``np.rot90``).
    """

    images: Tensor
    characters: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.characters) * ROTATIONS

    @property
    def drawings(self) -> int:
        return int(self.images.shape[1])


def split_pools(data: OmniglotImages, train_characters: int) -> tuple[ClassPool, ClassPool]:
    """The meta-training pool (first ``train_characters`` characters) and the meta-test pool."""
    total = len(data.characters)
    if not 0 < train_characters < total:
        raise OmniglotDataError(
            f"train_characters must leave characters for both splits: got {train_characters} "
            f"of the {total} characters found (the standard split is 1200 of 1623)"
        )
    images = torch.from_numpy(data.images)
    return (
        ClassPool(images[:train_characters], data.characters[:train_characters]),
        ClassPool(images[train_characters:], data.characters[train_characters:]),
    )


def class_images(pool: ClassPool, class_id: int) -> np.ndarray:
    """All drawings of one class, rotated: uint8 ``[drawings, H, W]``."""
    character, turns = divmod(class_id, ROTATIONS)
    return np.rot90(pool.images[character].numpy(), turns, axes=(1, 2)).copy()


@dataclass(frozen=True)
class FewShotBatch:
    """A batch of N-way K-shot tasks.

    Images are ``[tasks, ways * shots (or * query), 1, H, W]`` floats in [0, 1], labels
    ``[tasks, ways * shots]`` int64, class-major (label ``i`` repeated ``shots`` times, ...).
    Label ``i`` of task ``t`` is class ``classes[t, i]`` of the pool; ``drawings[t, i]`` are
    the drawing indices used, the first ``shots`` for the support set, the rest for the query.
    """

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor
    classes: Tensor
    drawings: Tensor


def check_task_shape(pool: ClassPool, *, ways: int, shots: int, query: int) -> None:
    """A clear error when the pool cannot supply tasks of this shape."""
    if ways > pool.num_classes:
        raise OmniglotDataError(
            f"{ways}-way tasks need {ways} classes; the split has {pool.num_classes}"
        )
    if shots + query > pool.drawings:
        raise OmniglotDataError(
            f"{shots} support + {query} query images per class need {shots + query} drawings "
            f"of each character; there are {pool.drawings}"
        )


def sample_tasks(
    pool: ClassPool,
    *,
    num_tasks: int,
    ways: int,
    shots: int,
    query: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> FewShotBatch:
    """Draw ``num_tasks`` tasks from ``generator`` only: same generator state, same tasks.

    Each task takes ``ways`` distinct classes in a uniformly random order (label ``i`` is the
    ``i``-th class drawn, so a label index says nothing about the class) and ``shots + query``
    distinct drawings of each class, so support and query images never overlap.
    """
    check_task_shape(pool, ways=ways, shots=shots, query=query)
    classes = torch.stack(
        [torch.randperm(pool.num_classes, generator=generator)[:ways] for _ in range(num_tasks)]
    )
    noise = torch.rand(num_tasks, ways, pool.drawings, generator=generator, dtype=torch.float64)
    drawings = noise.argsort(dim=-1)[..., : shots + query]
    characters, turns = classes // ROTATIONS, classes % ROTATIONS
    images = pool.images[characters.unsqueeze(-1), drawings]  # [tasks, ways, shots+query, H, W]
    for k in range(1, ROTATIONS):
        selected = turns == k
        images[selected] = torch.rot90(images[selected], k, dims=(-2, -1))
    x = images.to(dtype).div_(255.0).unsqueeze(3)  # [tasks, ways, shots+query, 1, H, W]
    labels = torch.arange(ways).view(1, ways, 1)
    return FewShotBatch(
        x_support=x[:, :, :shots].flatten(1, 2),
        y_support=labels.expand(num_tasks, ways, shots).flatten(1),
        x_query=x[:, :, shots:].flatten(1, 2),
        y_query=labels.expand(num_tasks, ways, query).flatten(1),
        classes=classes,
        drawings=drawings,
    )
