"""Command lines generated from config dataclasses, as transformers' ``HfArgumentParser`` builds them.

Every field of the dataclasses given to :func:`build_parser` becomes one option ``--field-name``
whose help is ``field(metadata={"help": ...})`` and whose default is the field's own:

==========================  ===================================================================
field type                  option
==========================  ===================================================================
no default                  required
``int``, ``float``, ``str`` typed value (also ``X | None``)
``bool``, default False     ``--name`` sets it
``bool``, default True      ``--name`` / ``--no-name`` (mutually exclusive)
``dict``                    repeatable; each value a JSON object or ``KEY=VALUE`` (the value
                            JSON-decoded when it parses: ``enable_thinking=false`` is False);
                            the values are merged
``list[str]``               one comma-separated value, duplicates dropped
==========================  ===================================================================

Other ``metadata`` keys: ``flags`` (more spellings of the option), ``negative_flags`` (more
spellings of ``--no-name``), ``negative_help``, ``metavar``, ``group`` (argument group title).
:func:`config_from_args` builds the dataclass back from the parsed namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "config_from_args", "parse_mapping"]


def parse_mapping(text: str) -> dict[str, Any]:
    """A JSON object, or one ``KEY=VALUE`` pair with the value JSON-decoded where it parses."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"not a valid JSON object: {error}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return value
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE or a JSON object, got {text!r}")
    try:
        return {key: json.loads(value)}
    except json.JSONDecodeError:
        return {key: value}


def _comma_list(text: str) -> list[str]:
    return list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))


class _MergeMapping(argparse.Action):
    """Merges every occurrence's :func:`parse_mapping` into one dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest) or {})
        merged.update(values)
        setattr(namespace, self.dest, merged)


def _base_type(annotation: Any) -> Any:
    """``int`` for ``int | None``; the origin (``dict``, ``list``) for generics."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        origin = typing.get_origin(annotation)
    return origin or annotation


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _help(f: dataclasses.Field, default: Any) -> str:
    text = f.metadata.get("help", "")
    shown = ",".join(default) if isinstance(default, list) else default
    hidden = default is None or isinstance(default, bool) or (isinstance(default, (dict, list)) and not default)
    if default is dataclasses.MISSING or hidden or "default" in text:
        return text
    return f"{text} (default: {shown})" if text else f"default: {shown}"


def _flags(f: dataclasses.Field) -> list[str]:
    return ["--" + f.name.replace("_", "-"), *f.metadata.get("flags", ())]


def _add_field(parser: argparse.ArgumentParser, groups: dict, f: dataclasses.Field, annotation: Any) -> None:
    title = f.metadata.get("group")
    if title and title not in groups:
        groups[title] = parser.add_argument_group(title)
    target = groups[title] if title else parser
    default = _default(f)
    kind = _base_type(annotation)
    help_text = _help(f, default)
    options: dict[str, Any] = {"dest": f.name, "help": help_text}
    if "metavar" in f.metadata:
        options["metavar"] = f.metadata["metavar"]
    if default is dataclasses.MISSING:
        options["required"] = True
    else:
        options["default"] = default
    if kind is bool:
        options.pop("metavar", None)
        if default is True:
            both = target.add_mutually_exclusive_group()
            both.add_argument(*_flags(f), action="store_true", **options)
            negative = ["--no-" + f.name.replace("_", "-"), *f.metadata.get("negative_flags", ())]
            both.add_argument(*negative, dest=f.name, action="store_false", help=f.metadata.get("negative_help"))
        else:
            target.add_argument(*_flags(f), action="store_true", **options)
    elif kind is dict:
        target.add_argument(*_flags(f), type=parse_mapping, action=_MergeMapping, **options)
    elif kind is list:
        target.add_argument(*_flags(f), type=_comma_list, **options)
    elif kind in (int, float, str):
        target.add_argument(*_flags(f), type=kind, **options)
    else:
        raise TypeError(f"no command-line form for field {f.name!r} of type {annotation!r}")


def build_parser(*configs: type, groups: Sequence[str] = (), **parser_kwargs: Any) -> argparse.ArgumentParser:
    """An argument parser with one option per init field of each dataclass in ``configs``.

    ``groups`` orders the argument groups in ``--help`` (others follow in order of appearance);
    ``parser_kwargs`` go to :class:`argparse.ArgumentParser`.
    """
    parser = argparse.ArgumentParser(**parser_kwargs)
    groups = {title: parser.add_argument_group(title) for title in groups}
    seen: set[str] = set()
    for config in configs:
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if not f.init:
                continue
            if f.name in seen:
                raise TypeError(f"field {f.name!r} appears in two of the dataclasses")
            seen.add(f.name)
            _add_field(parser, groups, f, hints[f.name])
    return parser


def config_from_args(config: type, args: argparse.Namespace) -> Any:
    """``config(**fields)`` from the options :func:`build_parser` added for it."""
    return config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config) if f.init})
