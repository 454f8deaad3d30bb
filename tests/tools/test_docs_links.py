"""Every relative link and image in the README and docs/ names a file of the repository, and a link to a section
of a Markdown page names one of its headings (GitHub's anchors): a moved file or a retitled section otherwise leaves
a dead link that only a reader finds."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: [text](target) and ![alt](target): the path (may be empty: this page) and the anchor after '#'
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]*)(?:#([^)\s]*))?(?:\s+\"[^\"]*\")?\)")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose(md: Path):
    """(line number, line) of a page outside its fenced code blocks (a '# comment' there is no heading, a link no
    link)."""
    fenced = False
    for n, line in enumerate(md.read_text().splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            yield n, line


def anchors(md: Path) -> set:
    """GitHub's heading anchors of a page: a link's text kept (its target dropped), lower case, punctuation dropped,
    spaces to '-', repeats numbered."""
    out, seen = set(), {}
    for _, line in prose(md):
        if m := re.match(r"#{1,6}\s+(.*)", line):
            text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1).strip())
            slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def dead_links(md: Path, root: Path = ROOT):
    out = []
    for n, line in prose(md):
        for target, anchor in LINK.findall(line):
            if re.match(r"[a-z]+:", target):                 # https:, mailto: ...
                continue
            f = md if target == "" else md.parent / target
            if not f.exists() or not f.resolve().is_relative_to(root.resolve()):    # a file of the repository
                out.append(f"{md.relative_to(root)}:{n}: {target}")
            elif anchor and f.suffix == ".md" and anchor not in anchors(f):
                out.append(f"{md.relative_to(root)}:{n}: {target}#{anchor}")
    return out


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_name_existing_files_and_sections(md):
    assert dead_links(md) == []


def test_a_dead_link_is_found(tmp_path):
    md = tmp_path / "x.md"
    (tmp_path / "there.md").write_text("# A title, with (punctuation)\n## Again\n## Again\n"
                                       "## Linked ([page](x.md))\n```\n# not a heading\n```\n")
    (tmp_path.parent / "outside.md").write_text("")
    md.write_text("[ok](there.md) [anchor](there.md#a-title-with-punctuation) [web](https://x.org/y) "
                  "[second](there.md#again-1) [linked](there.md#linked-page) ![img](missing.png) [gone](gone.md#b) "
                  "[retitled](there.md#b) [code](there.md#not-a-heading) [here](#nowhere) [up](../outside.md)\n"
                  "# Here\n```\n[in code](nowhere.md)\n```\n")
    assert [d.split(": ")[1] for d in dead_links(md, tmp_path)] == [
        "missing.png", "gone.md", "there.md#b", "there.md#not-a-heading", "#nowhere", "../outside.md"]
