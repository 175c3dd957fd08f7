"""Every numeric knob of the schema declares its range, and a value outside it stops the run at start-up, naming the
key and the value; every shipped experiment lies within them."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

import whytune.config as config
from tests.conftest import compose_config
from whytune.config import CONFIG_DIR, RANGE, Range, WhytuneConfig, validate


@dataclass(frozen=True)
class Knob:
    key: str  # dotted path from the top; an entry of a dict of sections as <name> (references.<name>.max_tokens)
    kind: type  # int or float
    many: bool  # a list of them (seeds): the range holds for each element
    bounds: Range | None  # the declared range; None: none declared


def _number(hint: Any) -> tuple[type, bool] | None:
    """(int or float, whether a list of them) for the types a range is checked on: a number, an optional one, a list
    of numbers; None for any other type."""
    if hint in (int, float):
        return hint, False
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, UnionType) and len(args) == 1:
        return _number(args[0])
    if get_origin(hint) is list and args[0] in (int, float):
        return args[0], True
    return None


def _mentions_number(hint: Any) -> bool:
    return hint in (int, float) or any(_mentions_number(a) for a in get_args(hint))


def _walk(cls: type, prefix: str, seen: set[type]) -> list[Knob]:
    """The numeric knobs of a section, through nested sections and dicts of them; `seen` collects the sections."""
    seen.add(cls)
    knobs, hints = [], get_type_hints(cls)
    for f in fields(cls):
        hint, key = hints[f.name], prefix + f.name
        entry = get_args(hint)[1] if get_origin(hint) is dict else None
        if is_dataclass(hint):
            knobs += _walk(hint, f"{key}.", seen)
        elif isinstance(entry, type) and is_dataclass(entry):
            knobs += _walk(entry, f"{key}.<name>.", seen)
        elif number := _number(hint):
            knobs.append(Knob(key, *number, f.metadata.get(RANGE)))
        else:
            assert not _mentions_number(hint), f"{key}: {hint} holds numbers in a form validate does not range-check"
            assert RANGE not in f.metadata, f"{key}: a range on a field that is not a number"
    return knobs


SECTIONS: set[type] = set()
KNOBS = _walk(WhytuneConfig, "", SECTIONS)
RANGED = [k for k in KNOBS if k.bounds is not None]


def test_every_numeric_knob_declares_its_range():
    """A new knob cannot be added without its range: ranged(default, ge=..., ...) beside the field."""
    assert not [k.key for k in KNOBS if k.bounds is None]
    # The walk reached every section of the schema, nested ones and the entries of dicts of them alike.
    schema = {c for c in vars(config).values() if isinstance(c, type) and is_dataclass(c) and c is not Range}
    assert SECTIONS == schema
    keys = {k.key for k in KNOBS}
    assert {"seeds", "eval.served.timeout", "train.lora.r", "references.<name>.max_tokens"} <= keys
    assert len(KNOBS) >= 45, len(KNOBS)


def _setting(knob: Knob, value: float) -> tuple[list[str], str]:
    """The overrides that set `knob` to `value`, and the key the error names (seeds[0], references.NAME.max_tokens)."""
    key, overrides = knob.key, []
    if ".<name>." in key:  # the first shipped entry of that group, selected
        group = key.split(".<name>.")[0]
        name = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))[0]
        key, overrides = key.replace("<name>", name), [f"{group}=[{name}]"]
    if knob.many:
        return [*overrides, f"{key}=[{value}]"], f"{key}[0]"
    return [*overrides, f"{key}={value}"], key


def _step(knob: Knob) -> float:
    return 1 if knob.kind is int else 1e-6


def _outside(knob: Knob) -> list[float]:
    """Just outside each bound: a strict bound itself, one step past an inclusive one."""
    b, step = knob.bounds, _step(knob)
    assert b is not None
    values = [b.gt, b.lt, None if b.ge is None else b.ge - step, None if b.le is None else b.le + step]
    return [knob.kind(v) for v in values if v is not None]


def _edge(knob: Knob, upper: bool) -> float | None:
    """The in-range value nearest the lower (upper) bound: an inclusive bound itself, one step inside a strict one;
    None where that side is unbounded."""
    b, step = knob.bounds, _step(knob)
    assert b is not None
    inclusive, strict, inward = (b.le, b.lt, -step) if upper else (b.ge, b.gt, step)
    if inclusive is not None:
        return knob.kind(inclusive)
    return None if strict is None else knob.kind(strict + inward)


OUTSIDE = [pytest.param(k, v, id=f"{k.key}={v}") for k in RANGED for v in _outside(k)]


@pytest.mark.parametrize(("knob", "value"), OUTSIDE)
def test_a_value_outside_its_range_fails_at_startup_naming_key_and_value(knob, value):
    overrides, key = _setting(knob, value)
    with pytest.raises(ValueError) as error:
        validate(compose_config(*overrides))
    assert str(error.value) == f"{key}={value}: must be {knob.bounds}"


@pytest.mark.parametrize("upper", [False, True], ids=["lower", "upper"])
def test_every_knob_accepts_the_edges_of_its_range(upper):
    """All knobs at once at the in-range value nearest one bound (temperature 0 is greedy, not an error)."""
    settings = [_setting(k, v) for k in RANGED if (v := _edge(k, upper)) is not None]
    bounded = [k for k in RANGED if (k.bounds.le, k.bounds.lt) != (None, None)] if upper else RANGED
    assert len(settings) == len(bounded) > 0
    overrides = list(dict.fromkeys(o for setting, _ in settings for o in setting))  # a group selected once
    validate(compose_config(*overrides))


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("eval.temperature=-1", "eval.temperature=-1.0: must be >= 0"),  # fast: sampled the inverted distribution
        ("eval.top_p=0", "eval.top_p=0.0: must be in (0, 1]"),
        ("train.lr=-1", "train.lr=-1.0: must be > 0"),
        ("data.examples=0", "data.examples=0: must be >= 1"),
        ("train.epochs=0", "train.epochs=0.0: must be > 0"),
        ("eval.top_p=nan", "eval.top_p=nan: must be in (0, 1]"),
        ("seeds=[0,-1]", "seeds[1]=-1: must be in [0, 4294967295]"),
    ],
)
def test_the_nonsense_that_once_passed(override, error):
    with pytest.raises(ValueError) as raised:
        validate(compose_config(override))
    assert str(raised.value) == error


def test_every_knob_out_of_range_is_named_at_once():
    with pytest.raises(ValueError) as error:
        validate(compose_config("eval.temperature=-1", "train.lora.lora_dropout=1", "eval.served.max_attempts=0"))
    assert str(error.value).splitlines() == [
        "train.lora.lora_dropout=1.0: must be in [0, 1)",
        "eval.temperature=-1.0: must be >= 0",
        "eval.served.max_attempts=0: must be >= 1",
    ]


def test_an_unset_optional_knob_is_not_checked():
    cfg = validate(compose_config("references=[claude-opus-4]", "references.claude-opus-4.max_tokens=null"))
    assert cfg.references["claude-opus-4"].max_tokens is None


REFERENCES = sorted(p.stem for p in (CONFIG_DIR / "references").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_is_within_range(experiment):
    """Each experiment composed with ablate.yaml, every shipped reference selected, so their entries are checked too."""
    cfg = validate(compose_config(f"experiment={experiment}", f"references=[{','.join(REFERENCES)}]"))
    assert list(cfg.references) == REFERENCES


def test_range_reads_as_its_bounds():
    assert [str(r) for r in (Range(ge=0), Range(gt=0), Range(le=1), Range(lt=1), Range(gt=0, le=1))] == [
        ">= 0",
        "> 0",
        "<= 1",
        "< 1",
        "in (0, 1]",
    ]
    with pytest.raises(ValueError, match="one lower and one upper bound"):
        Range(ge=0, gt=0)


def test_no_seed_fails_at_startup():
    with pytest.raises(ValueError, match=r"seeds=\[\]: name at least one training seed"):
        validate(compose_config("out=somewhere", "seeds=[]"))
