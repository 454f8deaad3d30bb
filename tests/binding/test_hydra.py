"""Hydra discovery of the config group and composition of '- solo_sparse: gmp' in a real Hydra app."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from solo_sparse.core.registry import available_plugins

PRIMARY = textwrap.dedent("""
    defaults:
      - _self_
      - solo_sparse: gmp
    method: byol
    solo_sparse:
      final_density: 0.3
      every: 5
""")


@pytest.fixture
def cfg_dir(tmp_path):
    (tmp_path / "app.yaml").write_text(PRIMARY)
    return tmp_path


def test_group_is_discovered_and_user_keys_survive(cfg_dir):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(cfg_dir), version_base="1.2"):
        cfg = compose("app", return_hydra_config=True)
    assert cfg.solo_sparse.plugin == "gmp"
    assert cfg.solo_sparse.final_density == 0.3 and cfg.solo_sparse.every == 5  # not overridden by the group
    assert cfg.hydra.callbacks.solo_sparse._target_ == "solo_sparse.binding.hydra_callback.SoloSparseCallback"
    GlobalHydra.instance().clear()


def test_command_line_override_and_group_listing(cfg_dir):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(cfg_dir), version_base="1.2"):
        cfg = compose("app", overrides=["solo_sparse.final_density=0.05", "+solo_sparse.granularity=nm"])
    assert cfg.solo_sparse.final_density == 0.05 and cfg.solo_sparse.granularity == "nm"
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_real_hydra_main_app_sees_the_group(cfg_dir):
    """A @hydra.main app in a fresh process (the way solo-learn's scripts run) composes the group."""
    app = cfg_dir / "app.py"
    app.write_text(textwrap.dedent("""
        import hydra
        from omegaconf import OmegaConf

        @hydra.main(version_base="1.2", config_path=".", config_name="app")
        def main(cfg):
            print("PLUGIN", cfg.solo_sparse.plugin, cfg.solo_sparse.final_density)

        main()
    """))
    # the callback needs solo-learn; without it the job must fail loudly, naming solo-learn
    r = subprocess.run([sys.executable, str(app), "hydra.run.dir=" + str(cfg_dir / "run")],
                       capture_output=True, text=True, cwd=str(cfg_dir))
    try:
        import solo  # noqa: F401
        has_solo = True
    except ImportError:
        has_solo = False
    if has_solo:
        assert r.returncode == 0, r.stderr
        assert "PLUGIN gmp 0.3" in r.stdout
    else:
        assert r.returncode != 0 and "solo-learn" in r.stderr


def test_callback_validates_before_the_job(cfg_dir):
    (cfg_dir / "bad.yaml").write_text(PRIMARY.replace("final_density: 0.3", "final_density: 3"))
    app = cfg_dir / "bad_app.py"
    app.write_text(textwrap.dedent("""
        import hydra

        @hydra.main(version_base="1.2", config_path=".", config_name="bad")
        def main(cfg):
            print("JOB RAN")

        main()
    """))
    r = subprocess.run([sys.executable, str(app), "hydra.run.dir=" + str(cfg_dir / "run")],
                       capture_output=True, text=True, cwd=str(cfg_dir))
    assert r.returncode != 0 and "JOB RAN" not in r.stdout
    # validation comes before solo-learn is imported: the same message with or without it
    assert "solo_sparse.final_density=3.0: must be in (0, 1]" in r.stderr, r.stderr


@pytest.mark.parametrize("group,expect", [*((n, n) for n in available_plugins()), ("methods", None)])
def test_every_group_file_composes_and_validates(tmp_path, group, expect):
    from solo_sparse.core.registry import build_plugins

    (tmp_path / "app.yaml").write_text(PRIMARY.replace("solo_sparse: gmp", f"solo_sparse: {group}")
                                       .replace("  final_density: 0.3\n  every: 5\n", "  {}\n"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(tmp_path), version_base="1.2"):
        cfg = compose("app", return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.callbacks.solo_sparse._target_ == "solo_sparse.binding.hydra_callback.SoloSparseCallback"
    assert [p.name for p in build_plugins(cfg.solo_sparse)] == ([expect] if expect else [])


def test_stacked_plugins_compose_and_build(tmp_path):
    """The README's stacking example: '- solo_sparse: synccp' plus 'plugins: [synccp, interloss]'."""
    from solo_sparse.core.registry import build_plugins

    (tmp_path / "stack.yaml").write_text(textwrap.dedent("""
        defaults:
          - _self_
          - solo_sparse: synccp
        method: byol
        solo_sparse:
          plugins: [synccp, interloss]
          synccp: {final_density: 0.1}
          interloss: {hard_pairs: true, num_crops: 2}
    """))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(tmp_path), version_base="1.2"):
        cfg = compose("stack")
    GlobalHydra.instance().clear()
    plugins = build_plugins(cfg.solo_sparse)
    assert [p.name for p in plugins] == ["synccp", "interloss"]
    assert plugins[0].config.final_density == 0.1 and plugins[1].config.num_crops == 2


def test_a_third_party_plugin_needs_no_yaml_in_the_package(tmp_path):
    """Its entry point alone (here: an in-process registration): '- solo_sparse: <name>' composes to the same
    content a shipped group YAML has (the plugin's name, the callback), and the plugin builds from it."""
    from dataclasses import dataclass

    from solo_sparse.binding import groups
    from solo_sparse.core import registry
    from solo_sparse.core.plugin import Plugin

    @dataclass
    class Cfg:
        strength: float = 0.5

    registry.register_plugin(type("ThirdParty", (Plugin,), {"name": "third_party_y", "Config": Cfg}))
    try:
        assert groups.missing() == ["third_party_y"] and "gmp" in groups.shipped()
        (tmp_path / "app.yaml").write_text(PRIMARY.replace("solo_sparse: gmp", "solo_sparse: third_party_y")
                                           .replace("  final_density: 0.3\n  every: 5\n", "  strength: 0.25\n"))
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(tmp_path), version_base="1.2"):
            cfg = compose("app", return_hydra_config=True)
        GlobalHydra.instance().clear()
        assert cfg.solo_sparse.plugin == "third_party_y" and cfg.solo_sparse.strength == 0.25
        assert cfg.hydra.callbacks.solo_sparse._target_ == groups.CALLBACK
        assert cfg.hydra.callbacks.solo_sparse.line == "third_party_y"
        [p] = registry.build_plugins(cfg.solo_sparse)
        assert p.name == "third_party_y" and p.config.strength == 0.25
    finally:
        registry._LOCAL.pop("third_party_y", None)


def test_a_generated_group_entry_is_what_a_shipped_yaml_holds():
    from omegaconf import OmegaConf

    from solo_sparse.binding.groups import group_node

    shipped = OmegaConf.to_container(OmegaConf.load(
        Path(__file__).resolve().parents[2] / "solo_sparse" / "configs" / "solo_sparse" / "gmp.yaml"))
    assert group_node("gmp") == shipped
