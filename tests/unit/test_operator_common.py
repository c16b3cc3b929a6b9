"""Pure operator helpers: deterministic child names, condition transitions, the phase gauge."""

from deepseek_operator import naming
from deepseek_operator.metrics import RESOURCES, PhaseBook
from deepseek_operator.status.conditions import get_condition, set_condition


def test_child_names_are_deterministic_and_bounded() -> None:
    assert naming.child_name("r8", "train") == "r8-train"
    long = "x" * 80
    name = naming.child_name(long, "quantize")
    assert len(name) <= naming.MAX_NAME_LENGTH
    assert name == naming.child_name(long, "quantize")
    assert name.endswith("-quantize")
    assert name != naming.child_name("x" * 81, "quantize")


def test_condition_transition_time_changes_only_when_status_flips() -> None:
    conds = set_condition([], "Ready", "False", "Pending", "waiting", 1, now="2026-01-01T00:00:00Z")
    conds = set_condition(conds, "Ready", "False", "StillPending", "still", 2, now="2026-01-01T00:01:00Z")
    ready = get_condition(conds, "Ready")
    assert ready is not None
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert ready["reason"] == "StillPending"
    assert ready["observedGeneration"] == 2
    conds = set_condition(conds, "Ready", "True", "Done", "ok", 2, now="2026-01-01T00:02:00Z")
    assert get_condition(conds, "Ready") == {
        "type": "Ready",
        "status": "True",
        "reason": "Done",
        "message": "ok",
        "lastTransitionTime": "2026-01-01T00:02:00Z",
        "observedGeneration": 2,
    }
    assert len(conds) == 1


def test_phase_book_counts_each_resource_once() -> None:
    book = PhaseBook()

    def count(phase: str) -> float:
        return RESOURCES.labels("TestKind", phase)._value.get()

    book.set("TestKind", "ns", "a", "Running")
    book.set("TestKind", "ns", "a", "Running")
    book.set("TestKind", "ns", "b", "Running")
    assert count("Running") == 2
    book.set("TestKind", "ns", "a", "Succeeded")
    assert (count("Running"), count("Succeeded")) == (1, 1)
    book.forget("TestKind", "ns", "a")
    assert count("Succeeded") == 0
