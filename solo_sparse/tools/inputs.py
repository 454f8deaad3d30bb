"""Reading what a user points the CLI at — checkpoints, YAML configs — with one-line errors that say
which file and what is wrong (missing, a directory, empty, not a checkpoint, not YAML)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from solo_sparse.core.checkpoint import solo_naming
from solo_sparse.core.config import ConfigError


def existing_file(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file (expected {what})")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory (expected {what})")
    if p.stat().st_size == 0:
        raise ConfigError(f"{p}: empty file (expected {what})")
    return p


def read_checkpoint(path) -> Dict[str, Any]:
    """A solo-learn/Lightning checkpoint loaded with ``weights_only=True`` (never unpickling code), its
    ``state_dict`` in solo-learn's names (:func:`solo_sparse.core.checkpoint.solo_naming`)."""
    p = existing_file(path, "a solo-learn checkpoint, .ckpt")
    if p.suffix == ".safetensors":
        raise ConfigError(f"{p}: a safetensors file, not a solo-learn checkpoint; zoo files load with "
                          "solo_sparse.zoo.load_file() or `solo-sparse zoo export NAME --out x.ckpt`")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and weights-only refusals all mean "not a checkpoint"
        raise ConfigError(f"{p}: not a PyTorch checkpoint loadable with weights_only=True "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(ck, dict):
        raise ConfigError(f"{p}: holds a {type(ck).__name__}, not a checkpoint dictionary")
    return solo_naming(ck)   # a run of another host (Lightning) in solo-learn's names: one format for every reader


def compose_config(path):
    """Compose a solo-learn YAML the way its scripts do (Hydra, with the solo_sparse group visible)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    p = existing_file(path, "a solo-learn YAML config")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(p.resolve().parent), version_base="1.2"):
            return compose(p.stem)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra/OmegaConf/YAML errors: one line naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{p}: cannot compose this config ({type(exc).__name__}: {first[:200]})") from None
    finally:
        GlobalHydra.instance().clear()
