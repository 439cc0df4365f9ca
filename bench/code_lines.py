"""Count the lines of Python files: physical lines, and code lines (no blank lines, comments
or docstrings). Files can also be read from a git revision as ``REV:path``.

    python bench/code_lines.py flows/*.py src/senti/cli.py ...
    python bench/code_lines.py 80e8662:src/senti/config.py ...
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

_SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}


def count(text: str) -> tuple[int, int]:
    """(physical lines, code lines) of one Python source."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    code = {line for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type not in _SKIPPED for line in range(tok.start[0], tok.end[0] + 1)}
    return len(text.splitlines()), len(code - docstrings)


def _read(spec: str) -> str:
    if ":" in spec and not Path(spec).exists():
        return subprocess.run(["git", "show", spec], capture_output=True, text=True,
                              check=True).stdout
    return Path(spec).read_text(encoding="utf-8")


def main() -> None:
    totals = [0, 0]
    for spec in sys.argv[1:]:
        physical, code = count(_read(spec))
        totals[0] += physical
        totals[1] += code
        print(f"{physical:6d} {code:6d}  {spec}")
    print(f"{totals[0]:6d} {totals[1]:6d}  total (physical, code)")


if __name__ == "__main__":
    main()
