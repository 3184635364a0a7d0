"""Every ```python example in README.md and in the guides under docs/ runs as written (offline, tiny
configs or the built-in checkpoint); ```py blocks need the Hub or a recipe's output and are not run.

Each block runs on its own, in a fresh namespace, in an empty working directory: a block must
import what it uses. docs/RESULTS.md and docs/SELECTION.md are generated reports without examples.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
GENERATED = {"RESULTS.md", "SELECTION.md"}
PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in GENERATED)


def _blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


CASES = [(page.relative_to(ROOT).as_posix(), i, code) for page in PAGES for i, code in enumerate(_blocks(page))]


@pytest.mark.parametrize("page, index, code", CASES, ids=[f"{page}[{i}]" for page, i, _ in CASES])
def test_doc_example_runs(page, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}[python block {index}]", "exec"), {"__name__": "__docs__"})


def test_every_page_is_collected():
    """A guide page with a typo in its fence (```Python, ``` python) would silently run nothing."""
    for page in PAGES:
        fences = re.findall(r"^```[ \t]*([A-Za-z]+)", page.read_text(), flags=re.M)
        odd = [f for f in fences if f.lower() == "python" and f != "python"]
        assert not odd, f"{page.name}: python blocks must open with ```python, found {odd}"


def test_readme_has_an_example_per_adapter_method():
    text = "\n".join(code for page, _, code in CASES if page == "README.md")
    assert all(name in text for name in ("LayerFTConfig", "SCLConfig", "HeadFTConfig"))


def test_guides_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme]
    assert not missing, f"guide pages not linked from README.md: {missing}"
