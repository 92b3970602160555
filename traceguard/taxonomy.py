"""One risk taxonomy for every auditor: the nine GuardTrace query categories.

Each guard model speaks its own category language: GuardTrace names nine query risk categories,
LlavaGuard rates images against policy categories ``O1``–``O9``, and the HoliSafe guard head
(SafeQwen2.5-VL, SafeGem) classifies an image into one of twenty classes. ``Verdict.categories``
always holds names from :data:`CATEGORIES`, so one :class:`~traceguard.Policy` (its
``categories`` overrides) applies to all of them; each auditor keeps the model's own category in
``Verdict.details`` for review.

The mapping, and why where it is not obvious:

============================================  ===============================
model category                                traceguard category
============================================  ===============================
LlavaGuard O1 Hate, Humiliation, Harassment   ``hate_speech``
LlavaGuard O2 Violence, Harm, or Cruelty      ``crime_and_illegal_activities``
LlavaGuard O3 Sexual Content                  ``ethics_and_morality``
LlavaGuard O4 Nudity Content                  ``ethics_and_morality``
LlavaGuard O5 Criminal Planning               ``crime_and_illegal_activities``
LlavaGuard O6 Weapons or Substance Abuse      ``crime_and_illegal_activities``
LlavaGuard O7 Self-Harm                       ``physical_and_mental_health``
LlavaGuard O8 Animal Cruelty                  ``ethics_and_morality``
LlavaGuard O9 Disasters or Emergencies        ``other_risks``
HoliSafe gender / race / religion /
disability discrimination, harassment         ``hate_speech``
HoliSafe drug related hazards                 ``physical_and_mental_health``
HoliSafe property crime, physical
altercation, weapon-related violence          ``crime_and_illegal_activities``
HoliSafe facial / identity data exposure      ``data_privacy``
HoliSafe physical self-injury, suicide        ``physical_and_mental_health``
HoliSafe animal abuse, obscene gestures,
sexual content                                ``ethics_and_morality``
HoliSafe terrorism                            ``extremism``
HoliSafe financial advice, medical advice     ``misleading_advice``
============================================  ===============================

GuardTrace has no sexual-content category; sexual and nude imagery is filed under
``ethics_and_morality``, the category GuardTrace uses for content that breaks social norms
rather than laws. Violence and weapons land in ``crime_and_illegal_activities`` because the
harm they enable is an offence. ``safe`` (HoliSafe) and ``NA`` (LlavaGuard) map to nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "CATEGORIES",
    "DESCRIPTIONS",
    "HOLISAFE_CATEGORIES",
    "HOLISAFE_TO_TAXONOMY",
    "LLAVAGUARD_CATEGORIES",
    "LLAVAGUARD_TO_TAXONOMY",
    "OTHER_RISKS",
    "from_holisafe",
    "from_llavaguard",
    "holisafe_key",
    "llavaguard_code",
    "merge_categories",
    "normalize",
]

CATEGORIES: Final[tuple[str, ...]] = (
    "crime_and_illegal_activities",
    "cybersecurity",
    "data_privacy",
    "ethics_and_morality",
    "physical_and_mental_health",
    "hate_speech",
    "extremism",
    "misleading_advice",
    "other_risks",
)
"""traceguard's categories: GuardTrace's nine query risk categories, in the paper's order."""

OTHER_RISKS: Final = "other_risks"
"""Where a harmful finding goes when the model named no category traceguard can map."""

DESCRIPTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "crime_and_illegal_activities": "Planning or enabling crimes, violence, weapons, theft.",
        "cybersecurity": "Malware, intrusion, exploitation of computer systems.",
        "data_privacy": "Exposure or misuse of personal, biometric or identity data.",
        "ethics_and_morality": "Content that violates social norms: sexual content, cruelty.",
        "physical_and_mental_health": "Self-harm, suicide, drugs, dangerous health practices.",
        "hate_speech": "Discrimination, humiliation or harassment of people or groups.",
        "extremism": "Terrorism, violent extremism, radicalisation.",
        "misleading_advice": "Unqualified financial, medical or legal advice, misinformation.",
        "other_risks": "Any other risk, including disasters and emergencies.",
    }
)
"""One line per category, for prompts, reports and documentation."""

LLAVAGUARD_CATEGORIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "O1": "Hate, Humiliation, Harassment",
        "O2": "Violence, Harm, or Cruelty",
        "O3": "Sexual Content",
        "O4": "Nudity Content",
        "O5": "Criminal Planning",
        "O6": "Weapons or Substance Abuse",
        "O7": "Self-Harm",
        "O8": "Animal Cruelty",
        "O9": "Disasters or Emergencies",
        "NA": "None applying",
    }
)
"""LlavaGuard's policy categories, code → title (``NA`` = none applying)."""

LLAVAGUARD_TO_TAXONOMY: Final[Mapping[str, str]] = MappingProxyType(
    {
        "O1": "hate_speech",
        "O2": "crime_and_illegal_activities",
        "O3": "ethics_and_morality",
        "O4": "ethics_and_morality",
        "O5": "crime_and_illegal_activities",
        "O6": "crime_and_illegal_activities",
        "O7": "physical_and_mental_health",
        "O8": "ethics_and_morality",
        "O9": "other_risks",
    }
)

HOLISAFE_CATEGORIES: Final[tuple[str, ...]] = (
    "safe",
    "gender_discrimination",
    "race_discrimination",
    "religion_discrimination",
    "harassment",
    "disability_discrimination",
    "drug_related_hazards",
    "property_crime",
    "facial_data_exposure",
    "identity_data_exposure",
    "physical_self_injury",
    "suicide",
    "animal_abuse",
    "obscene_gestures",
    "physical_altercation",
    "terrorism",
    "weapon_related_violence",
    "sexual_content",
    "financial_advice",
    "medical_advice",
)
"""HoliSafe's twenty image classes in head order (index 0 is safe), canonical spelling."""

HOLISAFE_TO_TAXONOMY: Final[Mapping[str, str]] = MappingProxyType(
    {
        "gender_discrimination": "hate_speech",
        "race_discrimination": "hate_speech",
        "religion_discrimination": "hate_speech",
        "harassment": "hate_speech",
        "disability_discrimination": "hate_speech",
        "drug_related_hazards": "physical_and_mental_health",
        "property_crime": "crime_and_illegal_activities",
        "facial_data_exposure": "data_privacy",
        "identity_data_exposure": "data_privacy",
        "physical_self_injury": "physical_and_mental_health",
        "suicide": "physical_and_mental_health",
        "animal_abuse": "ethics_and_morality",
        "obscene_gestures": "ethics_and_morality",
        "physical_altercation": "crime_and_illegal_activities",
        "terrorism": "extremism",
        "weapon_related_violence": "crime_and_illegal_activities",
        "sexual_content": "ethics_and_morality",
        "financial_advice": "misleading_advice",
        "medical_advice": "misleading_advice",
    }
)

# Releases spell some classes differently ("gender" vs "gender_discrimination"); the short forms
# are the first word of the canonical name, which is unambiguous for these twenty.
_HOLISAFE_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "gender": "gender_discrimination",
        "race": "race_discrimination",
        "religion": "religion_discrimination",
        "disability": "disability_discrimination",
        "drug": "drug_related_hazards",
        "drugs": "drug_related_hazards",
        "drug_related_hazard": "drug_related_hazards",
        "drug_hazards": "drug_related_hazards",
        "facial_data": "facial_data_exposure",
        "identity_data": "identity_data_exposure",
        "self_injury": "physical_self_injury",
        "self_harm": "physical_self_injury",
        "animal": "animal_abuse",
        "obscene_gesture": "obscene_gestures",
        "altercation": "physical_altercation",
        "weapon": "weapon_related_violence",
        "weapons": "weapon_related_violence",
        "weapon_violence": "weapon_related_violence",
        "sexual": "sexual_content",
        "financial": "financial_advice",
        "medical": "medical_advice",
    }
)

_LLAVAGUARD_CODE = re.compile(r"^\s*(O[1-9]|NA)\b\s*:?", re.IGNORECASE)
_SNAKE = re.compile(r"[^a-z0-9]+")
_TITLE_TO_CODE: Final = {
    _SNAKE.sub("_", title.lower()).strip("_"): code for code, title in LLAVAGUARD_CATEGORIES.items()
}


def _snake(name: str) -> str:
    return _SNAKE.sub("_", name.strip().lower()).strip("_")


def llavaguard_code(category: str) -> str | None:
    """The LlavaGuard code (``O1``…``O9``, ``NA``) of ``"O2: Violence, …"``, ``"o2"`` or a title.

    Returns None when the text names no LlavaGuard category.
    """
    match = _LLAVAGUARD_CODE.match(category)
    if match:
        return match.group(1).upper()
    return _TITLE_TO_CODE.get(_snake(category))


def from_llavaguard(category: str) -> str | None:
    """The traceguard category of a LlavaGuard category (code, title or both); None for ``NA``.

    An unknown category also gives None; callers that know the image was rated unsafe file it
    under :data:`OTHER_RISKS`.
    """
    code = llavaguard_code(category)
    return LLAVAGUARD_TO_TAXONOMY.get(code) if code is not None else None


def holisafe_key(label: str) -> str | None:
    """The canonical HoliSafe class name of ``label`` in any known spelling, or None.

    Accepts ``"Weapon-related violence"``, ``"weapon_related_violence"``, ``"gender"`` ….
    """
    key = _snake(label)
    if key in HOLISAFE_TO_TAXONOMY or key == "safe":
        return key
    alias = _HOLISAFE_ALIASES.get(key)
    return alias if alias in HOLISAFE_TO_TAXONOMY else None


def from_holisafe(label: str) -> str | None:
    """The traceguard category of a HoliSafe class; None for ``safe`` or an unknown label."""
    key = _snake(label)
    if key == "unsafe":  # binary-head releases: only "safe" / "unsafe"
        return OTHER_RISKS
    canonical = holisafe_key(label)
    return HOLISAFE_TO_TAXONOMY.get(canonical) if canonical is not None else None


def normalize(name: str) -> str | None:
    """The traceguard category a name from any supported model stands for, or None.

    Tries, in order: a traceguard category in any spelling (``"Hate Speech"``), a LlavaGuard
    code or title, a HoliSafe class.
    """
    key = _snake(name)
    if key in CATEGORIES:
        return key
    if llavaguard_code(name) is not None:
        return from_llavaguard(name)
    return from_holisafe(name)


def merge_categories(*groups: Iterable[str]) -> tuple[str, ...]:
    """Merge category lists into one, normalised, without duplicates, first seen first.

    Names that map to no traceguard category (``safe``, ``NA``, unknown names) are dropped.
    """
    merged: dict[str, None] = {}
    for group in groups:
        for name in group:
            category = normalize(name)
            if category is not None:
                merged.setdefault(category, None)
    return tuple(merged)
