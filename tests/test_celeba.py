"""CelebA: the file reader, the paper's split, the image cache and the batch transform.

Everything runs on a fake CelebA written by tests/celeba_fake.py: real 178×218 JPEGs and attribute,
partition and identity files in CelebA's exact formats.
"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import build_dataset, celeba_cache
from dataset.celeba import celeba_transform
from dataset.celeba_cache import (
    BATCH_DECODERS,
    CACHE_CHECKSUM_MISMATCH,
    CACHE_REBUILT,
    CHECKSUM_SUFFIX,
    available_batch_decoders,
    crop_resize,
    default_backend,
    load_image_cache,
)
from dataset.celeba_files import (
    ATTRIBUTE_FILE,
    ATTRIBUTE_NAMES,
    CELEBA_URL,
    IDENTITY_FILE,
    PARTITION_FILE,
    locate_celeba,
    read_attributes,
    read_identities,
    read_partition,
)
from dataset.celeba_split import official_split, protocol_split
from tests.celeba_fake import make_fake_celeba
from training.validation import load_validated, validated_config
from utils.errors import ConfigError, DataError

N_IMAGES = 300


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_fake_celeba(tmp_path_factory.mktemp("celeba"), n_images=N_IMAGES, seed=0)


@pytest.fixture(scope="module")
def fake_torchvision(tmp_path_factory):
    return make_fake_celeba(tmp_path_factory.mktemp("celeba_tv"), n_images=120, seed=1, layout="torchvision")


def make_config(root, cache_dir, **data):
    """A small CelebA config: 40 test images, 100 training images, 64 px, 20 % minority."""
    own = {"test_size": 40, "image_size": 64, "cache_dir": str(cache_dir)}  # data.celeba
    own.update({key: data.pop(key) for key in list(data) if key in ("split", *own)})
    settings = {"name": "celeba", "root": str(root), "target": "Smiling", "protected": "Male",
                "minority_value": "1", "minority_share": 0.2, "train_size": 100, "celeba": own}
    settings.update(data)
    return validated_config({"data": settings, "model": {"name": "cnn"}, "training": {"batch_size": 8},
                                "logging": {"progress": "never"}})


def reference_image(path, size):
    """Center crop and resize written independently of dataset.celeba: numpy slicing, then Pillow."""
    pixels = np.asarray(Image.open(path).convert("RGB"))  # 218 × 178 × 3
    square = Image.fromarray(pixels[20:198, :, :])
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------------
# Reading the files


@pytest.mark.parametrize("which", ["standard", "torchvision"])
def test_reader_reads_both_layouts(which, fake, fake_torchvision):
    written = fake if which == "standard" else fake_torchvision
    files = locate_celeba(written["root"])
    assert files.directory == written["directory"]
    attributes = read_attributes(files.attribute_file)
    assert attributes.names == ATTRIBUTE_NAMES
    assert attributes.filenames.tolist() == written["filenames"]
    np.testing.assert_array_equal(attributes.values, written["attributes"])
    np.testing.assert_array_equal(attributes.column("Smiling", "data.target"),
                                  written["attributes"][:, ATTRIBUTE_NAMES.index("Smiling")])
    np.testing.assert_array_equal(read_partition(files.partition_file, attributes.filenames), written["partition"])
    assert files.identity_file == written["directory"] / IDENTITY_FILE
    np.testing.assert_array_equal(read_identities(files.identity_file, attributes.filenames), written["identities"])


def test_fake_identities_are_persons_as_in_celeba(tmp_path, fake):
    """Each fake person has a few images, all of one sex and one partition, as CelebA's do; and
    leaving the identity file out changes nothing else about the fake."""
    persons, male = fake["identities"], fake["attributes"][:, ATTRIBUTE_NAMES.index("Male")]
    sizes = np.unique(persons, return_counts=True)[1]
    assert sizes.max() <= 6 and np.median(sizes) >= 2 and len(sizes) < N_IMAGES / 2
    for person in np.unique(persons):
        rows = persons == person
        assert len(np.unique(male[rows])) == 1 and len(np.unique(fake["partition"][rows])) == 1
    without = make_fake_celeba(tmp_path, n_images=N_IMAGES, seed=0, identities=False)
    assert without["identities"] is None and not (tmp_path / IDENTITY_FILE).exists()
    assert locate_celeba(tmp_path).identity_file is None
    np.testing.assert_array_equal(without["attributes"], fake["attributes"])
    assert (tmp_path / "img_align_celeba" / "000007.jpg").read_bytes() == \
        (fake["directory"] / "img_align_celeba" / "000007.jpg").read_bytes()


def _identity_lines(fake):
    return (fake["directory"] / IDENTITY_FILE).read_text().splitlines()


def test_identity_file_in_another_order_is_matched_by_file_name(tmp_path, fake):
    shuffled = tmp_path / IDENTITY_FILE
    shuffled.write_text("\r\n".join(reversed(_identity_lines(fake))) + "\r\n")  # and Windows line ends
    np.testing.assert_array_equal(read_identities(shuffled, np.array(fake["filenames"])), fake["identities"])


def _replace_line(number, text):
    """A corruption that replaces line ``number`` (1-based) with ``text``."""
    return lambda lines: lines[: number - 1] + [text] + lines[number:]


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (_replace_line(5, "000005.jpg x12"), "line 5: identity 'x12' is not a non-negative integer"),
        (_replace_line(5, "000005.jpg -3"), "line 5: identity '-3' is not a non-negative integer"),
        (_replace_line(8, "000008.jpg"), "line 8: 1 fields, expected 2 (file name and identity)"),
        (_replace_line(3, "000003.jpg 4 7"), "line 3: 3 fields, expected 2"),
        (_replace_line(10, "12 000010.jpg"), "line 10: file name '12' is a number"),
        (_replace_line(6, "000006.jpg 99999999999999999999"), "line 6: identity 99999999999999999999 is too large"),
        (lambda lines: [], "no image lines"),
    ],
    ids=["bad-identity", "negative", "missing-identity", "extra-field", "swapped-columns", "overflow", "empty"],
)
def test_malformed_identity_file_is_a_data_error_naming_file_and_line(tmp_path, fake, corrupt, expected):
    path = tmp_path / IDENTITY_FILE
    path.write_text("\n".join(corrupt(_identity_lines(fake))) + "\n")
    with pytest.raises(DataError) as error:
        read_identities(path, np.array(fake["filenames"]))
    message = str(error.value)
    assert message.startswith(f"{path}, ")
    assert expected in message
    assert CELEBA_URL in message and "Anno" in message  # where the right file comes from


def test_identity_file_of_another_copy_is_a_data_error(tmp_path, fake):
    lines = _identity_lines(fake)
    path = tmp_path / IDENTITY_FILE
    path.write_text("\n".join(lines[:-3]) + "\n")  # three images without a person
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: 3 images of {ATTRIBUTE_FILE} have no identity "
                                        rf"\(e.g. '000298.jpg'\)"):
        read_identities(path, np.array(fake["filenames"]))
    path.write_text("\n".join(lines + [lines[4].split()[0] + " 1"]) + "\n")  # an image listed twice
    with pytest.raises(DataError, match=r"image '000005.jpg' is listed on more than one line"):
        read_identities(path, np.array(fake["filenames"]))
    with pytest.raises(DataError, match=f"{IDENTITY_FILE}: cannot be read"):
        read_identities(tmp_path / "missing" / IDENTITY_FILE, np.array(fake["filenames"]))


def test_partition_in_another_order_is_matched_by_file_name(tmp_path, fake):
    lines = (fake["directory"] / PARTITION_FILE).read_text().splitlines()
    shuffled = tmp_path / PARTITION_FILE
    shuffled.write_text("\n".join(reversed(lines)) + "\n")
    np.testing.assert_array_equal(read_partition(shuffled, np.array(fake["filenames"])), fake["partition"])


def _attribute_lines(fake):
    return (fake["directory"] / ATTRIBUTE_FILE).read_text().splitlines()


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda lines: lines[:5] + [lines[5].replace(" 1", " 2", 1)] + lines[6:], "line 6: value '2'"),
        (lambda lines: lines[:7] + [lines[7].rsplit(" ", 1)[0]] + lines[8:], "line 8: 40 fields, expected 41"),
        (lambda lines: ["many"] + lines[1:], "not a count"),
        (lambda lines: lines[:-10], f"announces {N_IMAGES} images but {N_IMAGES - 10} rows"),
        (lambda lines: lines[:2], "no image rows"),
    ],
    ids=["bad-value", "missing-value", "bad-count", "truncated", "no-rows"],
)
def test_malformed_attribute_file_is_a_data_error_naming_it(tmp_path, fake, corrupt, expected):
    path = tmp_path / ATTRIBUTE_FILE
    path.write_text("\n".join(corrupt(_attribute_lines(fake))) + "\n")
    with pytest.raises(DataError) as error:
        read_attributes(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)
    assert CELEBA_URL in str(error.value)


def test_windows_line_endings_and_extra_spaces_are_read(tmp_path, fake):
    path = tmp_path / ATTRIBUTE_FILE
    path.write_text("\r\n".join(line.replace(" ", "   ") for line in _attribute_lines(fake)) + "\r\n")
    np.testing.assert_array_equal(read_attributes(path).values, fake["attributes"])


def test_missing_files_are_data_errors_naming_them(tmp_path, fake):
    with pytest.raises(DataError, match=f"{ATTRIBUTE_FILE}.*{CELEBA_URL}"):
        locate_celeba(tmp_path)
    (tmp_path / ATTRIBUTE_FILE).write_text((fake["directory"] / ATTRIBUTE_FILE).read_text())
    with pytest.raises(DataError, match=f"img_align_celeba: folder not found.*{CELEBA_URL}"):
        locate_celeba(tmp_path)
    (tmp_path / "img_align_celeba").mkdir()
    assert locate_celeba(tmp_path).partition_file is None  # the protocol split does not need it
    config = make_config(tmp_path, tmp_path / "cache", split="official", test_size=None)
    with pytest.raises(DataError, match=PARTITION_FILE):
        build_dataset(config)
    with pytest.raises(ConfigError, match="data.root"):
        locate_celeba(None)


def test_missing_or_foreign_image_is_a_data_error_naming_it(tmp_path, fake):
    image_dir = fake["directory"] / "img_align_celeba"
    with pytest.raises(DataError, match=r"999999\.jpg: image listed .* is missing"):
        load_image_cache(image_dir, ["000001.jpg", "999999.jpg"], size=32, cache_dir=tmp_path)
    Image.new("RGB", (250, 300)).save(tmp_path / "wild.jpg")  # an in-the-wild size, not aligned
    with pytest.raises(DataError, match=r"wild\.jpg: image is 250×300, expected .* 178×218"):
        load_image_cache(tmp_path, ["wild.jpg"], size=32, cache_dir=tmp_path / "cache")
    (tmp_path / "broken.jpg").write_bytes((image_dir / "000001.jpg").read_bytes()[:600])  # cut short
    for backend in ("pillow", *BATCH_DECODERS):
        with pytest.raises(DataError, match=r"broken\.jpg: not a readable JPEG"):
            load_image_cache(tmp_path, ["broken.jpg"], size=32, cache_dir=tmp_path / "cache", backend=backend)
    assert not list(tmp_path.glob("*.npy*")) and not list((tmp_path / "cache").iterdir())


def test_unknown_attribute_is_a_config_error_listing_names_closest_first(tmp_path, fake):
    with pytest.raises(ConfigError) as error:
        build_dataset(make_config(fake["root"], tmp_path, target="Smilling"))
    message = str(error.value)
    assert message.startswith("data.target: 'Smilling'")
    listed = message.split("closest first: ")[1].rstrip(".").split(", ")
    assert listed[0] == "Smiling" and sorted(listed) == sorted(ATTRIBUTE_NAMES)
    with pytest.raises(ConfigError, match="data.protected: 'Gender'"):
        build_dataset(make_config(fake["root"], tmp_path, protected="Gender"))
    with pytest.raises(ConfigError, match="data.minority_value: got 'Male'"):
        build_dataset(make_config(fake["root"], tmp_path, minority_value="Male"))


# ---------------------------------------------------------------------------------------------------
# The splits


def random_attributes(n=20_000, seed=3):
    """Targets and groups with CelebA-like rates: 42 % minority, positive rate 0.4 vs 0.55."""
    rng = np.random.default_rng(seed)
    minority = rng.random(n) < 0.42
    targets = (rng.random(n) < np.where(minority, 0.4, 0.55)).astype(np.int64)
    return targets, minority


def test_protocol_counts_balance_and_disjointness():
    targets, minority = random_attributes()
    split = protocol_split(targets, minority, share=0.1, train_size=2000, test_size=1000, seed=0)
    assert len(np.intersect1d(split.test_rows, split.train_rows)) == 0
    for group in (True, False):
        for label in (0, 1):
            in_test = (minority[split.test_rows] == group) & (targets[split.test_rows] == label)
            assert in_test.sum() == 250
    train_min, train_y = minority[split.train_rows], targets[split.train_rows]
    assert train_min.sum() == 200 and len(split.train_rows) == 2000
    assert train_y[train_min].sum() == 100 and train_y[~train_min].sum() == 900  # half positive per group
    assert split.info["test_count/group=minority/label=1"] == 250
    pool_min = split.info["pool_count/group=minority"]
    assert split.info["pool_count/group=minority/label=1"] * 2 == pool_min  # the pool is balanced too


def test_protocol_test_size_not_a_multiple_of_four_is_spread_over_the_first_cells():
    targets, minority = random_attributes()
    split = protocol_split(targets, minority, share=0.1, train_size=1000, test_size=1002, seed=0)
    t, m = targets[split.test_rows], minority[split.test_rows]
    assert [int(((m == g) & (t == y)).sum()) for g, y in ((1, 1), (1, 0), (0, 1), (0, 0))] == [251, 251, 250, 250]


def test_protocol_nests_across_shares_with_one_fixed_test_set():
    targets, minority = random_attributes()
    splits = [protocol_split(targets, minority, share=s, train_size=3000, test_size=800, seed=7)
              for s in (0.01, 0.05, 0.1, 0.3)]
    for smaller, larger in itertools.pairwise(splits):
        np.testing.assert_array_equal(smaller.test_rows, larger.test_rows)
        minority_small = smaller.train_rows[minority[smaller.train_rows]]
        minority_large = larger.train_rows[minority[larger.train_rows]]
        assert np.isin(minority_small, minority_large).all() and len(minority_small) < len(minority_large)
        # The majority shrinks as the minority grows, and is nested the other way round.
        majority_small = smaller.train_rows[~minority[smaller.train_rows]]
        majority_large = larger.train_rows[~minority[larger.train_rows]]
        assert np.isin(majority_large, majority_small).all()
    for split in splits:
        assert len(np.intersect1d(split.test_rows, split.train_rows)) == 0
    other_seed = protocol_split(targets, minority, share=0.1, train_size=3000, test_size=800, seed=8)
    assert not np.array_equal(other_seed.test_rows, splits[0].test_rows)


def test_protocol_infeasible_sizes_are_data_errors_with_the_feasible_range():
    targets, minority = random_attributes(n=2000)
    smallest_cell = min(((minority == g) & (targets == y)).sum() for g in (0, 1) for y in (0, 1))
    with pytest.raises(DataError, match=f"data.celeba.test_size <= {4 * smallest_cell}"):
        protocol_split(targets, minority, share=0.1, train_size=100, test_size=4 * smallest_cell + 4, seed=0)
    with pytest.raises(DataError, match="CelebA protocol: after the 400-image test set.*data.train_size"):
        protocol_split(targets, minority, share=0.1, train_size=5000, test_size=400, seed=0)


def random_people(minority, seed=5, sizes=(5, 36)):
    """A person per row: persons of ``sizes`` images (CelebA averages 20), each of one group, as
    CelebA's persons are of one sex; numbered at random."""
    rng = np.random.default_rng(seed)
    person = np.empty(len(minority), dtype=np.int64)
    count = 0
    for group in (True, False):
        rows = rng.permutation(np.flatnonzero(minority == group))
        cuts = np.cumsum(rng.integers(*sizes, size=len(rows)))
        cuts = cuts[cuts < len(rows)]
        for part in np.split(rows, cuts):
            person[part] = count
            count += 1
    return rng.permutation(count)[person] + 1


def _persons(people, rows):
    return {int(people[r]) for r in rows}


@pytest.mark.parametrize("seed", [0, 7, 11])
def test_protocol_with_identities_is_disjoint_by_person_and_still_nested(seed):
    targets, minority = random_attributes()
    people = random_people(minority)
    shares = (0.01, 0.05, 0.1, 0.3)
    splits = [protocol_split(targets, minority, share=s, train_size=3000, test_size=800, seed=seed,
                             identities=people) for s in shares]
    for share, split in zip(shares, splits):
        assert not _persons(people, split.test_rows) & _persons(people, split.train_rows)
        assert split.info["identity_disjoint"] is True
        assert len(split.train_rows) == 3000 and minority[split.train_rows].sum() == round(share * 3000)
        for group in (True, False):  # the protocol's balance is kept: 200 per test cell, half positive
            for label in (0, 1):
                assert ((minority[split.test_rows] == group) & (targets[split.test_rows] == label)).sum() == 200
            in_group = split.train_rows[minority[split.train_rows] == group]
            assert abs(2 * targets[in_group].sum() - len(in_group)) <= 1
    for smaller, larger in itertools.pairwise(splits):
        np.testing.assert_array_equal(smaller.test_rows, larger.test_rows)  # one test set for the sweep
        minority_small = smaller.train_rows[minority[smaller.train_rows]]
        minority_large = larger.train_rows[minority[larger.train_rows]]
        assert np.isin(minority_small, minority_large).all() and len(minority_small) < len(minority_large)
        majority_small = smaller.train_rows[~minority[smaller.train_rows]]
        majority_large = larger.train_rows[~minority[larger.train_rows]]
        assert np.isin(majority_large, majority_small).all()
    # Without identities the same call mixes persons across the split: the property is not free.
    by_image = protocol_split(targets, minority, share=0.1, train_size=3000, test_size=800, seed=seed)
    assert _persons(people, by_image.test_rows) & _persons(people, by_image.train_rows)
    other = protocol_split(targets, minority, share=0.1, train_size=3000, test_size=800, seed=seed + 1,
                           identities=people)
    assert not np.array_equal(other.test_rows, splits[0].test_rows)


def test_protocol_identity_counts_in_info_are_right():
    targets, minority = random_attributes()
    people = random_people(minority)
    split = protocol_split(targets, minority, share=0.2, train_size=2000, test_size=1000, seed=3, identities=people)
    test_set = set(split.test_rows.tolist())
    test_persons = _persons(people, split.test_rows)
    assert split.info["identities_test"] == len(test_persons)
    assert split.info["identities_train"] == len(_persons(people, split.train_rows))
    excluded = [r for r in range(len(people)) if people[r] in test_persons and r not in test_set]
    assert split.info["identity_overlap_excluded"] == len(excluded) > 0
    # The pool is everything else, balanced per group: nothing more than the test persons is lost.
    for group, name in ((True, "minority"), (False, "majority")):
        left = [r for r in range(len(people)) if minority[r] == group and people[r] not in test_persons]
        positives = sum(int(targets[r]) for r in left)
        assert split.info[f"pool_count/group={name}"] == 2 * min(positives, len(left) - positives)
    # Drawn by identity, the test set takes few persons and wastes few images; drawn image by image
    # (as without identities) and then excluding its persons would lose far more of the pool.
    by_image = protocol_split(targets, minority, share=0.2, train_size=2000, test_size=1000, seed=3)
    image_persons = _persons(people, by_image.test_rows)
    lost_by_image = sum(1 for r in range(len(people)) if people[r] in image_persons) - 1000
    assert len(test_persons) * 5 < len(image_persons)
    assert split.info["identity_overlap_excluded"] * 10 < lost_by_image


def test_protocol_without_identities_says_so():
    targets, minority = random_attributes(n=4000)
    split = protocol_split(targets, minority, share=0.1, train_size=500, test_size=200, seed=0)
    assert split.info["identity_disjoint"] is False
    assert not {"identities_test", "identities_train", "identity_overlap_excluded"} & set(split.info)


def test_protocol_infeasible_after_identity_exclusion_names_the_largest_feasible_value():
    targets, minority = random_attributes(n=3000)
    people = random_people(minority)
    kwargs = {"test_size": 400, "seed": 0, "identities": people}
    pool = protocol_split(targets, minority, share=None, train_size=None, **kwargs).train_rows
    without_identities = protocol_split(targets, minority, share=None, train_size=None, test_size=400, seed=0)
    assert len(pool) < len(without_identities.train_rows)  # the exclusion shrank the pool
    # A train size that fits the pool without the exclusion but not with it.
    with pytest.raises(DataError, match=r"after the 400-image test set \(after leaving out \d+ more images of the "
                                        r"test set's \d+ identities\)") as error:
        protocol_split(targets, minority, share=None, train_size=len(pool) + 1, **kwargs)
    largest = int(re.search(r"Use data.train_size <= (\d+)", str(error.value)).group(1))
    assert largest == len(pool)
    assert len(protocol_split(targets, minority, share=None, train_size=largest, **kwargs).train_rows) == largest
    # A share too large for the minority left at a fixed train size: the named share is feasible.
    n_min = int(minority[pool].sum())
    train_size = n_min + 200
    with pytest.raises(DataError, match="largest feasible share at this train size is") as error:
        protocol_split(targets, minority, share=0.9, train_size=train_size, **kwargs)
    share = float(re.search(r"largest feasible share at this train size is ([0-9.]+)", str(error.value)).group(1))
    chosen = protocol_split(targets, minority, share=share, train_size=train_size, **kwargs).train_rows
    assert minority[chosen].sum() <= n_min and minority[chosen].sum() >= n_min - 1


def test_official_split_checks_identities_when_it_has_them(fake):
    attributes, partition, people = fake["attributes"], fake["partition"], fake["identities"].copy()
    targets = (attributes[:, ATTRIBUTE_NAMES.index("Smiling")] == 1).astype(np.int64)
    minority = attributes[:, ATTRIBUTE_NAMES.index("Male")] == 1
    kwargs = {"share": 0.2, "train_size": 100, "seed": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CelebA's (and the fake's) partition is disjoint: no warning
        split = official_split(targets, minority, partition, identities=people, **kwargs)
    assert split.info["identity_disjoint"] is True and split.info["identity_overlap"] == 0
    assert split.info["identities_test"] == len(_persons(people, np.flatnonzero(partition == 2)))
    assert split.info["identities_train"] == len(_persons(people, split.train_rows))
    assert official_split(targets, minority, partition, **kwargs).info["identity_disjoint"] == \
        "by CelebA's construction"
    # Two test persons relabelled as training persons: a copy whose files do not belong together.
    train_persons = sorted(_persons(people, np.flatnonzero(partition == 0)))
    test_persons = sorted(_persons(people, np.flatnonzero(partition == 2)))
    for test_person, train_person in zip(test_persons[:2], train_persons[:2]):
        people[people == test_person] = train_person
    overlap = _persons(people, np.flatnonzero(partition == 0)) & _persons(people, np.flatnonzero(partition == 2))
    assert len(overlap) == 2
    with pytest.warns(UserWarning, match=r"official split: 2 identities .* both the training partition \(0\) and "
                                         r"the test partition \(2\)"):
        split = official_split(targets, minority, partition, identities=people, **kwargs)
    assert split.info["identity_disjoint"] is False and split.info["identity_overlap"] == 2


def test_official_split_uses_the_partition(fake):
    attributes = fake["attributes"]
    targets = (attributes[:, ATTRIBUTE_NAMES.index("Smiling")] == 1).astype(np.int64)
    minority = attributes[:, ATTRIBUTE_NAMES.index("Male")] == 1
    split = official_split(targets, minority, fake["partition"], share=0.2, train_size=100, seed=0)
    np.testing.assert_array_equal(split.test_rows, np.flatnonzero(fake["partition"] == 2))
    assert (fake["partition"][split.train_rows] == 0).all()
    assert minority[split.train_rows].sum() == 20 and len(split.train_rows) == 100


# ---------------------------------------------------------------------------------------------------
# The image cache


def test_cache_matches_reference_and_is_built_once(tmp_path, fake, monkeypatch):
    image_dir = fake["directory"] / "img_align_celeba"
    names = fake["filenames"][:40]
    first = load_image_cache(image_dir, names, size=64, cache_dir=tmp_path, workers=2, chunk_size=8,
                             progress_mode="never")
    assert first.built and first.images.shape == (40, 3, 64, 64) and first.images.dtype == np.uint8
    for i in (0, 17, 39):
        difference = np.abs(first.images[i].astype(int) - reference_image(image_dir / names[i], 64))
        assert difference.max() <= 1

    # The second call must not decode at all: make decoding impossible and ask again.
    def no_decoding(*args):
        raise AssertionError("the cached images were decoded again")

    monkeypatch.setattr(celeba_cache, "preprocess_image", no_decoding)
    second = load_image_cache(image_dir, names, size=64, cache_dir=tmp_path)
    assert not second.built and second.path == first.path
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(second.images, first.images)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name,
                                                           first.path.name + CHECKSUM_SUFFIX]
    # Another size or another list of images is another file.
    monkeypatch.undo()
    assert load_image_cache(image_dir, names, size=32, cache_dir=tmp_path).path != first.path
    assert load_image_cache(image_dir, names[:39], size=64, cache_dir=tmp_path).path != first.path


def test_interrupted_build_leaves_nothing_a_later_run_trusts(tmp_path, fake, monkeypatch):
    image_dir = fake["directory"] / "img_align_celeba"
    names = fake["filenames"][:80]
    decode = celeba_cache.preprocess_image
    calls = []

    def interrupted(path, size):  # Ctrl-C half way through
        calls.append(path)
        if len(calls) == 40:
            raise KeyboardInterrupt
        return decode(path, size)

    monkeypatch.setattr(celeba_cache, "preprocess_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image_cache(image_dir, names, size=64, cache_dir=tmp_path, workers=2, chunk_size=8)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the temporary file
    monkeypatch.undo()
    rebuilt = load_image_cache(image_dir, names, size=64, cache_dir=tmp_path)
    assert rebuilt.built
    np.testing.assert_array_equal(rebuilt.images[79], decode(image_dir / names[79], 64))


@pytest.mark.parametrize("damage", ["cut-short", "one-byte-flipped", "checksum-missing"])
def test_a_damaged_cache_file_is_rebuilt(tmp_path, fake, capsys, damage):
    image_dir = fake["directory"] / "img_align_celeba"
    names = fake["filenames"][:10]
    good = load_image_cache(image_dir, names, size=32, cache_dir=tmp_path)
    expected = np.array(good.images)
    if damage == "cut-short":  # e.g. a copy cut short
        good.path.write_bytes(good.path.read_bytes()[:1000])
    elif damage == "one-byte-flipped":  # the shape is right; only the checksum can tell
        data = bytearray(good.path.read_bytes())
        data[len(data) // 2] ^= 0x01
        good.path.write_bytes(bytes(data))
    else:
        good.path.with_name(good.path.name + CHECKSUM_SUFFIX).unlink()
    capsys.readouterr()
    again = load_image_cache(image_dir, names, size=32, cache_dir=tmp_path)
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: {good.path}: ") and CACHE_REBUILT in warning
    if damage == "one-byte-flipped":
        assert CACHE_CHECKSUM_MISMATCH in warning
    assert again.built
    np.testing.assert_array_equal(again.images, expected)
    assert not load_image_cache(image_dir, names, size=32, cache_dir=tmp_path).built  # verified now


@pytest.mark.parametrize("backend", list(BATCH_DECODERS))
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_batched_backends_match_pillow(tmp_path, fake, device, backend):
    """The GPU path's code (batched decode_jpeg, crop_resize), on the CPU and, with a GPU, nvJPEG."""
    image_dir = fake["directory"] / "img_align_celeba"
    names = fake["filenames"][:24]
    pillow = load_image_cache(image_dir, names, size=64, cache_dir=tmp_path / "a", backend="pillow")
    tv = load_image_cache(image_dir, names, size=64, cache_dir=tmp_path / "b", backend=backend,
                          device=device, chunk_size=10)
    difference = np.abs(pillow.images.astype(int) - tv.images.astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.5


def test_torchcodec_is_installed_and_preferred():
    # requirements.txt installs TorchCodec; torchvision's decode_jpeg (deprecated) comes after it
    # while it exists.
    available = available_batch_decoders()
    assert available[0] == "torchcodec"
    assert set(available) <= set(BATCH_DECODERS)


def test_default_backend_is_pillow_on_the_cpu_and_the_first_batched_decoder_on_cuda():
    cuda = torch.device("cuda")
    assert default_backend(torch.device("cpu")) == "pillow"
    assert default_backend(cuda, ["torchcodec", "torchvision"]) == "torchcodec"
    assert default_backend(cuda, ["torchvision"]) == "torchvision"
    with pytest.warns(UserWarning, match="pip install torchcodec"):
        assert default_backend(cuda, []) == "pillow"


def test_a_batch_the_gpu_decoder_refuses_is_decoded_with_pillow(tmp_path, fake, monkeypatch):
    """nvJPEG lacks some JPEG variants that Pillow reads. Every variant CelebA could come in decodes
    on the CPU, so the refusal is injected: the decoder fails on the second batch only."""
    import torchvision.io

    image_dir = fake["directory"] / "img_align_celeba"
    names = fake["filenames"][:24]
    real_decode, calls = torchvision.io.decode_jpeg, []

    def refuse_second_batch(data, **kwargs):
        calls.append(len(data))
        if len(calls) == 2:
            raise RuntimeError("nvjpegDecodeBatched failed: unsupported JPEG\nmore detail")
        return real_decode(data, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuse_second_batch)
    with pytest.warns(UserWarning, match=r"decode_jpeg failed on the batch from .*unsupported JPEG\); "
                                         r"decoded it with Pillow"):
        tv = load_image_cache(image_dir, names, size=64, cache_dir=tmp_path / "tv",
                              backend="torchvision", chunk_size=10)
    assert calls == [10, 10, 4]
    pillow = load_image_cache(image_dir, names, size=64, cache_dir=tmp_path / "pil", backend="pillow")
    np.testing.assert_array_equal(tv.images[10:20], pillow.images[10:20])  # Pillow's own pixels
    assert np.abs(tv.images.astype(int) - pillow.images.astype(int)).max() <= 2


def test_crop_resize_takes_the_central_square():
    image = torch.zeros(1, 3, 218, 178, dtype=torch.uint8)
    image[:, :, 20:198, :] = 200  # the central square; the 20-row bands above and below stay black
    np.testing.assert_array_equal(crop_resize(image, 64).numpy(), 200)


# ---------------------------------------------------------------------------------------------------
# The bundle and the transform


@pytest.mark.parametrize("which", ["standard", "torchvision"])
def test_bundle_of_the_protocol(tmp_path, fake, fake_torchvision, which):
    written = fake if which == "standard" else fake_torchvision
    config = make_config(written["root"], tmp_path, train_size=60, test_size=20)
    bundle = build_dataset(config)
    assert bundle.x_train.shape == (60, 3, 64, 64) and bundle.x_train.dtype == np.uint8
    assert bundle.x_test.shape == (20, 3, 64, 64)
    assert bundle.input_shape == (3, 64, 64) and bundle.transform is celeba_transform
    assert bundle.train_count_by_group == {"minority": 12, "majority": 48}
    assert bundle.y_train[bundle.minority_train].sum() == 6 and bundle.y_train[~bundle.minority_train].sum() == 24
    assert bundle.info["test_count/group=minority/label=1"] == 5 and bundle.info["cache/built"]

    # The arrays are the split's rows of the attribute file, in order, with their pixels.
    attributes = written["attributes"]
    targets = (attributes[:, ATTRIBUTE_NAMES.index("Smiling")] == 1).astype(np.int64)
    minority = attributes[:, ATTRIBUTE_NAMES.index("Male")] == 1
    split = protocol_split(targets, minority, share=0.2, train_size=60, test_size=20, seed=0,
                           identities=written["identities"])  # the fake ships identity_CelebA.txt
    np.testing.assert_array_equal(bundle.y_test, targets[split.test_rows])
    np.testing.assert_array_equal(bundle.minority_train, minority[split.train_rows])
    people = written["identities"]
    assert bundle.info["identity_disjoint"] is True
    assert not _persons(people, split.test_rows) & _persons(people, split.train_rows)
    assert bundle.info["identities_test"] == len(_persons(people, split.test_rows))
    assert bundle.info["identities_train"] == len(_persons(people, split.train_rows))
    test_persons = _persons(people, split.test_rows)
    assert bundle.info["identity_overlap_excluded"] == sum(1 for person in people if person in test_persons) - 20
    image_dir = written["directory"] / "img_align_celeba"
    first_train = written["filenames"][split.train_rows[0]]
    assert np.abs(bundle.x_train[0].astype(int) - reference_image(image_dir / first_train, 64)).max() <= 1

    assert not build_dataset(config).info["cache/built"]  # the second run maps the same file


def test_bundles_across_shares_share_the_test_set(tmp_path, fake):
    bundles = [build_dataset(make_config(fake["root"], tmp_path, minority_share=s)) for s in (0.1, 0.3)]
    np.testing.assert_array_equal(bundles[0].x_test, bundles[1].x_test)
    np.testing.assert_array_equal(bundles[0].y_test, bundles[1].y_test)
    assert [b.train_count_by_group["minority"] for b in bundles] == [10, 30]
    assert bundles[0].info["selection_sha256"] != bundles[1].info["selection_sha256"]


def test_bundle_without_identity_file_warns_and_says_so(tmp_path):
    written = make_fake_celeba(tmp_path / "celeba", n_images=300, seed=2, identities=False)
    with pytest.warns(UserWarning) as caught:
        bundle = build_dataset(make_config(written["root"], tmp_path / "cache"))
    messages = [str(w.message) for w in caught if IDENTITY_FILE in str(w.message)]
    assert len(messages) == 1
    assert "disjoint by image only" in messages[0]
    assert f"Place {IDENTITY_FILE} from CelebA's Anno folder" in messages[0]
    assert f"next to {ATTRIBUTE_FILE}" in messages[0] and str(written["directory"]) in messages[0]
    assert bundle.info["identity_disjoint"] is False and "identities_test" not in bundle.info
    # The same copy with the file: no warning, and the split is disjoint by person.
    persons = make_fake_celeba(tmp_path / "celeba", n_images=300, seed=2)["identities"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = build_dataset(make_config(written["root"], tmp_path / "cache"))
    assert not [w for w in caught if IDENTITY_FILE in str(w.message)]
    assert bundle.info["identity_disjoint"] is True and bundle.info["identities_test"] >= 4
    # Disjoint sets of persons cannot hold more persons together than the copy has.
    assert bundle.info["identities_test"] + bundle.info["identities_train"] <= len(np.unique(persons))
    # A damaged identity file stops the run rather than falling back to the image split.
    lines = (written["directory"] / IDENTITY_FILE).read_text().splitlines()
    lines[11] = lines[11].split()[0]
    (written["directory"] / IDENTITY_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{IDENTITY_FILE}, line 12: 1 fields"):
        build_dataset(make_config(written["root"], tmp_path / "cache"))


def test_official_bundle(tmp_path, fake):
    bundle = build_dataset(make_config(fake["root"], tmp_path, split="official", test_size=None))
    assert len(bundle.x_test) == (fake["partition"] == 2).sum() == 30
    assert bundle.info["identity_disjoint"] is True and bundle.info["identity_overlap"] == 0
    with pytest.raises(ConfigError, match="data.celeba.test_size"):
        build_dataset(make_config(fake["root"], tmp_path, split="official", test_size=40))


def test_the_shipped_params_file_builds_on_fake_data(tmp_path, fake):
    config = load_validated("utils/params_celeba.yaml", [
        f"data.root={fake['root']}", f"data.celeba.cache_dir={tmp_path}", "data.train_size=100",
        "data.celeba.test_size=40", "data.celeba.image_size=64", "training.batch_size=8",
    ])
    bundle = build_dataset(config)
    assert bundle.train_count_by_group == {"minority": 10, "majority": 90}  # share 0.1, men the minority
    assert bundle.minority_test.sum() == 20


def test_transform_range_and_flip_only_in_training():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    images[0] = 0
    images[1] = 255
    evaluated = celeba_transform(images, False)
    assert evaluated.dtype == torch.float32
    assert evaluated.min() == -1.0 and evaluated.max() == 1.0
    torch.testing.assert_close(evaluated, images.float() / 127.5 - 1.0)
    torch.testing.assert_close(celeba_transform(images, False), evaluated)  # no randomness at evaluation

    trained = celeba_transform(images, True)
    flipped = torch.tensor([torch.equal(t, e.flip(-1)) for t, e in zip(trained[2:], evaluated[2:])])
    kept = torch.tensor([torch.equal(t, e) for t, e in zip(trained[2:], evaluated[2:])])
    assert (flipped | kept).all()  # each example is either left alone or mirrored left-right
    assert 10 < int(flipped.sum()) < 52  # about half of the 62 random images are mirrored
    assert trained.min() >= -1.0 and trained.max() <= 1.0
