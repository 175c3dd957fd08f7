"""Every config composes and validates; bad choices and keys fail at start-up with the choices named."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from tests.conftest import compose_config
from whytune.config import CONFIG_DIR, ModelSource, arm_choices, load_arm, validate

# Folders of configs/ that Hydra does not compose: arm files are loaded by name (whytune.config.load_arm), and
# accelerate/ holds `accelerate launch --config_file` files.
NOT_COMPOSED = {"arm", "accelerate"}
FOLDERS = sorted({p.parent.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")} - {"."})
OPTIONS = [
    (p.parent.relative_to(CONFIG_DIR).as_posix(), p.stem)
    for p in sorted(CONFIG_DIR.rglob("*.yaml"))
    if p.parent != CONFIG_DIR and p.parent.relative_to(CONFIG_DIR).as_posix() not in NOT_COMPOSED
]
# Values a user must give for some options (`???` in their file).
REQUIRED = {
    ("judge", "openai"): ["judge.model=m", "judge.base_url=http://127.0.0.1:9/v1"],
    ("judge", "hf"): ["judge.model=m"],
}


def test_walk_finds_every_folder():
    """The walk is recursive and misses no folder: a test that checks fewer files than exist proves less."""
    assert set(FOLDERS) == {"arm", "accelerate", "experiment", "hydra/launcher", "judge", "model"}
    assert len(OPTIONS) == sum(len(list((CONFIG_DIR / f).glob("*.yaml"))) for f in FOLDERS if f not in NOT_COMPOSED)


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}", "out=somewhere", *REQUIRED.get((group, option), [])]
    if group.startswith("hydra/"):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            composed = compose("ablate", overrides=overrides, return_hydra_config=True)
        assert composed.hydra.launcher._target_
        return
    cfg = validate(compose_config(*overrides))
    assert cfg.out == "somewhere"
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
    with pytest.raises(ValueError, match="unknown arm 'nope'; choices: advice, baseline, demos, demos_principles"):
        validate(compose_config("arms=[baseline,nope]"))


def test_unknown_wrong_act_lists_the_choices():
    with pytest.raises(ValueError, match=r"data.wrong_acts: unknown \['murder'\]; choices: coercion, leaking"):
        validate(compose_config("data.wrong_acts=[coercion,murder]"))


def test_sampling_only_is_refused_for_the_organism_experiment():
    with pytest.raises(ValueError, match="does not cover the organism experiment"):
        validate(compose_config("organism.enabled=true", "eval.score=false"))


def test_unknown_model_lists_the_choices():
    with pytest.raises(MissingConfigException) as error:
        compose_config("model=nope")
    assert "Available options in 'model'" in str(error.value)
    assert "smollm2-135m" in str(error.value) and "tiny-random" in str(error.value)


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("train.lrr=0.1", ConfigCompositionException),  # a mistyped key
        ("train.lr=fast", ValidationError),  # a wrong type
        ("model.source=magic", ValidationError),  # not a known source
    ],
)
def test_bad_keys_and_types_fail_at_startup(override, error):
    with pytest.raises((error, ConfigCompositionException)):
        validate(compose_config(override))
