"""The README's usage example is executed so it cannot rot."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})  # noqa: S102 - our own README, not user input
    assert "Plan for" in capsys.readouterr().out


def test_readme_shows_the_two_commands_first():
    text = README.read_text()
    head = text[: text.index("## ")]
    assert "make demo" in head and "make test" in head


DOCS = sorted((README.parent / "docs").glob("*.md"))


def test_docs_python_blocks_run():
    """Every ```python block in docs/*.md runs as written (each block on its own namespace)."""
    ran = 0
    for page in DOCS:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            exec(compile(block, str(page), "exec"), {})  # noqa: S102 - our own docs, not user input
            ran += 1
    assert ran >= 5
