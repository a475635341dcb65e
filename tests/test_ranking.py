"""Ranking signals for the next review queue (audit/ranking.py, issue 33 item 2)."""

from __future__ import annotations

import numpy as np

from audit import ranking


def test_tile_iou_and_disagreement():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    assert ranking.tile_iou(a, b) == 1.0 and ranking.disagreement(a, b) == 0.0
    b[:2] = 1  # half the tile relabelled: class 0 IoU 8/16, class 1 IoU 0/8
    assert ranking.tile_iou(a, b) == 0.25 and ranking.disagreement(a, b) == 0.75
    b[:2] = 255  # not labelled in one of them: left out, the rest agrees
    assert ranking.tile_iou(a, b) == 1.0
    assert ranking.tile_iou(np.full((2, 2), 255, np.uint8), np.zeros((2, 2), np.uint8)) == 1.0


def test_uncertainty_is_highest_where_the_model_does_not_know():
    certain = np.zeros((3, 2, 2))
    certain[1] = 1.0
    unsure = np.full((3, 2, 2), 1 / 3)
    assert ranking.uncertainty(certain) < 1e-9
    assert abs(ranking.uncertainty(unsure) - np.log(3)) < 1e-9


def test_low_confidence_takes_the_weakest_instance():
    assert ranking.low_confidence([0.9, 0.4, 0.8]) == 0.6
    assert ranking.low_confidence([]) == 0.0


def test_ranks_share_ties_and_combined_averages_ranks_not_scales():
    assert ranking.ranks({"a": 1.0, "b": 5.0, "c": 5.0}) == {"a": 0.0, "b": 0.75, "c": 0.75}
    scaled = {"a": 1000.0, "b": 2000.0, "c": 3000.0}  # a large scale must not dominate
    small = {"a": 0.3, "b": 0.2, "c": 0.1}
    assert ranking.combined(scaled, small) == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert ranking.combined(scaled, {"a": 0.1, "b": 0.2}) == {"a": 0.0, "b": 1.0}  # keys both score


def test_queue_order_is_highest_first_and_reproducible():
    assert ranking.queue_order({"b": 0.5, "a": 0.5, "c": 0.9}, 2) == ["c", "a"]
    keys = [f"t{i}" for i in range(50)]
    first, again = ranking.random_scores(keys, 7), ranking.random_scores(keys, 7)
    assert first == again and ranking.random_scores(keys, 8) != first
