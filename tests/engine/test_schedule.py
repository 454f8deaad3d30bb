import pytest

from solo_sparse.core.config import ConfigError, ScheduleSpec, StepSpec
from solo_sparse.engine.schedule import cubic_density, is_update_step


def test_cubic_known_values():
    # d_t = d_f + (d_i - d_f)(1 - (t - t0)/(n dt))^3 with d_i = 1, d_f = 0.1, t0 = 100, end = 300
    assert cubic_density(0, 100, 300, 1.0, 0.1) == 1.0
    assert cubic_density(100, 100, 300, 1.0, 0.1) == 1.0
    assert cubic_density(200, 100, 300, 1.0, 0.1) == pytest.approx(0.1 + 0.9 * 0.125)
    assert cubic_density(250, 100, 300, 1.0, 0.1) == pytest.approx(0.1 + 0.9 * 0.25 ** 3)
    assert cubic_density(300, 100, 300, 1.0, 0.1) == pytest.approx(0.1)
    assert cubic_density(10_000, 100, 300, 1.0, 0.1) == pytest.approx(0.1)


def test_update_steps_include_end():
    steps = [t for t in range(0, 400) if is_update_step(t, 100, 250, 100)]
    assert steps == [100, 200, 250]


def test_stepspec_parsing():
    assert StepSpec.parse("start", 30).resolve() == 30
    assert StepSpec.parse("start", "3ep").resolve(steps_per_epoch=50) == 150
    assert StepSpec.parse("end", "75%").resolve(total_steps=1000) == 750
    for bad in ("abc", -1, "150%", True, 1.5):
        with pytest.raises(ConfigError, match=r"solo_sparse\.start"):
            StepSpec.parse("start", bad)


def test_schedule_end_before_start():
    with pytest.raises(ConfigError, match="end=5ep is before solo_sparse.start=10ep"):
        ScheduleSpec(start="10ep", end="5ep")
    s = ScheduleSpec(start=500, end="2ep")   # mixed units: checked once steps per epoch are known
    with pytest.raises(ConfigError, match="before"):
        s.resolve(steps_per_epoch=100, total_steps=1000)
