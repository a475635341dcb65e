import numpy as np
import pytest
from scipy import sparse

from pipeline.dataset.balance_report import write_report
from pipeline.dataset.records import Domain, Instance, Quarantine, SourceInfo, TileRecord, Window
from pipeline.dataset.selection import SelectionConfig, select, select_tiles, water_fill_quota
from pipeline.dataset.tile_table import TileTable

DOMAINS = ("town", "industrial", "forest", "waterfront", "wasteland")


def tile(key, categories, domain="town", quarantined=False):
    source = SourceInfo(
        path="x",
        sha256="",
        window=Window(row_off=0, col_off=0, height=8, width=8),
        band_mapping=[1, 1, 1],
        stretch="none",
        dtype="uint8",
        raster_width=8,
        raster_height=8,
    )
    instances = [Instance(category=c, box=[0, 0, 1, 1], detector_score=1.0, area=10) for c in categories]
    return TileRecord(
        key=key,
        source=source,
        domain=Domain(name=domain, score=1),
        instances=instances,
        quarantine=Quarantine(stage="x", reason="y") if quarantined else None,
    )


def corpus(tiles=6000, categories=20, seed=0, order=None):
    """Three categories in most tiles, a Zipf tail, five domains of unequal size."""
    rng = np.random.default_rng(seed)
    rate = np.r_[[0.85, 0.7, 0.5], 0.6 / np.arange(1, categories - 2) ** 1.6]
    present = rng.random((tiles, categories)) < rate
    pixels = sparse.csr_matrix(present * rng.integers(1, 1000, size=present.shape))
    domain = rng.choice(5, size=tiles, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    keys = [f"t{i:05d}" for i in range(tiles)]
    if order is not None:
        keys, pixels, domain = [keys[i] for i in order], pixels[order], domain[order]
    return TileTable.build(keys, [f"c{j}" for j in range(categories)], DOMAINS, pixels, domain)


@pytest.fixture(scope="module")
def table():
    return corpus()


def test_target_respected_and_quota_floor_kept(table):
    result = select(table, SelectionConfig(target_tiles=1500))
    available, kept = table.category_tiles(), table.category_tiles(result.selected)
    assert result.count == 1500 and result.quota == water_fill_quota(available, 1500)
    assert (kept >= np.minimum(available, result.quota)).all()
    # frequent categories are thinned only through tiles that carry no under-quota category
    dropped = table.incidence[~result.selected]
    under = kept < result.quota
    assert under.any() and dropped[:, np.flatnonzero(under)].nnz == 0


def test_explicit_quota_lowers_the_floor_and_balances_better_than_random(table):
    result = select(table, SelectionConfig(target_tiles=1500, quota_per_category=40))
    assert (
        result.quota == 40 and (table.category_tiles(result.selected) >= np.minimum(table.category_tiles(), 40)).all()
    )
    rng = np.random.default_rng(0)
    randomly = np.zeros(len(table), bool)
    randomly[rng.choice(len(table), 1500, replace=False)] = True

    def entropy(rows):
        p = table.category_tiles(rows) / table.category_tiles(rows).sum()
        return -(p[p > 0] * np.log(p[p > 0])).sum()

    assert entropy(result.selected) > entropy(randomly) + 0.2
    domains = table.domain_tiles(result.selected)
    assert domains.min() / domains.max() > 2 * table.domain_tiles().min() / table.domain_tiles().max()  # spread evened


def test_deterministic_whatever_the_input_order(table):
    shuffled = corpus(order=np.random.default_rng(5).permutation(len(table)))
    a = table.keys[select(table, SelectionConfig(target_tiles=900)).selected]
    b = shuffled.keys[select(shuffled, SelectionConfig(target_tiles=900)).selected]
    assert a.tolist() == b.tolist()


def test_all_and_small_corpora_keep_everything_labelled():
    tiles = [tile("a", ["building"]), tile("b", []), tile("c", ["road"], quarantined=True), tile("d", ["ship"])]
    assert [t.key for t in select_tiles(tiles)] == ["a", "d"]  # fewer tiles than the default target
    assert [t.key for t in select_tiles(tiles, SelectionConfig(target_tiles="all", drop_unlabeled=False))] == [
        "a",
        "b",
        "d",
    ]
    with pytest.raises(ValueError, match="target_tiles"):
        SelectionConfig(target_tiles=0)


def test_rare_tiles_win_over_the_frequent_ones():
    tiles = [tile(f"b{i}", ["building"]) for i in range(10)] + [tile("s1", ["ship", "building"]), tile("s2", ["ship"])]
    kept = {t.key for t in select_tiles(tiles, SelectionConfig(target_tiles=4))}
    assert {"s1", "s2"} <= kept and len(kept) == 4


def test_report_before_and_after(tmp_path, table):
    result = select(table, SelectionConfig(target_tiles=1500))
    text = write_report(tmp_path, table, result).read_text()
    assert f"{len(table)} candidate tiles, 1500 selected (target reached with a quota of {result.quota}" in text
    assert "normalised entropy of tiles per category" in text and "max/min tiles per category" in text
    assert "| categories below min(available, quota) | - | none |" in text
    assert "| waterfront |" in text and "| c19 |" in text
    for chart in ("categories.png", "pixels.png", "domains.png"):
        assert (tmp_path / chart).read_bytes()[:4] == b"\x89PNG"


def test_unused_taxonomy_columns_do_not_skew_the_balance():
    """The demo's case: twelve tiles, tree on all, grass on eleven, road on five, bareland on one, and
    the build passes all 35 taxonomy names. Dropping two tiles must drop tree+grass tiles, not road."""
    rows = [["grass", "road", "tree"]] * 5 + [["grass", "tree"]] * 6 + [["bareland", "tree"]]
    tiles = [tile(f"t{i:02d}", categories) for i, categories in enumerate(rows)]
    names = [f"unused {j}" for j in range(31)] + ["bareland", "grass", "road", "tree"]
    table = TileTable.from_records(tiles, names)
    result = select(table, SelectionConfig(target_tiles=10))
    kept = dict(zip(table.categories, table.category_tiles(result.selected).tolist()))
    assert kept["road"] == 5 and kept["bareland"] == 1 and kept["tree"] == 10
