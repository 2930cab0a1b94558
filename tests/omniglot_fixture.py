"""A small generated Omniglot in the real layout, for the loader, sampling and learning tests.

Every character is a prototype of a few thick random strokes; its drawings are the prototype
with jittered stroke ends, saved like the real data set: 105x105 one-bit PNGs, white
background, black strokes, at ``<split>/<Alphabet>/characterNN/<id>_<drawer>.png``, both as
the two zips and as their unpacked folders.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 105
SPLITS = ("images_background", "images_evaluation")


@dataclass(frozen=True)
class Layout:
    """How many alphabets, characters and drawings each split of the fixture has."""

    alphabets: tuple[int, int] = (2, 2)
    characters: int = 3
    drawings: int = 6
    strokes: int = 3

    @property
    def total_characters(self) -> int:
        return sum(self.alphabets) * self.characters


def _drawing(strokes: np.ndarray, rng: np.random.Generator) -> bytes:
    """One drawing of a character: its strokes with ends jittered by a few pixels, as PNG."""
    img = Image.new("1", (SIZE, SIZE), 1)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in strokes + rng.integers(-4, 5, size=strokes.shape):
        draw.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=0, width=9)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fixture_files(layout: Layout, seed: int = 0) -> dict[str, bytes]:
    """Relative path -> PNG bytes of every image of the fixture."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for split, alphabets in zip(SPLITS, layout.alphabets, strict=True):
        for a in range(alphabets):
            for c in range(layout.characters):
                strokes = rng.integers(12, SIZE - 12, size=(layout.strokes, 4))
                folder = f"{split}/Alphabet_{split[7]}{a}/character{c + 1:02d}"
                for d in range(layout.drawings):
                    files[f"{folder}/{a:02d}{c:02d}_{d + 1:02d}.png"] = _drawing(strokes, rng)
    return files


def write_zips(root: Path, files: dict[str, bytes]) -> Path:
    """The fixture as ``images_background.zip`` and ``images_evaluation.zip`` (with folder
    entries, as the real zips)."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / f"{split}.zip", "w") as archive:
            folders = sorted({p.rsplit("/", i)[0] + "/" for p in files for i in (1, 2, 3)})
            for folder in folders:
                if folder.startswith(split):
                    archive.writestr(folder, b"")
            for path, data in files.items():
                if path.startswith(split):
                    archive.writestr(path, data)
    return root


def write_folders(root: Path, files: dict[str, bytes]) -> Path:
    """The fixture unpacked: ``images_background/...`` and ``images_evaluation/...``."""
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root
