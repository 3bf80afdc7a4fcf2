"""Every YAML under configs/ composes against its typed schema; typos and wrong types are errors."""

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from kfm.data_pipeline.build import DataBuildJob
from kfm.schemas import SCHEMAS, register_schemas
from kfm.train.config import PretrainJob

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_schemas()  # all of them, from kfm.schemas
JOBS = ["tokenizer_train", "data_build", "pretrain", "export_hf", "generate", "sample_corpus", "consolidate",
        "evaluate_lm", "verify", "keygen"]
GROUP_JOB = {"model": "pretrain", "data": "data_build", "loader": "pretrain", "optim": "pretrain", "trainer": "pretrain",
             "cluster": "pretrain", "experiment": "pretrain", "tokenizer": "tokenizer_train"}


def load(job: str, overrides=(), config_dir: Path = CONFIGS):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name=job, overrides=list(overrides)))


@pytest.mark.parametrize("job", JOBS)
def test_every_job_config_loads(job):
    load(job)


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_group_yaml_loads_against_its_schema(path):
    group = path.parent.name
    if group == "experiment":  # optional presets, added with '+'; the hydra: resolver exists only in a run
        load("pretrain", [f"+experiment={path.stem}", "run_dir=x", "trainer.metrics.wandb_group=g"])
    else:
        load(GROUP_JOB[group], [f"{group}={path.stem}"])


def test_groups_compose_into_typed_objects():
    job = load("pretrain", ["run_dir=somewhere", "model.dim=128", "trainer.steps=7"])
    assert isinstance(job, PretrainJob) and job.model.dim == 128 and job.trainer.steps == 7
    assert job.loader.weights == {"ko": 0.7, "en": 0.15, "code": 0.15}
    build = load("data_build", ["run_dir=x"])
    assert isinstance(build, DataBuildJob) and build.tokenizer_model == "x/tokenizer/tokenizer.model"


def test_override_typo_is_an_error():
    with pytest.raises(ConfigCompositionException, match="dimm"):
        load("pretrain", ["model.dimm=128"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigCompositionException, match="model.dim"):
        load("pretrain", ["model.dim=wide"])


def test_invalid_value_is_an_error():
    with pytest.raises(ValueError, match="divisible"):
        load("pretrain", ["model.dim=250"])
    with pytest.raises(ValueError, match="exceeds model.max_seq_len"):
        load("pretrain", ["loader.seq_len=1024"])


def test_typo_inside_a_yaml_file_is_an_error(tmp_path):
    shutil.copytree(CONFIGS, tmp_path / "configs")
    bad = tmp_path / "configs" / "trainer" / "demo.yaml"
    bad.write_text(bad.read_text().replace("log_every:", "log_evry:"))
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError), match="log_evry"):
        load("pretrain", config_dir=tmp_path / "configs")


@pytest.mark.parametrize("override, allowed", [
    ("trainer.parallelism.backend=fsdp3", "fsdp2, hsdp, ddp, deepspeed"),
    ("trainer.parallelism.param_dtype=fp16", "fp32, bf16"),
    ("trainer.stability.spike_action=ignore", "skip, stop, rollback"),
    ("trainer.metrics.wandb_mode=on", "offline, online, disabled"),
    ("optim.schedule=linear", "cosine, wsd, constant"),
])
def test_a_misspelt_choice_is_refused_at_composition_naming_the_allowed_values(override, allowed):
    with pytest.raises(ConfigCompositionException) as err:
        load("pretrain", [override])
    message = f"{err.value} {err.value.__cause__}"
    assert override.split("=")[1] in message and allowed in message, message


def test_choices_are_enums_equal_to_their_strings():
    from kfm.train.config import Backend

    job = load("pretrain", ["trainer.parallelism.backend=deepspeed"])
    assert job.trainer.parallelism.backend is Backend.deepspeed and job.trainer.parallelism.backend == "deepspeed"
    with pytest.raises(ValueError, match="trainer.parallelism.backend must be one of fsdp2, hsdp, ddp, deepspeed"):
        from kfm.train.config import ParallelismConfig

        ParallelismConfig(backend="fsdp3")  # built in Python: the same refusal


def test_the_flat_keys_of_before_the_redesign_are_refused():
    """``trainer.backend`` became ``trainer.parallelism.backend`` (CHANGELOG lists every move)."""
    with pytest.raises(ConfigCompositionException, match="backend"):
        load("pretrain", ["trainer.backend=ddp"])


def test_every_top_level_config_names_a_registered_schema():
    """kfm.schemas is the one place: each configs/<tool>.yaml's first default is a schema it lists."""
    import yaml

    for path in sorted(CONFIGS.glob("*.yaml")):
        first = yaml.safe_load(path.read_text())["defaults"][0]
        assert first in SCHEMAS, f"{path.name}: {first} is not in kfm.schemas.SCHEMAS"
