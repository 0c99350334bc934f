"""`key=value` overrides of frozen-dataclass configs: parsing to the field's type, and errors that name the key,
the expected type and the valid keys (nearest first)."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import pytest

from jaxllm.config import ConfigError, all_keys, apply_overrides, check, check_choice, to_dict
from jaxllm.parallel import MeshConfig
from jaxllm.train import TrainerConfig


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    name: Literal["adam", "adamw", "muon"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self):
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class Cfg:
    steps: int = 10
    seed: int = 0
    use_bias: bool = False
    width: Optional[int] = None
    label: str = "x"
    moduli: tuple[int, ...] = (23, 47)
    optim: Optim = Optim()
    trainer: TrainerConfig = TrainerConfig()
    run_dir: str = ""


def test_parses_each_type():
    cfg = apply_overrides(Cfg(), [
        "steps=1e3", "use_bias=true", "width=64", "label=hello=world", "moduli=5,7,11",
        "optim.lr=3e-4", "optim.name=muon", "optim.betas=(0.8, 0.95)", "trainer.mesh.fsdp=2",
        "trainer.progress=off",
    ])
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert cfg.use_bias is True and cfg.width == 64 and cfg.label == "hello=world"
    assert cfg.moduli == (5, 7, 11)
    assert cfg.optim == Optim(lr=3e-4, name="muon", betas=(0.8, 0.95))
    assert cfg.trainer.mesh == MeshConfig(fsdp=2) and cfg.trainer.progress is False
    assert apply_overrides(cfg, ["width=None"]).width is None
    assert apply_overrides(cfg, ["moduli=[]"]).moduli == ()
    for text, value in [("1", True), ("yes", True), ("False", False), ("0", False)]:
        assert apply_overrides(Cfg(), [f"use_bias={text}"]).use_bias is value
    assert Cfg().optim.lr == 1e-3  # the default is untouched (frozen, replaced)
    assert to_dict(cfg)["optim"]["betas"] == [0.8, 0.95]


def test_unknown_key_lists_nearest_valid_keys_first():
    with pytest.raises(ConfigError) as e:
        apply_overrides(Cfg(), ["optim.lrr=1"])
    msg = str(e.value)
    assert "unknown key 'optim.lrr'" in msg
    listed = msg.split("nearest first): ")[1].split(", ")
    assert listed[0] == "optim.lr"
    assert set(listed) == set(all_keys(Cfg)) and "trainer.mesh.tensor" in listed
    with pytest.raises(ConfigError, match=r"valid keys \(nearest first\): steps, "):
        apply_overrides(Cfg(), ["stepz=3"])
    with pytest.raises(ConfigError, match="unknown key 'optim'"):  # a whole sub-config is not a value
        apply_overrides(Cfg(), ["optim=adam"])


@pytest.mark.parametrize("override, expected", [
    ("steps=ten", r"key 'steps': expected int"),
    ("steps=1.5", r"key 'steps': expected int"),
    ("use_bias=maybe", r"key 'use_bias': expected bool"),
    ("width=wide", r"key 'width': expected Optional\[int\]"),
    ("optim.name=sgd", r"key 'optim.name': expected Literal\['adam', 'adamw', 'muon'\]"),
    ("optim.betas=0.9", r"key 'optim.betas': expected tuple\[float, float\].*expected 2 comma-separated"),
    ("moduli=5,x", r"key 'moduli': expected tuple\[int, \.\.\.\]"),
    ("optim.lr=fast", r"key 'optim.lr': expected float"),
])
def test_bad_value_names_key_and_expected_type(override, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(Cfg(), [override])


def test_key_given_twice_and_malformed():
    with pytest.raises(ConfigError, match="key 'optim.lr' is given twice"):
        apply_overrides(Cfg(), ["optim.lr=1", "steps=2", "optim.lr=2"])
    with pytest.raises(ConfigError, match="'steps' is not key=value"):
        apply_overrides(Cfg(), ["steps"])


def test_post_init_validation_runs_on_overrides():
    with pytest.raises(ConfigError, match="optim.lr must be > 0, got -1.0"):
        apply_overrides(Cfg(), ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="trainer.grad_accum must be >= 1"):
        apply_overrides(Cfg(), ["trainer.grad_accum=0"])
    with pytest.raises(ConfigError, match="mesh.tensor must be >= 1"):
        apply_overrides(Cfg(), ["trainer.mesh.tensor=0"])
    with pytest.raises(ConfigError, match=r"best_mode='up' not in \['min', 'max'\]"):
        TrainerConfig(best_mode="up")
    with pytest.raises(ConfigError, match=r"act='tanh' is not one of \['relu', 'silu'\]"):
        check_choice("act", "tanh", ["relu", "silu"])


def test_comma_list_strips_items_and_drops_empty_ones():
    from jaxllm.config import comma_list

    assert comma_list(" web, code ,,math,") == ["web", "code", "math"]
    assert comma_list("") == []
