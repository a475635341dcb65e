from pipeline.records import Domain, Instance, Quarantine, SourceInfo, TileRecord, Window
from pipeline.selection import SelectionConfig, select_tiles, statistics, write_report


def tile(key, categories, domain="town", quarantined=False):
    source = SourceInfo(path="x", sha256="", window=Window(row_off=0, col_off=0, height=8, width=8),
                        band_mapping=[1, 1, 1], stretch="none", dtype="uint8", raster_width=8, raster_height=8)  # fmt: skip
    instances = [Instance(category=c, box=[0, 0, 1, 1], detector_score=1.0, area=10) for c in categories]
    return TileRecord(key=key, source=source, domain=Domain(name=domain, score=1), instances=instances,
                      quarantine=Quarantine(stage="x", reason="y") if quarantined else None)  # fmt: skip


def test_without_caps_everything_labelled_is_kept():
    tiles = [tile("a", ["building"]), tile("b", []), tile("c", ["road"], quarantined=True)]
    assert [t.key for t in select_tiles(tiles)] == ["a"]
    assert [t.key for t in select_tiles(tiles, SelectionConfig(drop_unlabeled=False))] == ["a", "b"]


def test_caps_thin_frequent_categories_and_keep_rare_ones():
    tiles = [tile(f"b{i}", ["building"]) for i in range(10)] + [tile("s1", ["ship", "building"]), tile("s2", ["ship"])]
    kept = select_tiles(tiles, SelectionConfig(max_tiles_per_category=4))
    stats = statistics(kept)
    assert stats.category_tiles["ship"] == 2 and stats.category_tiles["building"] == 4
    assert "s1" in {t.key for t in kept}  # the rare tile comes first even though it also holds a building
    domains = [tile(f"f{i}", ["tree"], "forest") for i in range(5)] + [tile("w", ["water"], "waterfront")]
    assert statistics(select_tiles(domains, SelectionConfig(max_tiles_per_domain=2))).domain_tiles == {"forest": 2, "waterfront": 1}


def test_report_has_tables_and_charts(tmp_path):
    tiles = [tile("a", ["building", "road"]), tile("b", ["water"], "waterfront")]
    report = write_report(tmp_path, statistics(tiles), statistics(tiles[:1]), ["building", "road", "water"])
    text = report.read_text()
    assert "| water | 1 | 0 | 0 |" in text and "| waterfront | 1 | 0 |" in text
    assert (tmp_path / "categories.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "domains.png").is_file()
