"""Every ```python example in README.md runs as written (offline, tiny configs); ```py blocks need the Hub."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})


def test_readme_has_an_example_per_adapter_method():
    text = "\n".join(BLOCKS)
    assert all(name in text for name in ("LayerFTConfig", "SCLConfig", "HeadFTConfig"))
