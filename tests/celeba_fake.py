"""A small fake CelebA on disk, in CelebA's exact file formats, for tests and benchmarks.

The images are real JPEGs of the aligned size (178 wide, 218 high) whose content depends on the
attributes, so a model can learn something from them: Smiling brightens the lower third of the
face (where the mouth is), Male shifts the colour from red towards blue, Eyeglasses darkens a band
at eye height. A shared noise texture, shifted per image, gives the JPEG encoder and decoder
realistic work (about 8 KB per file at quality 90; CelebA's files average 7 KB).

``identity_CelebA.txt`` gives every image a person, as CelebA's does: two to six images per
identity, all of one sex (Male is a property of the person, so the protocol's groups are groups of
persons) and all in one partition (CelebA's partition is disjoint by identity). The identities are
drawn from their own generator, so the images and attributes are those of a fake without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dataset.celeba_files import ATTRIBUTE_FILE, ATTRIBUTE_NAMES, IDENTITY_FILE, IMAGE_FOLDER, PARTITION_FILE

WIDTH, HEIGHT = 178, 218
# Positive rate of each attribute in the fake set; the others are positive 30 % of the time.
# Smiling and Male are close to CelebA's (48 % and 42 %) so that the protocol's cells are populated.
RATES = {"Smiling": 0.5, "Male": 0.4, "Eyeglasses": 0.1, "Young": 0.75}


def make_fake_celeba(root: Path, n_images: int = 300, seed: int = 0, layout: str = "standard",
                     identities: bool = True) -> dict:
    """Write a fake CelebA of ``n_images`` images under ``root``; return what was written.

    Args:
        root: the folder a config's ``data.root`` would name.
        n_images: number of images (files 000001.jpg, 000002.jpg, ...).
        seed: seed of the attributes and pixels.
        layout: "standard" (files directly in ``root``) or "torchvision" (in ``root/celeba``).
        identities: write ``identity_CelebA.txt`` (False: leave it out, as in copies of CelebA
            downloaded without the Anno folder's identity file).

    Returns:
        ``{"root": root, "directory": folder of the files, "filenames": [...], "names": the 40
        attribute names, "attributes": int8 array (n_images × 40) of ±1, "partition": int8 array
        of 0/1/2, "identities": int64 array of identities, or None when not written}``. The
        partition is CelebA's shape: the first 80 % train, 10 % valid, 10 % test.
    """
    if layout not in ("standard", "torchvision"):
        raise ValueError(f"layout must be 'standard' or 'torchvision', not {layout!r}")
    root = Path(root)
    directory = root / "celeba" if layout == "torchvision" else root
    image_dir = directory / IMAGE_FOLDER
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    rates = np.array([RATES.get(name, 0.3) for name in ATTRIBUTE_NAMES])
    attributes = np.where(rng.random((n_images, len(ATTRIBUTE_NAMES))) < rates, 1, -1).astype(np.int8)
    filenames = [f"{i + 1:06d}.jpg" for i in range(n_images)]

    # One smooth-ish noise texture larger than an image; each image takes a shifted window of it.
    texture = rng.normal(0.0, 4.0, (HEIGHT + 32, WIDTH + 32, 1)).astype(np.float32)
    texture = (texture + np.roll(texture, 1, axis=0) + np.roll(texture, 1, axis=1)) / 1.7
    column = {name: ATTRIBUTE_NAMES.index(name) for name in ("Smiling", "Male", "Eyeglasses")}
    rows = np.arange(HEIGHT)[:, None, None]
    for i, name in enumerate(filenames):
        smiling, male, glasses = (attributes[i, column[c]] == 1 for c in ("Smiling", "Male", "Eyeglasses"))
        colour = np.array([150.0, 110.0, 90.0]) if not male else np.array([100.0, 110.0, 150.0])
        dy, dx = rng.integers(0, 32, 2)
        pixels = colour + rng.normal(0.0, 10.0, 3) + texture[dy: dy + HEIGHT, dx: dx + WIDTH]
        if smiling:
            pixels = pixels + 45.0 * (rows > 2 * HEIGHT // 3)
        if glasses:
            pixels = pixels - 60.0 * ((rows > 90) & (rows < 110))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(image_dir / name, quality=90)

    # CelebA's format: count, names (with a trailing space), then each value right-aligned in two
    # characters after a space, which gives the double spaces before the 1s.
    lines = [str(n_images), " ".join(ATTRIBUTE_NAMES) + " "]
    lines += [name + "".join(f" {v:2d}" for v in row) for name, row in zip(filenames, attributes)]
    (directory / ATTRIBUTE_FILE).write_text("\n".join(lines) + "\n")

    partition = np.zeros(n_images, dtype=np.int8)
    partition[int(0.8 * n_images):] = 1
    partition[int(0.9 * n_images):] = 2
    (directory / PARTITION_FILE).write_text("".join(f"{name} {p}\n" for name, p in zip(filenames, partition)))

    persons = None
    if identities:
        persons = fake_identities(attributes, partition, seed)
        (directory / IDENTITY_FILE).write_text("".join(f"{name} {i}\n" for name, i in zip(filenames, persons)))
    return {
        "root": root,
        "directory": directory,
        "filenames": filenames,
        "names": list(ATTRIBUTE_NAMES),
        "attributes": attributes,
        "partition": partition,
        "identities": persons,
    }


def fake_identities(attributes: np.ndarray, partition: np.ndarray, seed: int) -> np.ndarray:
    """An identity per image: persons of 2 to 6 images (fewer for the last of a stratum), each of
    one sex and one partition, numbered from 1 in random order (CelebA's numbers carry no order)."""
    rng = np.random.default_rng([seed, 0x1D])  # not the images' generator: those stay as they were
    male = attributes[:, ATTRIBUTE_NAMES.index("Male")] == 1
    person = np.empty(len(attributes), dtype=np.int64)
    count = 0
    for part in np.unique(partition):
        for sex in (False, True):
            rows = rng.permutation(np.flatnonzero((partition == part) & (male == sex)))
            start = 0
            while start < len(rows):
                size = int(rng.integers(2, 7))
                person[rows[start: start + size]] = count
                count, start = count + 1, start + size
    return rng.permutation(count)[person] + 1
