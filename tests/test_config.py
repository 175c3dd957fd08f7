"""Every config composes and validates; bad choices and keys fail at start-up with the choices named."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from tests.conftest import compose_config
from whytune.config import CONFIG_DIR, ModelSource, WriterStyle, arm_choices, validate

# accelerate/ holds `accelerate launch --config_file` files, which Hydra does not compose.
NOT_COMPOSED = {"accelerate"}
FOLDERS = sorted({p.parent.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")} - {"."})
OPTIONS = [
    (p.parent.relative_to(CONFIG_DIR).as_posix(), p.stem)
    for p in sorted(CONFIG_DIR.rglob("*.yaml"))
    if p.parent != CONFIG_DIR and p.parent.relative_to(CONFIG_DIR).as_posix() not in NOT_COMPOSED
]
# Values a user must give for some options (`???` in their file).
REQUIRED = {
    ("judge", "openai"): ["judge.client.model=m", "judge.client.base_url=http://127.0.0.1:9/v1"],
    ("judge", "hf"): ["judge.client.model=m"],
}


def test_walk_finds_every_folder():
    """The walk is recursive and misses no folder: a test that checks fewer files than exist proves less."""
    assert set(FOLDERS) == {"arms", "accelerate", "experiment", "hydra/launcher", "judge", "model", "references"}
    assert len(OPTIONS) == sum(len(list((CONFIG_DIR / f).glob("*.yaml"))) for f in FOLDERS if f not in NOT_COMPOSED)


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}", "out=somewhere", *REQUIRED.get((group, option), [])]
    if group.startswith("hydra/"):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            composed = compose("ablate", overrides=overrides, return_hydra_config=True)
        assert composed.hydra.launcher._target_
        return
    if group == "arms":  # a group of several choices: each arm file alone, beside the baseline
        overrides[0] = f"arms=[baseline,{option}]"
    if group == "references":  # also a group of several choices, none by default
        overrides[0] = f"references=[{option}]"
    cfg = validate(compose_config(*overrides))
    assert cfg.out == "somewhere"
    if group == "model":
        assert cfg.model.name == option
    if group == "arms":
        assert cfg.arms[option].name == option
    if group == "references":  # named by its file; its key only named, never in the config
        assert cfg.references[option].name == option and cfg.references[option].client["api_key_env"]


def test_arm_files_name_themselves():
    """Each arm file's top key is its file name, so `arms=[name]` selects the arm of that name."""
    for arm in arm_choices():
        cfg = validate(compose_config(f"arms=[{arm}]"))
        assert list(cfg.arms) == [arm]


def test_default_is_the_three_arm_demo_on_the_embedded_model():
    cfg = validate(compose_config())
    assert list(cfg.arms) == ["baseline", "demos", "demos_principles"] and cfg.references == {}
    assert cfg.arms["demos_principles"].writer is WriterStyle.demos_principles and cfg.arms["baseline"].writer is None
    assert cfg.model.source is ModelSource.gguf_package
    assert cfg.out == "runs/demo"


def test_unknown_arm_names_the_file_it_looked_for():
    with pytest.raises(MissingConfigException, match="Could not load 'arms/nope'"):
        compose_config("arms=[baseline,nope]")


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("data.wrong_acts=[coercion,murder]", r"Invalid value 'murder', expected one of \[coercion, leaking"),
        ("arms.demos.writer=essays", r"Invalid value 'essays', expected one of \[demos, demos_principles"),
    ],
)
def test_unknown_wrong_act_and_writer_fail_with_the_choices(override, choices):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(override)
    assert re.search(choices, str(error.value.__cause__))


def test_writer_styles_and_wrong_acts_are_the_data_stages_own():
    """The schema's choices are exactly what the data stage can build."""
    from whytune.config import WrongAct
    from whytune.data.scenarios import WRONG_ACTS
    from whytune.data.writers import WRITERS

    assert set(WriterStyle) == set(WRITERS) and set(WrongAct) == set(WRONG_ACTS)


def test_an_arm_is_overridable_from_the_command_line():
    cfg = validate(compose_config("arms.demos.writer=rules", "arms.demos.description=rules under another name"))
    assert cfg.arms["demos"].writer is WriterStyle.rules


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["model.name=claude-opus-4"], "'claude-opus-4' is also the model's or an arm's name"),
        (["references.claude-opus-4.client._target_=whytune.clients.Nope"], "references.claude-opus-4.client: .*Nope"),
    ],
)
def test_a_reference_must_not_clash_and_its_client_must_import(overrides, error):
    """Its folder would be the model's (<out>/<name>/), its row an arm's; a client that cannot be built fails now."""
    with pytest.raises(ValueError, match=error):
        validate(compose_config("references=[claude-opus-4]", *overrides))


def test_comparisons_must_be_pairs():
    with pytest.raises(ValueError, match="each entry is a pair of arms"):
        validate(compose_config("comparisons=[[demos]]"))


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


def test_the_organisms_check_must_be_held_out():
    with pytest.raises(ValueError, match="check_seed must differ"):
        validate(compose_config("organism.check_seed=1"))  # organism.seed's scenarios: trained on


def test_the_persistence_tune_cannot_also_be_an_arm():
    """Both would build their data in the run's one `data/neutral` folder, with different settings."""
    with pytest.raises(ValueError, match="persistence.writer=neutral is also among the arms"):
        validate(compose_config("persistence.enabled=true", "arms=[baseline,neutral]"))
    assert validate(compose_config("persistence.enabled=true", "arms=[baseline,demos]")).persistence.enabled
