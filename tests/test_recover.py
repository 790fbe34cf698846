"""Recovery by distillation: the fused head loss against its plain definition, windows, schedule, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finescope_core.config import RecoverConfig
from finescope_core.models import load_model, load_tokenizer
from finescope_core.recover import (
    FusedHeadLoss,
    checkpoint_steps,
    decoder_and_head,
    plan_steps,
    recover,
    reference_loss,
    training_windows,
    warmup_cosine,
    window_order,
)

TEXTS = [f"Patient {i} presents with fever and a cough; the dose of paracetamol is {i * 5} mg per kilogram."
         for i in range(40)]


@pytest.mark.parametrize(("temperature", "lm_weight"),
                         [(1.0, 0.0), (2.0, 0.0), (1.0, 1.0), (2.0, 1.0), (1.0, 0.5), (1.5, 0.3)])
def test_fused_loss_and_gradient_equal_the_plain_definition(temperature, lm_weight):
    torch.manual_seed(0)
    n, dim, vocab = 300, 16, 500  # 300 positions: three chunks, the last one partial
    hidden = torch.randn(n, dim, requires_grad=True)
    head, teacher_hidden, teacher_head = torch.randn(vocab, dim), torch.randn(n, dim), torch.randn(vocab, dim)
    labels = torch.randint(vocab, (n,))
    fused = FusedHeadLoss.apply(hidden, head, teacher_hidden, teacher_head, labels, temperature, lm_weight,
                                torch.float32)
    (fused_grad,) = torch.autograd.grad(2 * fused, hidden)
    plain_hidden = hidden.detach().clone().requires_grad_()
    plain = reference_loss(plain_hidden @ head.T, teacher_hidden @ teacher_head.T, labels, temperature, lm_weight)
    (plain_grad,) = torch.autograd.grad(2 * plain, plain_hidden)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-7)


def test_the_loss_is_zero_when_the_student_is_the_teacher():
    torch.manual_seed(1)
    hidden, head = torch.randn(50, 8), torch.randn(100, 8)
    loss = FusedHeadLoss.apply(hidden, head, hidden, head, torch.zeros(50, dtype=torch.long), 1.0, 0.0,
                               torch.float32)
    assert abs(float(loss)) < 1e-5


def test_windows_pack_every_text_behind_a_prefix_token(tiny_model: Path):
    tokenizer = load_tokenizer(tiny_model)
    windows = training_windows(tokenizer, TEXTS[:3], 16)
    stream = []
    for text in TEXTS[:3]:
        stream += [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert windows.shape == ((len(stream) - 1) // 16, 17)
    assert windows[0].tolist() == stream[:17] and windows[1].tolist() == stream[16:33]  # targets overlap inputs by 1
    with pytest.raises(ValueError, match=r"recover\.sequence_tokens=4096"):
        training_windows(tokenizer, TEXTS[:1], 4096)


def test_window_order_visits_every_window_once_per_pass():
    order = window_order(10, steps=7, per_step=3, seed=0)  # 21 windows: two whole passes and one
    assert order.shape == (7, 3)
    flat = order.flatten().tolist()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]
    assert window_order(10, 7, 3, seed=0).equal(order) and not window_order(10, 7, 3, seed=1).equal(order)


def test_budget_schedule_and_checkpoints_follow_the_step_count():
    cfg = RecoverConfig(tokens=1000, sequence_tokens=16, batch_sequences=4)
    assert plan_steps(cfg) == 16  # 15.6 steps of 64 positions: at least the budget
    factor = warmup_cosine(2, 10)
    assert [round(factor(s), 3) for s in (0, 1, 2)] == [0.333, 0.667, 1.0]
    assert factor(6) == pytest.approx(0.5) and factor(10) == pytest.approx(0.0)
    assert checkpoint_steps(6, 4) == {1, 2, 4, 5} and checkpoint_steps(100, 4) == {20, 40, 60, 80}
    assert checkpoint_steps(1, 4) == set() and checkpoint_steps(10, 0) == set()


@pytest.fixture(scope="module")
def student(tiny_model: Path, tmp_path_factory) -> Path:
    """The tiny model with noise on every weight but the vocabulary matrices: a student that lost some of it."""
    model = load_model(tiny_model)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "embed" not in name and "norm" not in name:
                weight.add_(0.5 * weight.std() * torch.randn_like(weight))
    folder = tmp_path_factory.mktemp("student")
    model.save_pretrained(folder)
    load_tokenizer(tiny_model).save_pretrained(folder)
    return folder


def kl_to_teacher(student_dir: Path, teacher_dir: Path) -> float:
    windows = training_windows(load_tokenizer(teacher_dir), TEXTS, 32)[:, :-1]
    with torch.no_grad():
        student, teacher = load_model(student_dir)(windows).logits, load_model(teacher_dir)(windows).logits
    return float(reference_loss(student.flatten(0, 1), teacher.flatten(0, 1), windows.flatten(), 1.0, 0.0))


CFG = RecoverConfig(tokens=32 * 4 * 8, sequence_tokens=32, batch_sequences=4, lr=3e-3, checkpoints=3, lm_weight=0.0)


@pytest.mark.parametrize(("method", "precision"), [("full", "float32"), ("lora", "float32"), ("full", "bfloat16")])
def test_recovery_moves_the_student_toward_the_teacher(tiny_model, student, tmp_path, method, precision):
    cfg = CFG.model_copy(update={"method": method, "precision": precision})
    report = recover(student, tiny_model, TEXTS, tmp_path / "out", cfg, str(tmp_path / "ckpt"))
    assert report["steps"] == 8 and report["supervised_tokens"] == 1024 and report["loss"] == "distillation"
    assert not list((tmp_path / "out").glob("adapter_*"))  # LoRA merged: a stock folder
    assert kl_to_teacher(tmp_path / "out", tiny_model) < 0.8 * kl_to_teacher(student, tiny_model)
    recovered = load_model(tmp_path / "out")
    assert torch.equal(recovered.get_input_embeddings().weight, load_model(student).get_input_embeddings().weight)
    assert not (tmp_path / "ckpt").exists()


def test_the_teacher_runs_once_per_window_and_the_model_trained_is_the_same(tiny_model, student, tmp_path):
    cfg = CFG.model_copy(update={"tokens": 32 * 4 * 24})  # about three passes over the windows
    kept = recover(student, tiny_model, TEXTS, tmp_path / "kept", cfg, str(tmp_path / "ckpt-kept"))
    uncached = cfg.model_copy(update={"teacher_cache_gb": 0.0})
    computed = recover(student, tiny_model, TEXTS, tmp_path / "computed", uncached, str(tmp_path / "ckpt-computed"))
    assert kept["epochs"] > 2.5
    assert kept["teacher_windows_computed"] == kept["windows"]
    assert computed["teacher_windows_computed"] == computed["steps"] * cfg.batch_sequences
    assert kept["last_loss"] == pytest.approx(computed["last_loss"], rel=1e-5)
    trained = [load_model(tmp_path / name).state_dict() for name in ("kept", "computed")]
    assert all(torch.allclose(trained[0][name], trained[1][name], atol=1e-6) for name in trained[0])


def test_plain_language_modelling_needs_no_teacher(tiny_model, student, tmp_path):
    cfg = CFG.model_copy(update={"lm_weight": 1.0, "tokens": 256})
    assert recover(student, None, TEXTS, tmp_path / "out", cfg, str(tmp_path / "ckpt"))["loss"] == "lm"
    with pytest.raises(ValueError, match="lm_weight < 1 distils from a teacher"):
        recover(student, None, TEXTS, tmp_path / "out2", CFG, str(tmp_path / "ckpt"))


def test_a_killed_recovery_resumes_from_its_last_checkpoint(tiny_model, student, tmp_path, monkeypatch):
    straight = recover(student, tiny_model, TEXTS, tmp_path / "a", CFG, str(tmp_path / "ckpt-a"))

    import finescope_core.recover as module

    original_step, calls = module.Distiller.step, {"n": 0}

    def killed_at_step_seven(self, windows):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return original_step(self, windows)

    monkeypatch.setattr(module.Distiller, "step", killed_at_step_seven)
    with pytest.raises(KeyboardInterrupt):
        recover(student, tiny_model, TEXTS, tmp_path / "b", CFG, str(tmp_path / "ckpt-b"))
    assert (tmp_path / "ckpt-b" / "state.pt").is_file()  # checkpoints after steps 2, 4 and 6 of 8
    monkeypatch.setattr(module.Distiller, "step", original_step)
    resumed = recover(student, tiny_model, TEXTS, tmp_path / "b", CFG, str(tmp_path / "ckpt-b"))
    assert resumed["resumed_at"] == 6
    assert resumed["last_loss"] == pytest.approx(straight["last_loss"], rel=1e-4)
    assert not (tmp_path / "ckpt-b").exists()


def test_models_whose_logits_are_not_a_plain_projection_are_refused(tiny_model):
    model = load_model(tiny_model)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="no soft-capping"):
        decoder_and_head(model)
