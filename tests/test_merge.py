import numpy as np
import pytest

from pipeline.stages.merge import InstanceMask, MergeConfig, decode_rle, encode_rle, merge_instances
from taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy("ovrsis95k")


def box_mask(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def instance(category, mask, det=0.9, seg=0.9):
    ys, xs = np.nonzero(mask)
    return InstanceMask(category, mask, det, seg, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_rle_round_trip_odd_sizes():
    rng = np.random.default_rng(1)
    for shape in [(37, 53), (1, 1), (256, 255)]:
        for mask in (rng.random(shape) > 0.5, np.zeros(shape, bool), np.ones(shape, bool)):
            rle = encode_rle(mask)
            assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
            assert np.array_equal(decode_rle(rle), mask)


def test_confidence_wins_and_conflict_is_recorded(taxonomy):
    valid = np.ones((20, 20), bool)
    road = instance("road", box_mask(valid.shape, 0, 20, 0, 10), det=0.5)
    car = instance("vehicle", box_mask(valid.shape, 5, 10, 5, 15), det=0.9)
    semantic, records, conflicts = merge_instances([road, car], taxonomy, valid)
    assert (semantic[5:10, 5:15] == taxonomy.index_of("vehicle")).all()
    assert semantic[0, 0] == taxonomy.index_of("road") and semantic[0, 15] == 34  # unclaimed: the background class
    (conflict,) = conflicts
    assert (conflict.winner_category, conflict.loser_category, conflict.pixels, conflict.rule) == (
        "vehicle",
        "road",
        25,
        "confidence",
    )
    assert records[0].area == 200 - 25 and records[1].area == 50


def test_ties_go_to_smaller_area_then_taxonomy_order(taxonomy):
    valid = np.ones((20, 20), bool)
    big = instance("water", box_mask(valid.shape, 0, 20, 0, 20))
    small = instance("ship", box_mask(valid.shape, 2, 6, 2, 6))
    semantic, _, conflicts = merge_instances([big, small], taxonomy, valid)
    assert semantic[3, 3] == taxonomy.index_of("ship") and conflicts[0].rule == "smaller area"
    a = instance("tree", box_mask(valid.shape, 0, 5, 0, 5))
    b = instance("grass", box_mask(valid.shape, 0, 5, 0, 5))
    semantic, _, conflicts = merge_instances([b, a], taxonomy, valid)
    assert (
        semantic[0, 0] == taxonomy.index_of("tree") and conflicts[0].rule == "taxonomy order"
    )  # tree (27) before grass (28)


def test_min_area_holes_nodata_and_background(taxonomy):
    valid = np.ones((30, 30), bool)
    valid[:, 25:] = False
    ring = box_mask(valid.shape, 0, 20, 0, 20)
    ring[5:15, 5:15] = False
    speck = box_mask(valid.shape, 25, 27, 25, 27)
    semantic, records, _ = merge_instances(
        [instance("building", ring), instance("vehicle", box_mask(valid.shape, 22, 24, 0, 2))],
        taxonomy,
        valid,
        MergeConfig(min_area=8, background="ignore"),
    )
    assert semantic[10, 10] == 255 and records[1].dropped == "area 4 < min_area 8"
    filled, _, _ = merge_instances([instance("building", ring)], taxonomy, valid, MergeConfig(fill_holes=True))
    assert filled[10, 10] == taxonomy.index_of("building")
    for background in ("auto", "class"):  # auto is the default
        with_class, _, _ = merge_instances(
            [instance("building", speck)], taxonomy, valid, MergeConfig(min_area=0, background=background)
        )
        assert with_class[0, 0] == 34 and with_class[0, 29] == 255  # unclaimed -> background class; nodata -> 255
    isaid = load_taxonomy("isaid")  # no background class: auto leaves unclaimed pixels 255, class refuses
    assert (merge_instances([], isaid, valid)[0] == 255).all()
    with pytest.raises(ValueError, match="propose: false"):
        merge_instances([], isaid, valid, MergeConfig(background="class"))
