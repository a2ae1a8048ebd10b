"""Case ids and the paths built from them.

A case id comes from files a user (or a downloaded dataset) provides: ``dataset.json``, split files, raw folder
names. It becomes part of file names the package reads and writes, so it must be a plain file-name stem: no
path separators, no ``..``, not absolute, not hidden. Every path built from an id is also checked to stay
inside the folder it was built in, and a prediction is never written over an input file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

MAX_ID_LENGTH = 200
_FORBIDDEN = re.compile(r"[/\\:\x00-\x1f\x7f]")


def case_id_problem(case: object) -> str | None:
    """Why ``case`` is not a valid case id, or None when it is one."""
    if not isinstance(case, str):
        return f"is a {type(case).__name__}, not a string"
    if not case.strip():
        return "is empty"
    if len(case) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    if _FORBIDDEN.search(case):
        return "holds a path separator, a drive colon or a control character"
    if ".." in case:
        return "holds '..'"
    if case.startswith((".", "-", " ")) or case != case.strip():
        return "starts with '.', '-' or a space, or ends with a space"
    return None


def check_case_id(case: object, source: str) -> str:
    """``case`` when it is a plain file-name stem; otherwise ValueError naming ``source``."""
    problem = case_id_problem(case)
    if problem:
        raise ValueError(f"{source}: case id {case!r} {problem}; a case id must be a plain file-name stem")
    return case  # type: ignore[return-value]


def check_case_ids(cases: Iterable[object], source: str) -> None:
    """``check_case_id`` for each of ``cases``."""
    for case in cases:
        check_case_id(case, source)


def path_inside(root: str | Path, path: str | Path, what: str = "path") -> Path:
    """``path`` when it lies inside ``root`` once ``..`` and absolute parts are worked out; ValueError otherwise.
    (Links are not followed: a data folder may link its ``images/`` elsewhere on purpose.)"""
    resolved_root = Path(os.path.normpath(Path(root).absolute()))
    resolved = Path(os.path.normpath(Path(path).absolute()))
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise ValueError(f"{what} {path} leaves its folder {root}")
    return Path(path)


def check_not_input(output: str | Path, inputs: Iterable[str | Path | None]) -> Path:
    """``output`` unless it is (once resolved) one of the ``inputs``; ValueError naming both otherwise."""
    resolved = Path(output).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == resolved:
            raise ValueError(f"refusing to write {output}: it is the input file {source}; choose another run folder")
    return Path(output)
