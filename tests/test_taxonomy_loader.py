from pathlib import Path

import pytest

from taxonomy import TaxonomyError, bundled_taxonomies, load_taxonomy
from taxonomy.loader import load_lexicon

EXPECTED_SIZES = {
    "ovrsis95k": 35,
    "isaid": 15,
    "dlrsd": 17,
    "potsdam": 6,
    "vaihingen": 6,
    "udd5": 5,
    "loveda": 7,
    "uavid": 7,
    "vdd": 7,
    "flair": 12,
    "openearthmap": 9,
    "building": 2,
    "road": 2,
    "flood": 2,
    "domains": 5,
}


def test_every_bundled_vocabulary_loads_with_its_size():
    assert set(bundled_taxonomies()) == set(EXPECTED_SIZES)
    for name, size in EXPECTED_SIZES.items():
        taxonomy = load_taxonomy(name)
        assert len(taxonomy) == size, name
        assert taxonomy.version.startswith("sha256:")
        assert [c.index for c in taxonomy.categories] == list(range(size))


def test_ovrsis95k_official_order_and_background_class():
    taxonomy = load_taxonomy("ovrsis95k")
    assert taxonomy.names[:3] == ["airplane", "airport", "baseball field"]
    assert taxonomy.index_of("building") == 24
    assert taxonomy.index_of("intersection") == 33
    last = taxonomy.categories[34]
    assert last.name == "unlabeled areas, background, clutter" and not last.propose
    assert last.prompt_name == "unlabeled areas"
    assert all(c.description for c in taxonomy.categories)
    assert "running track" in taxonomy["ground track field"].synonyms


def test_domains_are_the_papers_five():
    assert load_taxonomy("domains").names == ["town", "industrial", "forest", "waterfront", "wasteland"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


def test_version_ignores_formatting_but_not_content(tmp_path):
    a = write(tmp_path, "name: x\ncategories:\n  - name: car\n  - name: road\n")
    version = load_taxonomy(a).version
    a.write_text("# a comment\nname: x\ncategories: [{name: car}, {name: road}]\n")
    assert load_taxonomy(a).version == version
    a.write_text("name: x\ncategories: [{name: road}, {name: car}]\n")  # order fixes mask ids
    assert load_taxonomy(a).version != version


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: x\ncategories:\n  - name: car\n  - name: road\n  - name: car\n",
            r":5: duplicate category 'car' \(first at line 3\)",
        ),
        ("name: x\ncategories:\n  - name: car\n  - name: '  '\n", r":4: category #1 has an empty or missing name"),
        (
            "name: x\ncategories:\n  - name: car\n    synonyms: [lane]\n  - name: road\n    synonyms: [lane]\n",
            r":5: synonym 'lane' of 'road' clashes with category 'car' \(line 3\)",
        ),
        (
            "name: x\ncategories:\n  - name: car\n  - name: road\n    synonyms: [Car]\n",
            r":4: synonym 'Car' of 'road' clashes",
        ),
        ("name: x\ncategories:\n  - name: car\n    synonyms: auto\n", r":3: synonyms of 'car' must be a list"),
        ("name: x\ncategories: []\n", r":1: 'categories' must be a non-empty list"),
        ("categories:\n  - name: car\n", r":1: 'name' must be a non-empty string"),
        ("name: x\ncategories:\n  - name: car\n   - name: road\n", r":4: invalid YAML"),
        ("name: x\ncategories:\n  - name: car\n    propose: maybe\n", r":3: 'propose' of 'car' must be true or false"),
    ],
)
def test_each_validation_error_names_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(TaxonomyError, match=str(path).replace(".", r"\.") + message):
        load_taxonomy(path)


def test_indicators_are_kept_and_versioned(tmp_path):
    path = write(tmp_path, "name: x\ncategories:\n  - name: town\n    indicators: [building]\n")
    taxonomy = load_taxonomy(path)
    assert taxonomy["town"].extra == {"indicators": ["building"]}
    path.write_text("name: x\ncategories:\n  - name: town\n    indicators: [road]\n")
    assert load_taxonomy(path).version != taxonomy.version


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: x\nsource: mine\ncategories:\n  - name: car\n",
            r":2: unknown key 'source' in taxonomy \(known keys: name,",
        ),
        (
            "name: x\ncategories:\n  - name: car\n\n    synonym: [auto]\n",
            r":5: unknown key 'synonym' in category 'car'",
        ),
        ("name: x\ncategories:\n  - name: car\n    colour: red\n", r":4: unknown key 'colour' in category 'car'"),
    ],
)
def test_unknown_keys_are_errors_naming_the_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(TaxonomyError, match=str(path).replace(".", r"\.") + message):
        load_taxonomy(path)


def test_ignore_index_is_fixed_at_255(tmp_path):
    path = write(tmp_path, "name: x\nignore_index: 200\ncategories: [car, road]\n")
    with pytest.raises(
        TaxonomyError, match=r"t\.yaml:2: ignore_index is 200, but unlabeled pixels are 255 .* remove the line"
    ):
        load_taxonomy(path)
    path.write_text("name: x\nignore_index: 255\ncategories: [car, road]\n")
    assert load_taxonomy(path).ignore_index == 255 == load_taxonomy("ovrsis95k").ignore_index


def test_too_many_categories_says_why_in_plain_words(tmp_path):
    names = "".join(f"  - class {i}\n" for i in range(300))
    path = write(tmp_path, f"name: big\ncategories:\n{names}")
    with pytest.raises(TaxonomyError) as raised:
        load_taxonomy(path)
    assert str(raised.value) == (
        f"{path}:2: taxonomy 'big' has 300 categories; masks are uint8, so a taxonomy holds "
        "at most 255 (ids 0-254; 255 marks unlabeled pixels)"
    )
    path.write_text(f"name: big\ncategories:\n{''.join(f'  - class {i}{chr(10)}' for i in range(255))}")
    assert len(load_taxonomy(path)) == 255


def test_unknown_name_lists_bundled_taxonomies():
    with pytest.raises(TaxonomyError, match="bundled: .*ovrsis95k"):
        load_taxonomy("no-such-vocabulary")
    with pytest.raises(TaxonomyError, match="not found"):
        load_taxonomy("missing.yaml")


def test_lexicon_is_lowercase_lists():
    lexicon = load_lexicon()
    assert lexicon["boat"][0] == "ship"
    assert all(isinstance(v, list) and k == k.lower() for k, v in lexicon.items())


def test_mask_values_outside_the_contract_are_named():
    import numpy as np

    from taxonomy.masks import IGNORE_INDEX, values_outside

    mask = np.array([[0, 1, IGNORE_INDEX], [2, 7, 254]], dtype=np.uint8)
    assert values_outside(mask, classes=3) == [7, 254]
    assert values_outside(mask[:, :1], classes=3) == []
