"""AuditSchedule and CheckpointClock: when a stream's output is due for a checkpoint."""

from __future__ import annotations

import pytest

from traceguard import AuditSchedule, ConfigurationError, ReasoningStream
from traceguard._checkpoints import CheckpointClock, checkpoint_auditor
from traceguard.testing import ScriptedAuditor


def feed_and_collect(
    schedule: AuditSchedule, pieces: list[str], *, reasoning: bool = True
) -> list[str]:
    """Feed ``pieces`` one by one; the text so far whenever a checkpoint fell due (then taken)."""
    stream = ReasoningStream()
    clock = CheckpointClock(schedule)
    fed = ""
    taken = []
    for piece in pieces:
        if reasoning:
            stream.feed_reasoning(piece)
        else:
            stream.feed_text(piece)
        fed += piece
        if clock.due({0: stream}):
            clock.taken({0: stream})
            taken.append(fed)
    return taken


def test_every_tokens_counts_characters() -> None:
    pieces = ["abcd"] * 40
    taken = feed_and_collect(AuditSchedule(every_tokens=8), pieces)
    assert [len(t) for t in taken] == [32, 64, 96, 128, 160]


def test_chunking_does_not_change_how_often() -> None:
    text = "x" * 400
    one_by_one = feed_and_collect(AuditSchedule(every_tokens=10), list(text))
    in_fives = feed_and_collect(
        AuditSchedule(every_tokens=10), [text[i : i + 5] for i in range(0, 400, 5)]
    )
    assert [len(t) for t in one_by_one] == [len(t) for t in in_fives] == list(range(40, 401, 40))


def test_chars_per_token() -> None:
    taken = feed_and_collect(AuditSchedule(every_tokens=10, chars_per_token=1.5), ["x"] * 60)
    assert [len(t) for t in taken] == [15, 30, 45, 60]


def test_sentence_boundaries_at_least_min_tokens_apart() -> None:
    schedule = AuditSchedule(every_tokens=None, boundary="sentence", min_tokens=3)  # 12 chars
    pieces = ["Short.", " Then a longer sentence.", " Ok.", " And another one here!", " tail"]
    taken = feed_and_collect(schedule, pieces)
    # A sentence ends when the space after its mark arrives; the checkpoint then takes all the
    # text fed so far. " Ok." ends one only 4 characters after the last checkpoint: too close.
    assert taken == [
        "Short. Then a longer sentence.",
        "Short. Then a longer sentence. Ok. And another one here!",
    ]


def test_a_boundary_split_across_pieces_counts() -> None:
    schedule = AuditSchedule(every_tokens=None, boundary="sentence", min_tokens=1)
    taken = feed_and_collect(schedule, ["one two three", ".", " four"])
    assert taken == ["one two three. four"]


def test_step_boundaries() -> None:
    schedule = AuditSchedule(every_tokens=None, boundary="step", min_tokens=2)
    pieces = ["First I check the inputs.", "\n\n", "Then the outputs.", "\n", "2. ", "Done"]
    taken = feed_and_collect(schedule, pieces)
    assert taken == [
        "First I check the inputs.\n\n",
        "First I check the inputs.\n\nThen the outputs.\n2. ",
    ]


def test_boundary_with_every_tokens_caps_the_gap() -> None:
    schedule = AuditSchedule(every_tokens=10, boundary="sentence", min_tokens=2)
    taken = feed_and_collect(schedule, ["x" * 10] * 10)  # no sentence ever ends
    assert [len(t) for t in taken] == [40, 80]


def test_a_boundary_passed_while_an_audit_ran_is_owed() -> None:
    stream = ReasoningStream()
    clock = CheckpointClock(AuditSchedule(every_tokens=None, boundary="sentence", min_tokens=1))
    stream.feed_reasoning("A full sentence. ")
    assert clock.due({0: stream}) == [0]  # due, but say an audit is in flight: not taken
    stream.feed_reasoning("more words without an end " * 3)
    assert clock.due({0: stream}) == [0]  # still owed, though no boundary is in the new text
    clock.taken({0: stream})
    stream.feed_reasoning("and more")
    assert clock.due({0: stream}) == []


def test_thinking_scope_stops_when_the_answer_starts() -> None:
    stream = ReasoningStream()
    clock = CheckpointClock(AuditSchedule(every_tokens=2))
    stream.feed_text("<think>" + "y" * 20)
    assert clock.due({0: stream}) == [0]
    clock.taken({0: stream})
    stream.feed_text("y" * 4 + "</think>The answer is long enough to be due.")
    assert not stream.thinking_open
    assert clock.due({0: stream}) == []


def test_output_scope_keeps_going_through_the_answer() -> None:
    stream = ReasoningStream()
    clock = CheckpointClock(AuditSchedule(every_tokens=2, scope="output"))
    stream.feed_reasoning("y" * 8)
    clock.taken({0: stream})
    stream.feed_text("An answer that goes on")
    assert clock.due({0: stream}) == [0]


def test_plain_answers_get_no_thinking_checkpoints() -> None:
    assert feed_and_collect(AuditSchedule(every_tokens=1), ["words "] * 30, reasoning=False) == []
    assert (
        len(
            feed_and_collect(
                AuditSchedule(every_tokens=1, scope="output"), ["words "] * 3, reasoning=False
            )
        )
        == 3
    )


def test_each_output_has_its_own_clock() -> None:
    first, second = ReasoningStream(), ReasoningStream()
    clock = CheckpointClock(AuditSchedule(every_tokens=2))
    first.feed_reasoning("a" * 8)
    second.feed_reasoning("b" * 4)
    assert clock.due({0: first, 1: second}) == [0]
    clock.taken({0: first})
    second.feed_reasoning("b" * 4)
    assert clock.due({0: first, 1: second}) == [1]


@pytest.mark.parametrize(
    "options",
    [
        {"every_tokens": None},
        {"every_tokens": 0},
        {"boundary": "paragraph"},
        {"min_tokens": 0},
        {"scope": "answer"},
        {"chars_per_token": 0.0},
        {"chars_per_token": float("nan")},
    ],
)
def test_bad_schedules_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        AuditSchedule(**options)  # type: ignore[arg-type]


def test_checkpoint_auditor_defaults_to_the_auditor_itself() -> None:
    auditor = ScriptedAuditor()
    assert checkpoint_auditor(auditor) is auditor
