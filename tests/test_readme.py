"""The README's Python examples run as written (so what it says works, works)."""
from __future__ import annotations

import contextlib
import io
import pathlib
import re
import tempfile

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run_and_print_what_they_claim(monkeypatch, tmp_path):
    # as a reader runs them: without the Triton interpreter the test suite turns on
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    # the folders and files the examples make with tempfile go under this test's own folder; inductor
    # takes its default cache folder from tempfile on first use, so that is fixed where it was first
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", cache_dir())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    env: dict = {}
    checked = []
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), env)  # noqa: S102 - our own README
        # every "# " comment block right after a print(...) is the expected output
        for call, expected in re.findall(r"^print\((.*?)\)\n((?:# .*\n)+)", block, flags=re.M):
            want = "\n".join(line[2:] for line in expected.splitlines())
            assert want in out.getvalue(), (call, out.getvalue())
            checked.append(call)
    assert len(checked) >= 2, checked
