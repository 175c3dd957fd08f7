"""Every config composes and validates; bad choices and keys fail at start-up with the choices named."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from tests.conftest import compose_config
from whytune.config import CONFIG_DIR, ModelSource, arm_choices, load_arm, validate

GROUPS = sorted({p.parent.name for p in CONFIG_DIR.rglob("*.yaml") if p.parent != CONFIG_DIR})
OPTIONS = [(p.parent.relative_to(CONFIG_DIR).as_posix(), p.stem) for p in sorted(CONFIG_DIR.rglob("*.yaml"))
           if p.parent != CONFIG_DIR and p.parent.name != "arm"]


def test_walk_finds_every_group():
    """The walk below is recursive and sees each group; a test that checks fewer files than exist is a lie."""
    assert {"arm", "model", "experiment"} <= set(GROUPS)
    assert len(OPTIONS) == len(list((CONFIG_DIR / "model").glob("*.yaml"))) + len(
        list((CONFIG_DIR / "experiment").glob("*.yaml")))


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_and_validates(group, option):
    cfg = validate(compose_config(f"{group}={option}", "out=somewhere"))
    assert cfg.out == "somewhere"
    assert cfg.model.name
    if group == "model":
        assert cfg.model.name == option


@pytest.mark.parametrize("arm", arm_choices())
def test_every_arm_loads(arm):
    assert load_arm(arm).name == arm


def test_default_is_the_three_arm_demo_on_the_embedded_model():
    cfg = validate(compose_config())
    assert cfg.arms == ["baseline", "demos", "demos_principles"]
    assert cfg.model.source is ModelSource.gguf_package
    assert cfg.out == "runs/demo"


def test_unknown_arm_lists_the_choices():
    with pytest.raises(ValueError, match="unknown arm 'nope'; choices: baseline, demos, demos_principles"):
        validate(compose_config("arms=[baseline,nope]"))


def test_unknown_model_lists_the_choices():
    with pytest.raises(MissingConfigException) as error:
        compose_config("model=nope")
    assert "Available options in 'model'" in str(error.value)
    assert "smollm2-135m" in str(error.value) and "tiny-random" in str(error.value)


@pytest.mark.parametrize(("override", "error"), [
    ("train.lrr=0.1", ConfigCompositionException),  # a mistyped key
    ("train.lr=fast", ValidationError),  # a wrong type
    ("model.source=magic", ValidationError),  # not a known source
])
def test_bad_keys_and_types_fail_at_startup(override, error):
    with pytest.raises((error, ConfigCompositionException)):
        validate(compose_config(override))
