"""YAML out, the same bytes for the same objects: keys in the order built, no timestamps."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper; text of several lines as a `|` block, as people write it, and
    no anchors: a value written twice (a Deployment's labels) is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)


def dump_all(documents: list[dict[str, Any]]) -> str:
    """Several documents in one file, separated by `---`."""
    return "---\n".join(dump(document) for document in documents)
