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
        ("Drug Related Hazards", "crime_and_illegal_activities"),
        ("O6: Weapons or Substance Abuse", "crime_and_illegal_activities"),
        ("drugs", "crime_and_illegal_activities"),
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


def test_every_harm_lands_in_one_category_whichever_model_names_it() -> None:
    # Each model category may only combine harms of one traceguard category, and its mapping
    # is that category: weapons and drugs go to the same place for LlavaGuard (O6), HoliSafe
    # and the baseline alike.
    from traceguard.auditors._baseline_lexicon import QUERY_PATTERNS, TOPIC_PATTERNS

    assert set(taxonomy.HARMS.values()) <= set(taxonomy.CATEGORIES)
    for code, harms in taxonomy.LLAVAGUARD_HARMS.items():
        assert {taxonomy.HARMS[h] for h in harms} == {taxonomy.LLAVAGUARD_TO_TAXONOMY[code]}
    for label, harms in taxonomy.HOLISAFE_HARMS.items():
        assert {taxonomy.HARMS[h] for h in harms} == {taxonomy.HOLISAFE_TO_TAXONOMY[label]}
    for pattern in (*QUERY_PATTERNS, *TOPIC_PATTERNS):
        assert pattern.category == taxonomy.HARMS[pattern.harm], pattern.label
    weapons_and_drugs = {
        taxonomy.from_llavaguard("O6"),
        taxonomy.from_holisafe("weapon_related_violence"),
        taxonomy.from_holisafe("drug_related_hazards"),
        *(p.category for p in (*QUERY_PATTERNS, *TOPIC_PATTERNS) if p.harm in ("weapons", "drugs")),
    }
    assert weapons_and_drugs == {"crime_and_illegal_activities"}


def test_every_harm_is_named_by_some_model_or_pattern() -> None:
    from traceguard.auditors._baseline_lexicon import QUERY_PATTERNS, TOPIC_PATTERNS

    named = {h for harms in taxonomy.LLAVAGUARD_HARMS.values() for h in harms}
    named |= {h for harms in taxonomy.HOLISAFE_HARMS.values() for h in harms}
    named |= {p.harm for p in (*QUERY_PATTERNS, *TOPIC_PATTERNS)}
    assert named == set(taxonomy.HARMS)


def test_a_mapping_that_splits_a_harm_is_refused() -> None:
    with pytest.raises(ValueError, match="2 categories"):
        taxonomy.category_of_harms(["weapons", "self_harm"])
    with pytest.raises(ValueError, match="unknown harm"):
        taxonomy.category_of_harms(["bananas"])


def test_the_docs_table_is_the_generated_one() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "taxonomy.md").read_text(encoding="utf-8")
    assert taxonomy.markdown_table() in doc
