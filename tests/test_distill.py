"""Distillation: the KD loss by hand, proxy scores on digits, full training and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import cli
from akd_mobile.builder import build_student
from akd_mobile.data import load_dataset
from akd_mobile.distill import ProxyBudget, TrainConfig, kd_loss, proxy_score, torch_threads, train_student
from akd_base.errors import DistillError
from akd_mobile.space import get_space

# The cheapest architecture of mnasnet-small: depthwise blocks, fewest layers.
CHEAP = "dw_k3_se0_id_f75_l1-dw_k3_se0_id_f75_l1-dw_k3_se0_id_f75_l2-dw_k3_se0_id_f75_l3-dw_k3_se0_id_f75_l2-dw_k3_se0_id_f75_l2-dw_k3_se0_id_f75_l1"
FAST = ProxyBudget(steps=40, batch_size=64, lr=0.1, eval_images=None)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def arch(digits):
    return get_space("mnasnet-small", digits.input_shape, digits.num_classes).decode(CHEAP)


@pytest.fixture(scope="module")
def oracle_logits(digits):
    """A confident teacher that is always right: 5 on the true class, 0 elsewhere."""
    return F.one_hot(digits.train_y, 10).float() * 5.0


# ---------------------------------------------------------------- the KD loss, worked out by hand


def test_alpha_0_is_plain_cross_entropy():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[9.0, -9.0, 0.0]])  # ignored at alpha 0
    # -log(e^3 / (e^1 + e^2 + e^3)) = log(1 + e^-1 + e^-2)
    want = math.log(1 + math.exp(-1) + math.exp(-2))
    got = kd_loss(student, teacher, torch.tensor([2]), temperature=3.0, alpha=0.0)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_alpha_1_is_t_squared_times_the_kl_divergence_at_temperature_t():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    # At T=2 the teacher's softmax is (3/4, 1/4) and the student's (1/2, 1/2):
    # KL = 3/4 log(3/2) + 1/4 log(1/2); the loss is T^2 = 4 times that.
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    got = kd_loss(student, teacher, torch.tensor([1]), temperature=2.0, alpha=1.0)
    assert got.item() == pytest.approx(4 * kl, rel=1e-6)
    assert 4 * kl == pytest.approx(0.523248, abs=1e-6)


def test_alpha_mixes_the_two_terms():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    got = kd_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=0.25)
    assert got.item() == pytest.approx(0.25 * 4 * kl + 0.75 * math.log(2.0), rel=1e-6)


def test_temperature_divides_the_logits():
    student = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.5, 0.2, -0.4], [0.0, 2.5, 0.5]])
    labels = torch.tensor([0, 1])
    hot = kd_loss(student, teacher, labels, temperature=4.0, alpha=1.0)
    # The same distributions at T=1 after dividing the logits by 4, then scaled by T^2 = 16.
    cold = kd_loss(student / 4, teacher / 4, labels, temperature=1.0, alpha=1.0)
    assert hot.item() == pytest.approx(16 * cold.item(), rel=1e-5)
    assert kd_loss(teacher, teacher, labels, temperature=4.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temperature, alpha", [(0.0, 0.5), (-1.0, 0.5), (2.0, 1.5), (2.0, -0.1)])
def test_bad_temperature_or_alpha_is_refused(temperature, alpha):
    x = torch.zeros(1, 2)
    with pytest.raises(DistillError):
        kd_loss(x, x, torch.tensor([0]), temperature, alpha)


# ---------------------------------------------------------------- proxy scores


def test_a_ce_proxy_score_on_digits_beats_chance_clearly(arch, digits):
    result = proxy_score(arch, digits, None, FAST, mode="ce", threads=1)
    assert result.accuracy >= 0.5  # chance is 0.1
    assert result.steps == 40 and result.train_images == 40 * 64 and result.val_images == len(digits.val_y)
    assert result.train_s > 0 and result.eval_s > 0
    assert result.images_per_s == pytest.approx(result.train_images / result.train_s)


def test_a_kd_proxy_score_learns_from_the_teacher(arch, digits, oracle_logits):
    result = proxy_score(arch, digits, oracle_logits, FAST, mode="kd", threads=1)
    assert result.accuracy >= 0.5
    # A teacher that is always wrong (confident on the next class) drags the score down.
    liar = oracle_logits.roll(1, dims=1)
    misled = proxy_score(arch, digits, liar, ProxyBudget(steps=40, batch_size=64, lr=0.1, alpha=1.0), threads=1)
    assert misled.accuracy < 0.3


def test_same_seed_same_result_other_seed_other_result(arch, digits, oracle_logits):
    budget = ProxyBudget(steps=8, batch_size=32, eval_images=64)
    a = proxy_score(arch, digits, oracle_logits, budget, seed=3, threads=1)
    b = proxy_score(arch, digits, oracle_logits, budget, seed=3, threads=1)
    c = proxy_score(arch, digits, oracle_logits, budget, seed=4, threads=1)
    assert (a.accuracy, a.final_loss) == (b.accuracy, b.final_loss)
    assert c.final_loss != a.final_loss


def test_epochs_set_the_number_of_steps(digits):
    budget = ProxyBudget(epochs=2.0, batch_size=100)
    assert budget.num_steps(len(digits.train_y)) == math.ceil(2 * len(digits.train_y) / 100)
    assert ProxyBudget().num_steps(54000) * ProxyBudget().batch_size == 10_000


def test_a_student_for_other_images_is_refused(digits):
    rgb = get_space("mnasnet-small", (3, 32, 32), 10).decode(CHEAP)
    with pytest.raises(DistillError, match="--input 1x28x28 --classes 10"):
        proxy_score(rgb, digits, None, FAST, mode="ce")


def test_kd_without_or_with_misshapen_teacher_logits_is_refused(arch, digits):
    with pytest.raises(DistillError, match="needs teacher logits"):
        proxy_score(arch, digits, None, FAST, mode="kd")
    with pytest.raises(DistillError, match="teacher logits have shape"):
        proxy_score(arch, digits, torch.zeros(5, 10), FAST, mode="kd")
    with pytest.raises(DistillError, match="unknown mode"):
        proxy_score(arch, digits, None, FAST, mode="nas")


def test_batch_norm_recalibration_uses_the_exact_statistics_of_the_images():
    from torch import nn

    from akd_mobile.distill import _recalibrate_batch_norm

    model = nn.Sequential(nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(70, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1
    _recalibrate_batch_norm(model, x, torch.device("cpu"), batch_size=10)
    bn = model[0]
    assert torch.allclose(bn.running_mean, x.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_a_very_short_budget_still_scores_well_after_recalibration(arch, digits, oracle_logits):
    short = ProxyBudget(steps=12, batch_size=64, lr=0.1, eval_images=None)
    kept = proxy_score(arch, digits, oracle_logits, replace(short, bn_images=0), threads=1)
    recalibrated = proxy_score(arch, digits, oracle_logits, short, threads=1)
    assert recalibrated.accuracy > kept.accuracy


# ---------------------------------------------------------------- full training


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_train_student_reports_test_accuracy_and_weights_that_load(arch, digits, oracle_logits, schedule):
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1, schedule=schedule, augment="none")
    with torch_threads(1):
        model, result = train_student(arch, digits, oracle_logits, config, mode="kd", seed=0)
    assert result.epochs == 2 and len(result.val_history) == 2 and result.mode == "kd"
    assert result.test_accuracy > 0.3
    fresh = build_student(arch)
    fresh.load_state_dict(model.state_dict())
    x = digits.test_x[:8]
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TrainConfig(epochs=1, schedule="linear"), "unknown schedule"),
        (lambda: TrainConfig(epochs=0), "at least one epoch"),
        (lambda: TrainConfig(alpha=2.0), "alpha in"),
        (lambda: ProxyBudget(temperature=0.0), "temperature > 0"),
        (lambda: ProxyBudget(steps=0), "steps >= 1"),
        (lambda: ProxyBudget(batch_size=0), "batch size"),
        (lambda: ProxyBudget(eval_images=0), "eval_images"),
    ],
)
def test_bad_budgets_and_configs_are_refused_when_made(make, message):
    with pytest.raises(DistillError, match=message):
        make()


def test_the_distill_command_refuses_a_bad_alpha_before_any_work(tmp_path):
    result = CliRunner().invoke(
        cli.cli, ["distill", CHEAP, "--data", "digits", "--epochs", "1", "--alpha", "1.5", "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 2 and "alpha in [0, 1]" in result.stderr


def test_the_distill_command_trains_saves_and_reports(tmp_path):
    out = tmp_path / "student.pt"
    result = CliRunner().invoke(
        cli.cli,
        ["distill", CHEAP, "--data", "digits", "--mode", "ce", "--epochs", "2", "--batch-size", "64",
         "--threads", "1", "--out", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["mode"] == "ce" and row["data"] == "digits" and 0.3 < row["test_accuracy"] <= 1.0
    arch = get_space("mnasnet-small").decode(CHEAP)
    build_student(arch).load_state_dict(torch.load(out, weights_only=True))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_the_distill_command_distils_from_a_teacher_file(tmp_path):
    from teacher_support import linear_digits_teacher

    linear_digits_teacher(tmp_path / "teacher.ts", epochs=1)
    result = CliRunner().invoke(
        cli.cli,
        ["distill", CHEAP, "--teacher", str(tmp_path / "teacher.ts"), "--data", "digits", "--epochs", "1",
         "--batch-size", "64", "--threads", "1", "--out", str(tmp_path / "student.pt"), "--json"],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["mode"] == "kd" and row["teacher"] == str(tmp_path / "teacher.ts") and row["epochs"] == 1


def test_the_distill_command_refuses_a_teacher_near_chance_before_training(tmp_path, digits):
    from akd_mobile.teachers import evaluate_teacher, load_teacher

    measured = evaluate_teacher(load_teacher("default"), digits, "val")
    out = tmp_path / "student.pt"
    result = CliRunner().invoke(cli.cli, ["distill", CHEAP, "--data", "digits", "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: teacher default (trained on fashion-mnist)")
    assert f"scores {measured:.4f} on the digits validation split, near chance" in lines[0]
    assert "--teacher t.pt" in lines[0] and not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--torch-device", "cuda:7"], "CUDA is not available"),
        (["--torch-device", "tpu"], "torch device"),
        (["--teacher", "/no/such/teacher.pt2"], "no such file"),
    ],
)
def test_the_distill_command_reports_bad_options_in_one_line(tmp_path, args, message):
    if "cuda" in args[-1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(
        cli.cli, ["distill", CHEAP, "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "s.pt"), *args]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_batch_norm_folding_keeps_the_outputs_and_removes_every_batch_norm(arch):
    from torch import nn

    from akd_mobile.distill import _fold_batch_norm

    model = build_student(arch, seed=0)
    model.train()
    with torch.no_grad():  # move the running statistics away from 0 and 1
        model(torch.randn(32, *arch.input_shape) * 2 + 1)
    model.eval()
    x = torch.randn(8, *arch.input_shape)
    folded = _fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
