"""Reading the YAML files a user hands to `piseg` (a training configuration, benchmark definitions, a
reproduce plan): every way such a file can be unreadable becomes one error line naming the file, the line
and the problem, raised as the caller's own error type, so the command refuses it with exit 2 instead of
a traceback (README "Failure behaviour")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping. Why: PyYAML keeps the last value silently,
    so a dataset or setting repeated by copy and paste would replace the first without a word."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue  # a merge key (<<) may be overridden by the mapping's own keys, as YAML intends
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} repeats (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def one_line(text: str) -> str:
    """TEXT with its line breaks and runs of spaces folded: the CLI prints a refusal as one `error:` line."""
    return " ".join(text.split())


def read_yaml(path: Path, what: str, error: type[Exception]) -> Any:
    """The content of the YAML file PATH (WHAT it is, for the message). A missing or unreadable file, text
    that is not UTF-8, invalid YAML or a repeated key raises ERROR("PATH[:LINE]: problem") on one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as problem:
        raise error(f"{path}: cannot read the {what}: not UTF-8 text (byte {problem.start})") from problem
    except OSError as problem:
        raise error(f"{path}: cannot read the {what} ({problem.strerror or problem})") from problem
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: builds plain data only
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        reason = getattr(problem, "problem", None) or str(problem)
        raise error(f"{path}{where}: invalid YAML: {one_line(reason)}") from problem
