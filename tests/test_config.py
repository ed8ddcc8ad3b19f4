import json

import pytest
from pydantic import Field

from diffreid.config import ConfigError, RuntimeConfig, StageConfig
from diffreid.io import atomic_path, atomic_write_json


class Inner(StageConfig):
    rank: int = Field(4, gt=0, description="test")


class Outer(StageConfig):
    name: str = "x"
    inner: Inner = Inner()
    runtime: RuntimeConfig = RuntimeConfig()


def test_load_yaml_with_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner:\n  rank: 8\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nname: child\n")
    cfg = Outer.load(tmp_path / "child.yaml", overrides=["inner.rank=16", "runtime.device=cpu"])
    assert (cfg.name, cfg.inner.rank, cfg.runtime.device) == ("child", 16, "cpu")


def test_unknown_field_and_bad_value_name_the_field(tmp_path):
    (tmp_path / "c.yaml").write_text("inner:\n  rnak: 3\n")
    with pytest.raises(ConfigError, match=r"inner\.rnak"):
        Outer.load(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"inner\.rank"):
        Outer.load(overrides=["inner.rank=0"])
    with pytest.raises(ConfigError, match="does not exist"):
        Outer.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        Outer.load(overrides=["inner.rank"])


def test_yaml_round_trip(tmp_path):
    cfg = Outer.load(overrides=["inner.rank=5"])
    cfg.to_yaml(tmp_path / "out.yaml")
    assert Outer.load(tmp_path / "out.yaml") == cfg


def test_runtime_rejects_fp16_on_cpu():
    rt = RuntimeConfig(device="cpu", dtype="fp16")
    with pytest.raises(ConfigError, match="fp16"):
        rt.torch_dtype()
    assert str(RuntimeConfig(device="cpu", dtype="bf16").torch_dtype()) == "torch.bfloat16"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
