"""Every Config field has one role and one type check; the store's fingerprint, the schedule's cache key and the
type checks all derive from them (memlib/config.py: ROLES, TYPE_CHECKS)."""

from __future__ import annotations

import dataclasses
import re

import pytest

import memlib.train.engine as engine
from memlib.config import ROLES, TRAINING_KEYS, TYPE_CHECKS, Config, trains


def unclassified(cls: type) -> list[str]:
    """Fields declared without a role (e.g. `name: int = 3` instead of `name: int = trains(3)`)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("role") not in ROLES]


def unchecked(cls: type) -> list[str]:
    """Fields whose type annotation has no check in TYPE_CHECKS (so a value of any type would pass)."""
    return [f"{f.name}: {f.type}" for f in dataclasses.fields(cls) if str(f.type) not in TYPE_CHECKS]


def test_every_field_has_a_role():
    assert unclassified(Config) == [], "declare each field with trains(...), reads_data(...), runs(...) or reports(...)"


def test_every_type_annotation_has_a_check():
    assert unchecked(Config) == [], "add the annotation's check to TYPE_CHECKS in memlib/config.py"


@dataclasses.dataclass(frozen=True)
class Planted(Config):
    """The planted faults: a field added without a role, and one whose type (`tuple[int, int]`) has no check."""

    dummy_steps: int = 3
    dummy_pair: tuple[int, int] = trains((1, 2))


def test_the_field_checks_catch_a_planted_field():
    """Fault: a new field with no role (its value would not be fingerprinted), or a type nothing checks."""
    assert unclassified(Planted) == ["dummy_steps"]
    assert unchecked(Planted) == ["dummy_pair: tuple[int, int]"]
    with pytest.raises(TypeError, match=re.escape("dummy_pair is annotated tuple[int, int], which TYPE_CHECKS has")):
        Planted().validate()


def test_exactly_the_fields_that_train_are_fingerprinted():
    """Fault: a field that trains the models left out of the fingerprint (a store of another value reused), or a
    field that does not (workers, thresholds) in it (a finished store refused for nothing)."""
    base = Config()
    for f in dataclasses.fields(Config):
        changed = dataclasses.replace(base, **{f.name: "another value"})
        moved = changed.training_fingerprint() != base.training_fingerprint()
        assert moved == (f.metadata["role"] == "trains"), f"{f.name} ({f.metadata['role']})"
    assert set(TRAINING_KEYS) == {f.name for f in dataclasses.fields(Config) if f.metadata["role"] == "trains"}


def test_the_schedule_is_cached_on_every_field_that_trains(monkeypatch):
    """Fault: the cache key as a hand-written tuple of the fields the schedule read when it was written, so a new
    training field the schedule reads (e.g. `epochs: auto`) would silently take the cached table of its default."""
    recipes = []
    monkeypatch.setattr(engine, "_schedule_table_cached", lambda recipe, steps: recipes.append(dict(recipe)))
    engine.schedule_table(Config(), 10)
    assert recipes == [{k: getattr(Config(), k) for k in TRAINING_KEYS}]


def test_a_value_of_the_wrong_type_is_refused_for_every_type():
    """Each check refuses a value of another type (fault: a check that accepts anything, e.g. `lambda v: True`)."""
    wrong = {"str": 3, "str | None": 3, "int": 2.5, "int | None": "3", "bool": 1, "float": "x", "dict[str, str]": [1]}
    wrong["list[float]"] = ["x"]
    wrong["int | str"] = 2.5  # (which strings: the field's rule says, e.g. epochs takes only auto)
    wrong["float | None"] = "1.0x"
    assert set(wrong) == set(TYPE_CHECKS), "give each new type a value it must refuse"
    for kind, value in wrong.items():
        assert not TYPE_CHECKS[kind](value), kind
