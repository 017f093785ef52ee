"""Choosing the device (shared.device: a name, $LLM_COURSE_DEVICE, the best available) and the
device check (setup/device_check.py), tested on the CPU with a simulated device that drifts."""

from __future__ import annotations

import pytest
import torch

from shared.device import DEVICE_ENV, check_device, get_device
from tests.notebook_code import REPO
from tests.scripts import load_script, run_script

pytestmark = pytest.mark.usefixtures("one_thread")
DEVICE_CHECK = REPO / "setup" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    return load_script(DEVICE_CHECK)


def test_a_given_name_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cuda:7")
    assert get_device("cpu") == torch.device("cpu")


def test_the_environment_variable_chooses_the_device(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, " cpu ")
    assert get_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "")  # empty: as if unset
    assert get_device() == check_device(get_device().type)


def test_bad_or_missing_devices_are_named(monkeypatch):
    with pytest.raises(ValueError, match="unknown device 'gpu'; use cpu, cuda, cuda:N or mps"):
        check_device("gpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        with pytest.raises(ValueError, match=f"{DEVICE_ENV}=cuda: this machine has no cuda device"):
            get_device()


def test_training_runs_are_reproducible_and_agree_with_themselves(device_check):
    first, second = (device_check.train_briefly(torch.device("cpu"), steps=2) for _ in range(2))
    assert first.losses == second.losses and len(first.losses) == 2
    assert first.losses[0] == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=0.05)
    assert device_check.disagreements(first, second, device_check.TOLERANCE) == []


def test_a_device_that_rounds_differently_but_correctly_passes(device_check, monkeypatch):
    """float64 stands in for another device's correct kernels: it rounds differently (the
    float32 run is off from it by about 1e-7), and the check must not flag it."""
    reference = device_check.train_briefly(torch.device("cpu"), steps=2)

    class Float64GPT(device_check.GPTModel):
        def __init__(self, cfg):
            super().__init__(cfg)  # the same seeded float32 weights, then in float64
            self.double()

    monkeypatch.setattr(device_check, "GPTModel", Float64GPT)
    exact = device_check.train_briefly(torch.device("cpu"), steps=2)
    assert exact.losses != reference.losses  # it did round differently
    assert device_check.disagreements(reference, exact, device_check.TOLERANCE) == []
    assert device_check.disagreements(reference, exact, 1e-5) == []  # far inside the tolerance


def drifted(run, loss_factor: float = 1.0, gradient_noise: float = 0.0):
    """A copy of run as a device with wrong kernels would give it."""
    generator = torch.Generator().manual_seed(0)
    gradients = {
        name: g
        + gradient_noise * g.norm() / g.numel() ** 0.5 * torch.randn(g.shape, generator=generator)
        for name, g in run.gradients.items()
    }
    return type(run)([loss * loss_factor for loss in run.losses], gradients)


def test_the_check_catches_drifting_losses_and_gradients(device_check, capsys):
    reference = device_check.train_briefly(torch.device("cpu"), steps=2)
    tolerance = device_check.TOLERANCE
    within = drifted(reference, loss_factor=1 + tolerance / 10, gradient_noise=tolerance / 10)
    assert device_check.disagreements(reference, within, tolerance) == []
    wrong_loss = device_check.disagreements(reference, drifted(reference, 1.01), tolerance)
    assert len(wrong_loss) == 2 and wrong_loss[0].startswith("step 1 loss:")
    noisy = device_check.disagreements(
        reference, drifted(reference, gradient_noise=0.01), tolerance
    )
    assert noisy and all(line.startswith("gradient of ") for line in noisy)
    nan = drifted(reference, float("nan"))
    assert len(device_check.disagreements(reference, nan, tolerance)) == 2

    # The whole check with a simulated device whose second run comes out 5x too large (mps).
    runs = iter([reference, drifted(reference, 5.0)])
    assert not device_check.check(torch.device("meta"), train=lambda device: next(runs))
    out = capsys.readouterr().out
    assert "meta DISAGREES with the CPU" in out and f"{DEVICE_ENV}=cpu" in out
    runs = iter([reference, reference])
    assert device_check.check(torch.device("meta"), train=lambda device: next(runs))
    assert "meta agrees with the CPU" in capsys.readouterr().out


def test_script_on_the_cpu_and_with_a_missing_device():
    result = run_script(DEVICE_CHECK, "--device", "cpu")
    assert result.returncode == 0 and "nothing to compare" in result.stdout
    if not torch.cuda.is_available():
        result = run_script(DEVICE_CHECK, "--device", "cuda", check=False)
        assert result.returncode == 2 and "this machine has no cuda device" in result.stderr
