"""Teachers: recipes, file formats, ensembles, the logits cache, and corrupt files."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import cli
from akd_mobile.data import FASHION_MNIST_DIR, Dataset, load_dataset
from akd_base.errors import TeacherError
from akd_mobile.teachers import (
    DEFAULT_TEACHER,
    RECIPES,
    Teacher,
    TeacherTrainResult,
    cached_logits,
    check_teacher_fits,
    evaluate_teacher,
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
    assert DEFAULT_TEACHER.stat().st_size < 8 * 2**20  # the few MB a repository can hold
    assert info["sha256"] == hashlib.sha256(DEFAULT_TEACHER.read_bytes()).hexdigest()  # the record is this file's


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_built_in_teacher_classifies_fashion_mnist():
    data = load_dataset("fashion-mnist")
    teacher = load_teacher("default")
    accuracy = float((teacher.logits(data.test_x[:1000]).argmax(1) == data.test_y[:1000]).float().mean())
    assert accuracy >= 0.88


# ---------------------------------------------------------------- a teacher must fit its data


def _five_classes(tmp_path, kind: str) -> str:
    """A 5-class teacher file that does not declare its class count."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 5)).eval()
    if kind == "export":
        program = torch.export.export(model, (_x(2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, tmp_path / "five.pt2")
        return str(tmp_path / "five.pt2")
    torch.jit.save(torch.jit.trace(model, _x(2)), tmp_path / "five.ts")
    return str(tmp_path / "five.ts")


@pytest.mark.parametrize("kind", ["export", "torchscript"])
def test_teacher_eval_refuses_a_teacher_of_another_class_count(tmp_path, kind):
    spec = _five_classes(tmp_path, kind)
    assert load_teacher(spec).num_classes is None
    result = CliRunner().invoke(cli.cli, ["teacher", "eval", spec, "--data", "digits", "--split", "val"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "gives 5 class logits but digits has 10 classes" in lines[0]


def test_every_use_of_the_logits_refuses_another_class_count(tmp_path, digits):
    teacher = Teacher("five", "f1ve", (nn.Sequential(nn.Flatten(), nn.Linear(784, 5)).eval(),))
    for use in (lambda: evaluate_teacher(teacher, digits, "test"), lambda: cached_logits(teacher, digits, tmp_path),
                lambda: check_teacher_fits(teacher, digits, cache_dir=tmp_path)):
        with pytest.raises(TeacherError, match="gives 5 class logits"):
            use()
    assert not (tmp_path / "logits").exists() and not (tmp_path / "fit").exists()


def _labelled(labels: list[int], classes: int) -> Dataset:
    """A data set whose images are their labels, so a teacher can read them off (1x1x1 images)."""
    y = torch.tensor(labels)
    x = y.float().view(-1, 1, 1, 1)
    return Dataset("labelled", (1, 1, 1), classes, x, y, x, y, x, y, f"labelled-{classes}-{len(labels)}")


def _right_on(share: float, classes: int):
    """A teacher right on the first `share` of the classes, one class off on the rest."""
    def model(x):
        y = x.flatten().long()
        return F.one_hot(torch.where(y < share * classes, y, (y + 1) % classes), classes).float()
    return model


@pytest.mark.parametrize("labels, classes, share, fits", [
    (list(range(10)) * 10, 10, 0.2, True),  # 0.2 >= 0.1 + 0.1 * 0.9
    (list(range(10)) * 10, 10, 0.1, False),
    (list(range(1000)), 1000, 0.11, True),  # 0.11 >= 0.001 + 0.1 * 0.999
    (list(range(1000)), 1000, 0.09, False),
    ([0] * 90 + [1] * 10, 2, 0.5, False),  # always "0": 0.9, no better than guessing the commonest class
])
def test_near_chance_is_one_rule_for_few_many_and_skewed_classes(tmp_path, labels, classes, share, fits):
    data = _labelled(labels, classes)
    teacher = Teacher("t", f"right-{share}", (_right_on(share, classes),))
    if fits:
        assert check_teacher_fits(teacher, data, cache_dir=tmp_path) >= share - 0.01
    else:
        with pytest.raises(TeacherError, match="near chance"):
            check_teacher_fits(teacher, data, cache_dir=tmp_path)


def test_the_fit_check_evaluates_once_per_teacher_and_data_set(tmp_path, digits):
    counting = _Counting()
    teacher = Teacher("counting", "fit0", (counting,))
    with pytest.raises(TeacherError, match="near chance"):
        check_teacher_fits(teacher, digits, cache_dir=tmp_path)
    calls = counting.calls
    with pytest.raises(TeacherError, match="near chance"):  # refused again from the cached accuracy
        check_teacher_fits(teacher, digits, cache_dir=tmp_path)
    assert counting.calls == calls > 0


def test_teacher_list_shows_the_built_in_teacher_first_with_its_data_set():
    runner = CliRunner()
    text = runner.invoke(cli.cli, ["teacher", "list"])
    assert text.exit_code == 0, text.output
    first = text.stdout.splitlines()[0]
    assert first.startswith("default ") and "fashion-mnist" in first and "resnet-wide" in first
    rows = json.loads(runner.invoke(cli.cli, ["teacher", "list", "--json"]).stdout)
    assert rows[0] | {"description": ""} == {
        "name": "default", "kind": "teacher", "recipe": "resnet-wide", "dataset": "fashion-mnist",
        "test_accuracy": teacher_info()["test_accuracy"], "params": teacher_info()["params"], "description": ""}
    assert [r["name"] for r in rows[1:]] == list(RECIPES) and {r["kind"] for r in rows[1:]} == {"recipe"}


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_built_in_teacher_fits_fashion_mnist(tmp_path):
    accuracy = check_teacher_fits(load_teacher("default"), load_dataset("fashion-mnist"), cache_dir=tmp_path)
    assert accuracy == pytest.approx(teacher_info()["val_accuracy"], abs=1e-4)
