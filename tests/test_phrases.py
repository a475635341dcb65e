import pytest

from pipeline.stages.phrases import CaptionError, check_caption, parse_captions


def phrases(caption):
    return {p.lemma: p for p in parse_captions([caption])[0]}


def test_plurals_are_lemmatised():
    found = phrases("many storage tanks and some houses near the ships")
    assert {"storage tank", "house", "ship"} <= set(found)


def test_multi_word_names_stay_whole_with_backoff_spans():
    found = phrases("a ground track field next to two tennis courts")
    assert found["ground track field"].candidates[:2] == ["ground track field", "track field"]
    assert found["tennis court"].candidates == ["tennis court", "court"]
    assert found["tennis court"].compound_start == 1


def test_adjectives_are_dropped_from_the_lemma_but_kept_as_a_candidate():
    found = phrases("the bare land is next to green trees")
    assert found["land"].candidates == ["bare land", "land"]
    assert found["tree"].candidates == ["green tree", "tree"]


@pytest.mark.parametrize(
    ("caption", "negated", "present"),
    [
        ("a beach without waves", {"wave"}, {"beach"}),
        ("no car on the road", {"car"}, {"road"}),
        ("there are no buildings near the river", {"building"}, {"river"}),
        ("there is not a single boat in the harbour", {"boat"}, {"harbour"}),
        ("neither cars nor trucks are on the highway", {"car", "truck"}, {"highway"}),
        ("no cars or buses are on the bridge", {"car", "bus"}, {"bridge"}),
        ("no cars but many trees are beside the road", {"car"}, {"tree", "road"}),
        ("cars are not parked near the pond", {"car"}, {"pond"}),
    ],
)
def test_negation(caption, negated, present):
    found = phrases(caption)
    assert {lemma for lemma, p in found.items() if p.negated} == negated
    assert present <= {lemma for lemma, p in found.items() if not p.negated}


def test_quantities():
    found = phrases("two tennis courts, 12 cars and several buildings")
    assert (found["tennis court"].count, found["tennis court"].quantity) == (2, "two")
    assert found["car"].count == 12
    assert found["building"].quantity == "several" and found["building"].count is None
    assert found["tennis court"].candidates[0] == "tennis court"  # the number is not part of the name


def test_container_words_pass_their_quantity_and_are_generic():
    found = phrases("lots of cars are parked in the parking lot")
    assert found["car"].quantity == "lots"
    assert found["parking lot"].quantity is None
    assert phrases("a piece of bareland")["piece"].generic


@pytest.mark.parametrize(
    "bad", ["", "   ", None, 42, "河流和桥梁", "12 34 !!", "ein Haus mit einem großen Garten und Bäumen"]
)
def test_unusable_captions_are_rejected_with_a_reason(bad):
    with pytest.raises(CaptionError):
        check_caption(bad)


def test_identical_captions_are_parsed_once_and_results_align():
    captions = ["a red car", "a bridge over a river", "a red car"]
    result = parse_captions(captions)
    assert [p.lemma for p in result[0]] == ["car"] and result[0] is result[2]
    assert [p.lemma for p in result[1]] == ["bridge", "river"]
