"""Teachers: recipes, file formats, ensembles, the logits cache, and corrupt files."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import cli
from akd_mobile.data import FASHION_MNIST_DIR, load_dataset
from akd_mobile.errors import TeacherError
from akd_mobile.teachers import (
    DEFAULT_TEACHER,
    RECIPES,
    Teacher,
    TeacherTrainResult,
    cached_logits,
    load_teacher,
    save_teacher,
    teacher_info,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def _x(n: int = 7) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_a_classifier(name):
    model = RECIPES[name].build(1, 10).eval()
    with torch.no_grad():
        assert model(_x(2)).shape == (2, 10)
    rgb = RECIPES[name].build(3, 7).eval()
    with torch.no_grad():
        assert rgb(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_recipes_span_two_families():
    assert {r.family for r in RECIPES.values()} >= {"resnet", "vgg"}


def test_a_recipe_checkpoint_round_trips(tmp_path, digits):
    model = RECIPES["resnet"].build(1, 10).eval()
    result = TeacherTrainResult("resnet", "digits", digits.fingerprint, 0, 0.1, 0.1, 1, 1.0, 1.0)
    save_teacher(model, result, digits, tmp_path / "t.pt")
    teacher = load_teacher(str(tmp_path / "t.pt"))
    assert teacher.input_shape == (1, 28, 28) and teacher.num_classes == 10
    with torch.no_grad():
        assert torch.allclose(teacher.logits(_x()), model(_x()), atol=1e-5)


@pytest.mark.parametrize("dynamic", [True, False])
def test_a_torch_export_program_loads_with_a_dynamic_or_static_batch(tmp_path, dynamic):
    model = _tiny(0)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(model, (_x(4),), dynamic_shapes=shapes)
    torch.export.save(program, tmp_path / "t.pt2")
    teacher = load_teacher(str(tmp_path / "t.pt2"))
    with torch.no_grad():
        assert torch.allclose(teacher.logits(_x(7), batch_size=5), model(_x(7)), atol=1e-6)


def test_a_torchscript_file_loads_whatever_its_name(tmp_path):
    model = _tiny(0)
    torch.jit.save(torch.jit.trace(model, _x(2)), tmp_path / "teacher.bin")
    teacher = load_teacher(str(tmp_path / "teacher.bin"))
    with torch.no_grad():
        assert torch.allclose(teacher.logits(_x()), model(_x()), atol=1e-6)


def test_an_ensemble_averages_its_members_logits(tmp_path):
    a, b = _tiny(0), _tiny(1)
    torch.jit.save(torch.jit.trace(a, _x(2)), tmp_path / "a.ts")
    torch.export.save(torch.export.export(b, (_x(2),), dynamic_shapes=({0: torch.export.Dim("n")},)), tmp_path / "b.pt2")
    ensemble = load_teacher(f"{tmp_path / 'a.ts'},{tmp_path / 'b.pt2'}")
    swapped = load_teacher(f"{tmp_path / 'b.pt2'},{tmp_path / 'a.ts'}")
    single = load_teacher(str(tmp_path / "a.ts"))
    with torch.no_grad():
        want = (a(_x()) + b(_x())) / 2
    assert len(ensemble.models) == 2
    assert torch.allclose(ensemble.logits(_x()), want, atol=1e-6)
    assert ensemble.hash == swapped.hash != single.hash


def test_an_ensemble_of_different_class_counts_is_refused(tmp_path):
    seven = nn.Sequential(nn.Flatten(), nn.Linear(784, 7)).eval()
    torch.jit.save(torch.jit.trace(_tiny(0), _x(2)), tmp_path / "ten.ts")
    torch.jit.save(torch.jit.trace(seven, _x(2)), tmp_path / "seven.ts")
    with pytest.raises(TeacherError, match="disagree on the class count"):
        load_teacher(f"{tmp_path / 'ten.ts'},{tmp_path / 'seven.ts'}").logits(_x())


class _Counting(nn.Module):
    """A teacher that counts its forward passes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = _tiny(seed)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_a_cache_hit_runs_no_teacher_forward_pass(tmp_path, digits):
    counting = _Counting()
    teacher = Teacher("counting", "c0ffee", (counting,))
    first = cached_logits(teacher, digits, tmp_path)
    assert counting.calls > 0 and first.shape == (len(digits.train_y), 10)
    calls = counting.calls
    second = cached_logits(teacher, digits, tmp_path)
    assert counting.calls == calls
    assert torch.equal(first, second)


def test_a_changed_teacher_or_data_set_misses_the_cache(tmp_path, digits):
    counting = _Counting()
    cached_logits(Teacher("counting", "aaaa", (counting,)), digits, tmp_path)
    calls = counting.calls
    cached_logits(Teacher("counting", "bbbb", (counting,)), digits, tmp_path)
    assert counting.calls == 2 * calls
    cached_logits(Teacher("counting", "aaaa", (counting,)), load_dataset("digits", seed=1), tmp_path)
    assert counting.calls > 2 * calls


def test_a_damaged_cache_entry_is_recomputed(tmp_path, digits):
    counting = _Counting()
    teacher = Teacher("counting", "dddd", (counting,))
    good = cached_logits(teacher, digits, tmp_path)
    (entry,) = (tmp_path / "logits").iterdir()
    entry.write_bytes(b"damaged")
    calls = counting.calls
    assert torch.equal(cached_logits(teacher, digits, tmp_path), good)
    assert counting.calls > calls


def test_the_cache_goes_where_akd_cache_dir_points(tmp_path, digits, monkeypatch):
    monkeypatch.setenv("AKD_CACHE_DIR", str(tmp_path / "here"))
    cached_logits(Teacher("counting", "eeee", (_Counting(),)), digits)
    assert len(list((tmp_path / "here" / "logits").iterdir())) == 1


def test_a_teacher_for_other_images_is_refused(digits):
    teacher = Teacher("rgb", "ffff", (_tiny(0),), input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(TeacherError, match="takes 3x32x32 images"):
        cached_logits(teacher, digits)


def test_a_teacher_that_fails_on_the_images_raises_a_teacher_error(digits):
    rgb = nn.Conv2d(3, 10, 28)
    with pytest.raises(TeacherError, match="failed on images of shape"):
        Teacher("rgb", "1234", (rgb,)).logits(digits.val_x)


def _corrupt_files(tmp_path):
    (tmp_path / "random.pt2").write_bytes(b"\x00\x01 not a zip at all")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("x/readme.txt", "hello")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    torch.save({"format": "akd-mobile-teacher", "version": 1, "recipe": "resnet", "input_shape": [1, 28, 28],
                "num_classes": 10, "state_dict": {"nope": torch.zeros(1)}}, tmp_path / "damaged.pt")
    good = tmp_path / "good.ts"
    torch.jit.save(torch.jit.trace(_tiny(0), _x(2)), good)
    (tmp_path / "truncated.ts").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return ["random.pt2", "other.zip", "plain.pt", "damaged.pt", "truncated.ts", "missing.pt2"]


def test_corrupt_teacher_files_raise_teacher_errors(tmp_path):
    for name in _corrupt_files(tmp_path):
        with pytest.raises(TeacherError):
            load_teacher(str(tmp_path / name))
    with pytest.raises(TeacherError, match="empty member"):
        load_teacher("default,")


def test_the_cli_reports_corrupt_teachers_in_one_line_and_exits_2(tmp_path):
    runner = CliRunner()
    for name in _corrupt_files(tmp_path):
        result = runner.invoke(cli.cli, ["teacher", "eval", str(tmp_path / name), "--data", "digits"])
        assert result.exit_code == 2, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr)


def test_teacher_train_writes_a_checkpoint_the_loader_reads(tmp_path):
    out = tmp_path / "t.pt"
    result = CliRunner().invoke(
        cli.cli,
        ["teacher", "train", "--recipe", "resnet", "--data", "digits", "--epochs", "1", "--batch-size", "32",
         "--threads", "1", "--out", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["recipe"] == "resnet" and 0.0 <= row["test_accuracy"] <= 1.0
    assert row["test_accuracy"] > 0.3  # 40 steps: far above chance (0.1)
    assert load_teacher(str(out)).num_classes == 10


def test_unknown_recipes_are_refused_by_the_cli(tmp_path):
    result = CliRunner().invoke(
        cli.cli, ["teacher", "train", "--recipe", "nope", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 2 and "unknown teacher recipe" in result.stderr


def test_the_built_in_teacher_ships_with_its_record():
    info = teacher_info()
    assert info["recipe"] in RECIPES and info["test_accuracy"] >= 0.9
    assert info["command"].startswith("akd-mobile teacher train")
    teacher = load_teacher("default")
    assert teacher.input_shape == (1, 28, 28) and teacher.num_classes == 10
    assert DEFAULT_TEACHER.stat().st_size < 4 * 2**20


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_built_in_teacher_classifies_fashion_mnist():
    data = load_dataset("fashion-mnist")
    teacher = load_teacher("default")
    accuracy = float((teacher.logits(data.test_x[:1000]).argmax(1) == data.test_y[:1000]).float().mean())
    assert accuracy >= 0.88
