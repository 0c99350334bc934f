"""`key=value` overrides of frozen-dataclass configs: parsing to the field's type, and errors that name the key,
the expected type and the valid keys (nearest first); nested configs set by name (presets, optimizer classes)
then by dotted keys; aliases; config.json written and read back."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal, Optional

import pytest

from jaxllm.config import (
    ConfigError,
    all_keys,
    apply_overrides,
    check,
    check_choice,
    from_dict,
    register_choices,
    to_dict,
)
from jaxllm.models import TransformerConfig, get_preset
from jaxllm.optim import build
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


# ---------------------------------------------------------------------------------------------------------------
# Nested configs set by name.


@dataclasses.dataclass(frozen=True)
class Arch:
    width: int = 8
    depth: int = 2


register_choices(Arch, {"small": Arch(4, 1), "big": Arch(64, 8)})


@dataclasses.dataclass(frozen=True)
class Opt:
    name: str = dataclasses.field(default="", init=False)
    lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Sgd(Opt):
    name: str = dataclasses.field(default="sgd", init=False)
    momentum: float = 0.0


@dataclasses.dataclass(frozen=True)
class Lion(Opt):
    name: str = dataclasses.field(default="lion", init=False)
    b1: float = 0.9
    betas: tuple[float, float] = (0.9, 0.99)


register_choices(Opt, lambda: {"sgd": Sgd(), "lion": Lion()})  # resolved at use


@dataclasses.dataclass(frozen=True)
class Exp:
    arch: Arch = Arch()
    opt: Opt = Sgd()
    other: Opt = Sgd()
    trainer: TrainerConfig = TrainerConfig()

    CHOICES: ClassVar[dict] = {"other": {"slow": Sgd(lr=1e-5), "fast": Lion(lr=1e-1)}}
    ALIASES: ClassVar[dict] = {"steps": "trainer.steps", "lr": "opt.lr"}

    def __post_init__(self):
        check(self.arch.width >= 2 * self.arch.depth, f"arch.width={self.arch.width} < 2 x arch.depth={self.arch.depth}")


def test_nested_config_by_name_then_dotted_keys_in_either_order():
    for order in (["arch=big", "arch.depth=3", "opt=lion", "opt.b1=0.5"],
                  ["opt.b1=0.5", "arch.depth=3", "opt=lion", "arch=big"]):
        cfg = apply_overrides(Exp(), order)
        assert cfg.arch == Arch(64, 3) and cfg.opt == Lion(b1=0.5) and cfg.other == Sgd()
    # the parent's check runs once, on the final values: depth=20 lands on the big preset (64 >= 40), never on the
    # default Arch(8, 2) that an in-order application would check first
    assert apply_overrides(Exp(), ["arch.depth=20", "arch=big"]).arch == Arch(64, 20)
    with pytest.raises(ConfigError, match=r"arch.width=64 < 2 x arch.depth=40"):
        apply_overrides(Exp(), ["arch=big", "arch.depth=40"])


def test_unknown_choice_lists_known_ones_nearest_first():
    with pytest.raises(ConfigError, match=r"arch='bigg' is not a known choice; known \(nearest first\): big, small"):
        apply_overrides(Exp(), ["arch=bigg"])
    with pytest.raises(ConfigError, match=r"opt='adam' is not a known choice; known \(nearest first\): "):
        apply_overrides(Exp(), ["opt=adam"])


def test_dotted_keys_are_checked_against_the_chosen_class():
    with pytest.raises(ConfigError, match=r"unknown key 'opt.b1' \(opt=lion has it\); valid keys"):
        apply_overrides(Exp(), ["opt.b1=0.5"])  # the default is Sgd
    with pytest.raises(ConfigError, match="unknown key 'opt.momentum'"):
        apply_overrides(Exp(), ["opt=lion", "opt.momentum=0.9"])
    with pytest.raises(ConfigError, match="unknown key 'opt.name'"):  # the recorded name is not a setting
        apply_overrides(Exp(), ["opt.name=lion"])
    assert {"arch", "arch.width", "opt", "opt.lr", "opt.momentum", "steps", "lr"} <= set(all_keys(Exp))


def test_parent_choices_take_precedence_over_the_registry():
    assert apply_overrides(Exp(), ["other=fast"]).other == Lion(lr=1e-1)
    with pytest.raises(ConfigError, match=r"other='lion' is not a known choice; known \(nearest first\): "
                                          r"(slow, fast|fast, slow)"):
        apply_overrides(Exp(), ["other=lion"])


def test_aliases_are_other_spellings_of_one_key():
    cfg = apply_overrides(Exp(), ["steps=5", "lr=0.1", "opt=lion"])
    assert cfg.trainer.steps == 5 and cfg.opt == Lion(lr=0.1)
    with pytest.raises(ConfigError, match="key 'steps' / 'trainer.steps' is given twice"):
        apply_overrides(Exp(), ["steps=5", "trainer.steps=6"])
    assert "steps" not in to_dict(cfg) and to_dict(cfg)["trainer"]["steps"] == 5


def test_to_dict_records_the_chosen_class_and_from_dict_rebuilds_it():
    cfg = apply_overrides(Exp(), ["opt=lion", "opt.betas=0.5,0.6", "arch=big", "other=slow", "trainer.mesh.fsdp=2"])
    data = to_dict(cfg)
    assert data["opt"]["name"] == "lion" and data["other"]["name"] == "sgd"
    assert from_dict(Exp, data) == cfg and isinstance(from_dict(Exp, data).opt.betas, tuple)
    plain = apply_overrides(Cfg(), ["moduli=5,7", "width=3", "optim.betas=0.8,0.9"])
    assert from_dict(Cfg, to_dict(plain)) == plain
    with pytest.raises(ConfigError, match="Exp has no field 'bogus'"):
        from_dict(Exp, {**data, "bogus": 1})


@dataclasses.dataclass(frozen=True)
class Run:
    model: TransformerConfig = TransformerConfig()
    optim: build.OptimizerConfig = build.AdamWConfig()


def test_library_presets_and_optimizers_are_selectable_and_a_resume_sees_the_class(tmp_path):
    """`model=<preset>` takes jaxllm.models.presets.PRESETS, `optim=<name>` jaxllm.optim.build.OPTIMIZERS; a run_dir
    written with AdamW refuses to resume with Adam (coupled L2) although every other field is equal."""
    from jaxllm.train.run import prepare_run_dir

    cfg = apply_overrides(Run(), ["model.d_model=32", "model=tiny_llama", "optim=galore_adamw", "optim.rank=16"])
    assert cfg.model == get_preset("tiny_llama", d_model=32)
    assert cfg.optim == build.GaLoreAdamWConfig(rank=16)
    assert from_dict(Run, to_dict(cfg)) == cfg
    prepare_run_dir(str(tmp_path), Run())
    prepare_run_dir(str(tmp_path), Run())  # same config: resumes
    with pytest.raises(ConfigError, match=r"different config \(optim.name\)"):
        prepare_run_dir(str(tmp_path), Run(optim=build.AdamConfig()))
