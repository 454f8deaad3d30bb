"""Every finished row of the committed benchmark results carries the fingerprint the current code and suite give
it: a change that would make ``solo-sparse bench`` mark finished rows stale (and retrain them) fails here -- e.g. a
plugin key added without a ``neutral_defaults`` entry, which enters every run's plugin digest. And every generated
text (each suite's results.md, the README's and docs' bench blocks) is what the committed results render to."""
import json

import pytest
from helpers import ROOT

from solo_sparse.tools.bench import Bench, Suite

SUITES = sorted(p.parent.name for p in (ROOT / "results").glob("*/results.json")
                if (ROOT / "scripts" / "suites" / f"{p.parent.name}.yaml").exists())


@pytest.mark.parametrize("name", SUITES)
def test_committed_rows_are_not_stale(name, tmp_path):
    suite = Suite.load(ROOT / "scripts" / "suites" / f"{name}.yaml")
    for split in ("train", "val"):
        (tmp_path / suite.data / split).mkdir(parents=True, exist_ok=True)
    b = Bench(suite, data_root=tmp_path, out=tmp_path / "out", log=lambda *a: None)
    spec = {r.id: r for r in b.suite.runs}
    results = json.loads((ROOT / "results" / name / "results.json").read_text())
    rows = results["rows"]
    checked, stale = 0, []
    for key, row in rows.items():
        rid = row["id"].split(":")[0]
        if rid not in spec or row.get("kind") != "pretrain" or row.get("status") != "ok":
            continue
        checked += 1
        # the host that trained the row (whatever this machine has): the fingerprint names it
        b.host = row.get("host") or results.get("meta", {}).get("host") or "solo-learn"
        if row.get("fingerprint") != b.fingerprint(spec[rid], int(row["seed"])):
            stale.append(key)
    assert not stale, (f"results/{name}: {len(stale)} finished row(s) no longer match this code's fingerprint and "
                       f"would be retrained: {stale[:5]}")
    assert checked or not any(r.get("kind") == "pretrain" for r in rows.values())


def test_a_key_added_without_its_neutral_default_would_mark_rows_stale(tmp_path, monkeypatch):
    """The guard above can fail: without DGNet's neutral ``control`` the finished dgnet rows go stale."""
    from solo_sparse.families.dgnet import DGNetPlugin

    if "dgnet" not in SUITES:
        pytest.skip("no committed dgnet results")
    monkeypatch.setattr(DGNetPlugin, "neutral_defaults", {})
    with pytest.raises(AssertionError, match="would be retrained"):
        test_committed_rows_are_not_stale("dgnet", tmp_path)


def test_a_neutral_key_stays_out_of_the_digest_and_any_other_value_enters_it():
    from solo_sparse.tools.bench import plugin_digest

    cfg, base = ROOT / "scripts" / "configs" / "fmnist" / "vicreg.yaml", ["+solo_sparse=dgnet_gated"]
    plain = plugin_digest(cfg, base)
    assert plugin_digest(cfg, [*base, "++solo_sparse.control=none"]) == plain
    assert plugin_digest(cfg, [*base, "++solo_sparse.control=static"]) != plain
    assert plugin_digest(cfg, [*base, "++solo_sparse.target=0.3"]) != plain


def test_a_run_seed_key_enters_the_digest_as_the_seed_the_run_trains_with(monkeypatch):
    """interloss's ``seed`` (null: the run's seed) digests as that seed: a row at seed 0 keeps the fingerprint it had
    when the key was 0 for every run; rows at other seeds differ; an explicit seed is the same at every run seed."""
    from solo_sparse.tools.bench import plugin_digest
    from solo_sparse_plugins.interloss import InterLoss

    cfg, base = ROOT / "scripts" / "configs" / "fmnist" / "simclr.yaml", ["+solo_sparse=interloss"]
    assert plugin_digest(cfg, base, 0) == plugin_digest(cfg, [*base, "++solo_sparse.seed=0"], 5)
    assert plugin_digest(cfg, base, 1) != plugin_digest(cfg, base, 0)
    assert plugin_digest(cfg, [*base, "++solo_sparse.seed=3"], 1) == plugin_digest(cfg, [*base, "++solo_sparse.seed=3"], 2)
    monkeypatch.setattr(InterLoss, "run_seed_keys", ())
    assert plugin_digest(cfg, base, 1) == plugin_digest(cfg, base, 0)     # without the key: every seed alike


def _bench_results():
    """The committed results of each suite: its own folder (results/<suite>/results.json, meta.suite = <suite>)."""
    out = {}
    for p in sorted((ROOT / "results").glob("*/results.json")):
        meta = json.loads(p.read_text()).get("meta") or {}
        if meta.get("suite") == p.parent.name:
            out[p.parent.name] = p
    return out


@pytest.mark.parametrize("name", sorted(_bench_results()))
def test_each_suites_results_md_is_rendered_from_its_results_json(name):
    """A change to the renderer (a column, a footnote, the decision rule) regenerates every suite's results.md, not
    only the suite that ran last."""
    from solo_sparse.tools.bench import to_markdown
    from solo_sparse.tools.bench.results import with_current_claims

    p = _bench_results()[name]        # with the claims its suite file declares now, as --update-docs renders them
    want = to_markdown(with_current_claims(json.loads(p.read_text()), p))
    assert (p.parent / "results.md").read_text() == want, (
        f"results/{name}/results.md is not what its results.json renders to: regenerate it")


def test_the_docs_blocks_are_rendered_from_the_committed_results(tmp_path, monkeypatch):
    """Every generated block of the README and docs/ (tables, claims, regime) is what the committed results render
    to: `solo-sparse bench --update-docs` would change nothing."""
    import shutil

    from solo_sparse.tools.bench import update_docs

    monkeypatch.chdir(ROOT)          # the copies' suite files (their current claims) are found from the repository

    docs = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))] if "<!-- bench" in p.read_text()]
    assert docs
    copies = []
    for i, d in enumerate(docs):
        copies.append(tmp_path / f"{i}-{d.name}")
        shutil.copyfile(d, copies[-1])
    results = []                     # copies too: update_docs re-renders each results.json's sibling results.md
    for name, p in _bench_results().items():
        results.append(tmp_path / "results" / name / "results.json")
        results[-1].parent.mkdir(parents=True)
        shutil.copyfile(p, results[-1])
        shutil.copyfile(p.parent / "results.md", results[-1].parent / "results.md")
        for png in (p.parent / f"{name}-claims.png", p.parent / f"{name}-rounds.png"):
            if png.is_file():        # compared by the digest of the data it was drawn from (its bytes depend on the
                shutil.copyfile(png, results[-1].parent / png.name)   # matplotlib build and fonts)
    changed = update_docs(results, copies)
    assert not changed, ("stale generated files, regenerate with `solo-sparse bench --update-docs`: "
                         + ", ".join(str(docs[copies.index(c)].relative_to(ROOT)) if c in copies
                                     else str(c.relative_to(tmp_path)) for c in changed))
