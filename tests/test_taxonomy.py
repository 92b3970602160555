"""The shared taxonomy: every model category maps onto traceguard's nine, in any spelling."""

from __future__ import annotations

import pytest

from traceguard import taxonomy
from traceguard.auditors._baseline_lexicon import CATEGORIES as BASELINE_CATEGORIES


def test_the_nine_categories_are_guardtraces_and_match_the_baseline() -> None:
    assert len(taxonomy.CATEGORIES) == 9
    assert taxonomy.CATEGORIES == BASELINE_CATEGORIES
    assert set(taxonomy.DESCRIPTIONS) == set(taxonomy.CATEGORIES)


def test_every_model_category_maps_into_the_taxonomy() -> None:
    assert set(taxonomy.LLAVAGUARD_TO_TAXONOMY) == set(taxonomy.LLAVAGUARD_CATEGORIES) - {"NA"}
    assert set(taxonomy.HOLISAFE_TO_TAXONOMY) == set(taxonomy.HOLISAFE_CATEGORIES) - {"safe"}
    targets = {*taxonomy.LLAVAGUARD_TO_TAXONOMY.values(), *taxonomy.HOLISAFE_TO_TAXONOMY.values()}
    assert targets <= set(taxonomy.CATEGORIES)
    assert len(taxonomy.HOLISAFE_CATEGORIES) == 20
    assert taxonomy.HOLISAFE_CATEGORIES[0] == "safe"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("O2: Violence, Harm, or Cruelty", "crime_and_illegal_activities"),
        ("o7", "physical_and_mental_health"),
        ("Sexual Content", "ethics_and_morality"),
        ("NA: None applying", None),
        ("Hate Speech", "hate_speech"),
        ("crime_and_illegal_activities", "crime_and_illegal_activities"),
        ("gender", "hate_speech"),
        ("Gender discrimination", "hate_speech"),
        ("Weapon-related violence", "crime_and_illegal_activities"),
        ("weapon_related_violence", "crime_and_illegal_activities"),
        ("Drug Related Hazards", "physical_and_mental_health"),
        ("terrorism", "extremism"),
        ("medical advice", "misleading_advice"),
        ("unsafe", "other_risks"),
        ("safe", None),
        ("Nasty things", None),
        ("", None),
    ],
)
def test_normalize_accepts_every_spelling(name: str, expected: str | None) -> None:
    assert taxonomy.normalize(name) == expected


def test_holisafe_spelling_variants_resolve_to_the_canonical_class() -> None:
    assert taxonomy.holisafe_key("gender") == "gender_discrimination"
    assert taxonomy.holisafe_key("Physical self-injury") == "physical_self_injury"
    assert taxonomy.holisafe_key("safe") == "safe"
    assert taxonomy.holisafe_key("made up") is None


def test_merge_normalises_deduplicates_and_keeps_first_seen_order() -> None:
    merged = taxonomy.merge_categories(["O1", "safe"], ["hate_speech", "terrorism"], ["zzz", "O9"])
    assert merged == ("hate_speech", "extremism", "other_risks")
    assert taxonomy.merge_categories() == ()
