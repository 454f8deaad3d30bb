"""Reading what a user points the CLI at — checkpoints, YAML configs, numbers — with one-line errors that say
which file or option and what is wrong (missing, a directory, empty, not a checkpoint, not YAML, out of range)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from solo_sparse.core.checkpoint import solo_naming
from solo_sparse.core.config import ConfigError


def number(kind: type, lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False
           ) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses ``kind`` (int or float) in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``;
    either bound may be None); anything else — nan, inf, out of range, not a number — is refused naming the
    value and the allowed range (argparse adds the option's name)."""
    left = "(" if lo_open else "["
    allowed = ("an integer" if kind is int else "a finite number") + (
        f" in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]" if (lo, hi) != (None, None) else "")

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = None
        low = lo is not None and v is not None and (v <= lo if lo_open else v < lo)
        if v is None or (kind is float and not math.isfinite(v)) or low or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{text!r} refused: allowed {allowed}")
        return v

    parse.__name__ = kind.__name__
    return parse


#: pixels of an evaluation/measurement image (a ResNet needs a few; more than this only allocates)
IMAGE_SIZE = number(int, 8, 1024)
#: a density or a fraction of channels
FRACTION = number(float, 0.0, 1.0, lo_open=True)
SEED = number(int, 0)


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


def compose_config(path, overrides=()):
    """Compose a solo-learn YAML (with Hydra ``overrides``) the way its scripts do (the solo_sparse group visible)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    p = existing_file(path, "a solo-learn YAML config")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(p.resolve().parent), version_base="1.2"):
            return compose(p.stem, overrides=list(overrides))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra/OmegaConf/YAML errors: one line naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{p}: cannot compose this config ({type(exc).__name__}: {first[:200]})") from None
    finally:
        GlobalHydra.instance().clear()
