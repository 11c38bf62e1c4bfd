"""The README's Python API example runs as written (from the repository root)."""
import os
import re

from conftest import REPO


def test_readme_api_example_runs(monkeypatch, capsys):
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    code = re.search(r'<!-- api-example -->\n```python\n(.*?)```', text, re.S).group(1)
    monkeypatch.chdir(REPO)
    exec(compile(code, 'README.md (api example)', 'exec'), {})
    out = capsys.readouterr().out
    assert '(192, 192, 3)' in out and '(128, 96, 3)' in out and "'mode': 'pieces'" in out
