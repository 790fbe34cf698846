"""Precision "auto": bfloat16 only where the hardware computes it natively, and the choice is part of a stage's id."""

from __future__ import annotations

import pytest

import finescope_core.precision as precision
from finescope_core import stages
from finescope_core.config import EvalConfig, ModelConfig, RecoverConfig
from finescope_core.precision import cpu_has_bfloat16, resolve_precision
from finescope_core.recover import recover

X86_WITHOUT = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
X86_WITH = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
ARM_WITH = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [(X86_WITHOUT, False), (X86_WITH, True), (ARM_WITH, True), ("", False),
                                                 ("flags\t: amx_bf16 amx_tile\n", True)])
def test_native_bfloat16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert cpu_has_bfloat16(cpuinfo) is native


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """Pretend to run on a CPU whose /proc/cpuinfo is the text passed."""

    def use(cpuinfo: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo)
        monkeypatch.setattr(precision, "CPUINFO", path)

    return use


def test_auto_picks_bfloat16_only_where_it_is_native_and_explicit_choices_stand(cpu):
    cpu(X86_WITHOUT)
    assert resolve_precision("auto", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    cpu(X86_WITH)
    assert resolve_precision("auto", "cpu") == "bfloat16"
    assert resolve_precision("float32", "cpu") == "float32"
    with pytest.raises(ValueError, match="use auto, bfloat16 or float32"):
        resolve_precision("fp16", "cpu")


def test_recovery_on_auto_trains_in_float32_on_a_cpu_without_bfloat16(cpu, tiny_model, tmp_path):
    cpu(X86_WITHOUT)
    cfg = RecoverConfig(tokens=64, sequence_tokens=16, batch_sequences=2, checkpoints=0)
    texts = [f"Sample {i}: the dose is {i} mg." for i in range(20)]
    report = recover(tiny_model, tiny_model, texts, tmp_path / "out", cfg, str(tmp_path / "ckpt"))
    assert report["precision"] == "float32"


def test_the_precision_auto_resolves_to_is_part_of_the_stage_identity(cpu, tiny_model, tmp_path, monkeypatch):
    """A model trained or scored in bfloat16 on one machine is not reused as the float32 result on another."""
    seen: list[tuple[str, dict]] = []
    monkeypatch.setattr(stages, "run_stage", lambda root, name, inputs, cfg, work, **_: seen.append((name, cfg)) or {
        "uri": str(tmp_path), "fingerprint": name})
    ref = {"uri": str(tiny_model), "model_uri": str(tiny_model), "fingerprint": "m"}
    for cpuinfo in (X86_WITHOUT, X86_WITH):
        cpu(cpuinfo)
        stages.recovered(str(tmp_path), ref, ref, ref, "curated.parquet", RecoverConfig(), "cpu")
        stages.evaluation(str(tmp_path), ref, ref, ["medicine"], EvalConfig(precision="auto"), ModelConfig())
    chosen = [(name, cfg.precision if name == "recovered" else cfg["cfg"]["precision"]) for name, cfg in seen]
    assert chosen == [
        ("recovered", "float32"), ("eval", "float32"), ("recovered", "bfloat16"), ("eval", "bfloat16")]


def test_the_task_cache_key_of_an_auto_config_depends_on_the_machine_s_bfloat16(cpu):
    from types import SimpleNamespace

    from finescope.tasks.caching import stage_cache_key

    context = SimpleNamespace(task=SimpleNamespace(name="recover_model", fn=lambda: None))

    def key(cfg: RecoverConfig) -> str:
        return stage_cache_key(context, {"recover": cfg, "device": "cpu"})

    cpu(X86_WITHOUT)
    without = key(RecoverConfig()), key(RecoverConfig(precision="float32"))
    cpu(X86_WITH)
    with_bfloat16 = key(RecoverConfig()), key(RecoverConfig(precision="float32"))
    assert without[0] != with_bfloat16[0]
    assert without[1] == with_bfloat16[1]
