"""The Hydra callback refuses a bad ``solo_sparse:`` section with its own one-line message, before it imports
solo-learn — so the error is the config's even where solo-learn is missing (simulated here by making
``import solo`` fail) — and ends the job with SystemExit (Hydra only warns about callback exceptions, and the
job would then run dense)."""
import sys

import pytest

pytest.importorskip("hydra", reason="hydra-core is not installed")

from omegaconf import OmegaConf  # noqa: E402

from solo_sparse.binding.hydra_callback import SoloSparseCallback  # noqa: E402


@pytest.fixture
def no_solo(monkeypatch):
    """``import solo`` (and any solo.*) fails, as where solo-learn is not installed."""
    for name in [m for m in sys.modules if m == "solo" or m.startswith("solo.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "solo", None)
    for name in [m for m in sys.modules if m.startswith("solo_sparse.binding.") and
                 m not in ("solo_sparse.binding.hydra_callback", "solo_sparse.binding.guard")]:
        monkeypatch.delitem(sys.modules, name)      # re-imported (and failing) if the callback asks for them


@pytest.mark.parametrize("section,message", [
    ({"plugin": "gmp", "final_density": 3}, "solo_sparse.final_density=3.0: must be in (0, 1]"),
    ({"plugin": "gmpp"}, "solo_sparse.plugin='gmpp': unknown plugin (did you mean 'gmp'?); available: "),
    ({"plugin": "gmp", "final_densty": 0.1}, "solo_sparse: unknown key final_densty for plugin 'gmp'; valid keys: "),
])
def test_bad_section_is_refused_with_its_message_before_solo_learn_is_imported(no_solo, capsys, section, message):
    cfg = OmegaConf.create({"method": "byol", "solo_sparse": section})
    with pytest.raises(SystemExit) as exc:
        SoloSparseCallback().on_job_start(config=cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"solo-sparse: error: {message}") and err.count("\n") == 1, err   # one line, the config's


def test_a_valid_section_without_solo_learn_still_stops_the_job(no_solo, capsys):
    cfg = OmegaConf.create({"method": "byol", "solo_sparse": {"plugin": "gmp", "final_density": 0.3}})
    with pytest.raises(SystemExit) as exc:
        SoloSparseCallback().on_job_start(config=cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("solo-sparse: error: ") and "'solo'" in err, err      # names the module it lacks
    assert "solo-learn 1.0.6" in err and "--ensure-solo-learn" in err, err       # and how to get it
