"""`ovrsis categories` end to end, as a subprocess, the way users run it."""

import json
import subprocess
import sys
from pathlib import Path

OVRSIS = [sys.executable, "-m", "flows.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*OVRSIS, *args], capture_output=True, text=True, timeout=300)


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_help_documents_the_formats():
    result = run("categories", "--help")
    assert result.returncode == 0
    for text in ('"captions": [', '"method"', "unmatched", "negated", "Exit status", "ovrsis95k"):
        assert text in result.stdout


def test_bad_lines_are_reported_and_the_rest_processed(tmp_path):
    captions = write_lines(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "caption": "two tennis courts next to a parking lot"},
            "{not json",
            {"caption": "no id here"},
            {"id": "b", "captions": ["", "a bridge over a river", "河流"]},
            {"id": "c", "caption": "   "},
            {"id": "a", "caption": "duplicate id"},
            {"id": "d", "captions": "not a list"},
            {"id": "e", "caption": "ein Haus mit einem großen Garten und vielen Bäumen"},
        ],
    )
    out = tmp_path / "out.jsonl"
    result = run("categories", "--taxonomy", "ovrsis95k", "--captions", str(captions), "--out", str(out))
    assert result.returncode == 1, result.stderr  # finished, some lines skipped
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert {c["name"] for c in rows[0]["categories"]} == {"tennis court", "developed space"}
    assert {c["name"] for c in rows[1]["categories"]} == {"bridge", "water"}
    assert set(rows[0]["categories"][0]) == {"name", "score", "phrase", "method"}
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    by_line = {e["line"]: e["error"] for e in errors if e["raw"]}
    assert "invalid JSON" in by_line[2] and "missing or empty 'id'" in by_line[3]
    assert "empty" in by_line[5] and "duplicate id 'a' (first on line 1)" in by_line[6]
    assert "must be a non-empty list" in by_line[7] and "English" in by_line[8]
    dropped = [e["error"] for e in errors if not e["raw"]]
    assert len(dropped) == 2 and all("id 'b'" in d for d in dropped)
    assert "line 2:" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"6 line(s) skipped, 2 caption(s) dropped; reasons in {tmp_path / 'out.errors.jsonl'}"


def test_nothing_processable_exits_nonzero_and_writes_nothing_half(tmp_path):
    captions = write_lines(tmp_path / "in.jsonl", ["garbage", {"id": "x"}])
    result = run("categories", "-t", "ovrsis95k", "-c", str(captions), "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no line of {captions} could be used; reasons in {tmp_path / 'out.errors.jsonl'}"
    )
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert not list(tmp_path.glob("*.part"))


def test_broken_taxonomy_and_missing_input_are_clear_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ncategories:\n  - name: car\n  - name: car\n")
    captions = write_lines(tmp_path / "in.jsonl", [{"id": "a", "caption": "a car"}])
    result = run("categories", "-t", str(broken), "-c", str(captions), "-o", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2 and "broken.yaml:4: duplicate category 'car'" in result.stderr.replace("\n", "")
    missing = run("categories", "-t", "ovrsis95k", "-c", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert missing.returncode == 2 and "captions file not found" in missing.stderr


def test_real_rsicd_captions(shared_real, tmp_path):
    rows = [json.loads(line) for line in open(shared_real / "captions" / "rsicd_captions.jsonl")][:400]
    captions = write_lines(tmp_path / "in.jsonl", [{"id": r["id"], "captions": r["captions"]} for r in rows])
    out = tmp_path / "out.jsonl"
    result = run("categories", "-t", "ovrsis95k", "-c", str(captions), "-o", str(out))
    assert result.returncode == 0, result.stderr
    results = {r["id"]: {c["name"] for c in r["categories"]} for r in read_jsonl(out)}
    assert len(results) == 400
    # RSICD ids carry the scene class: the obvious category must be found for nearly every airport image
    airports = [names for key, names in results.items() if key.startswith("airport_")]
    assert airports and sum("airplane" in n or "airport" in n for n in airports) / len(airports) > 0.9
    assert not [key for key, names in results.items() if "unlabeled areas, background, clutter" in names]


def test_suggest_writes_a_synonyms_snippet_and_relation_matches_are_counted(tmp_path):
    import yaml

    captions = write_lines(
        tmp_path / "in.jsonl",
        [
            {"id": str(i), "caption": text}
            for i, text in enumerate(
                ["a runway beside a shoreline", "planes on a runway near the shoreline", "a viaduct and a shoreline"]
            )
        ],
    )
    out, snippet = tmp_path / "out.jsonl", tmp_path / "suggest.yaml"
    result = run("categories", "-t", "loveda", "-c", str(captions), "-o", str(out), "--suggest", str(snippet))
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(snippet.read_text())
    (group,) = document["categories"]  # the only unknown phrase, under its nearest LoveDA category
    assert group["name"] in {"water", "barren"} and group["synonyms"] == ["shoreline"]
    assert "shoreline  # 3 images; " in snippet.read_text()  # evidence: images, nearest categories and scores
    assert "known kinds the taxonomy has no category for" in snippet.read_text()  # runway: LoveDA lacks it
    assert "by method: relation 1" in result.stderr  # viaduct -> road by the relation walk
    assert "synonym suggestions ->" in result.stderr  # the console writes to stderr
