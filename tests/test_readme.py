"""The README's Python examples run and print what they say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    text = out.getvalue()
    assert "64 CONVERGED" in text
    assert "Status.DIVERGED" in text and "Status.CONVERGED" in text
    assert "MAX_ITERS" in text
    assert "envelope: True" in text
    assert (namespace["cgd"].status == 0).all()  # CONVERGED
    res = namespace["res"]
    assert int(res.status) == 0 and abs(float(res.fun) + 7.0) <= 1e-7
