"""One config dataclass per stage becomes that stage's command line, and errors become messages.

Every field of the dataclass is a hyphenated flag (`batch_size` -> `--batch-size`) whose help comes
from the field's `metadata["help"]`. Fields with `metadata["cli"] = False` are derived (read from an
earlier stage's files) and are not flags. Only the flags the user typed are kept, so a command can
start from a saved config (resume, evaluate, encode) and override just those.
"""

import argparse
import dataclasses
import functools
import sys
import types
import typing


def opt(default, help, **extra):
    """A config field that is a flag, with its --help text (and optional `choices`)."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def derived(default):
    """A config field that is not a flag: filled in by the run or read from an earlier stage's files."""
    return dataclasses.field(default=default, metadata={"cli": False})


class UserError(Exception):
    """A problem the user can fix (bad input, missing data): printed as one line, no traceback."""


def _flag_type(annotation):
    """The argparse `type` for a field annotation (Optional[X] -> X)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(t for t in typing.get_args(annotation) if t is not type(None))
    return annotation


def cli_fields(config_cls) -> list:
    """The dataclass fields that are command-line flags, the class's own before those it inherits."""
    fields = [f for f in dataclasses.fields(config_cls) if f.metadata.get("cli", True)]
    own = vars(config_cls).get("__annotations__", {})
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def build_parser(config_cls, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per CLI field of `config_cls` (defaults shown in --help)."""
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group("configuration (saved with the run)")
    for field in cli_fields(config_cls):
        flag = "--" + field.name.replace("_", "-")
        kind = _flag_type(hints[field.name])
        shown = "auto" if field.default is None else field.default
        help_text = f"{field.metadata.get('help', '')} (default: {shown})"
        kwargs = dict(default=argparse.SUPPRESS, help=help_text, dest=field.name)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag, type=kind, choices=field.metadata.get("choices"), **kwargs)
    return parser


def given_config_values(config_cls, args: argparse.Namespace) -> dict:
    """The config values the user typed on the command line."""
    names = {f.name for f in cli_fields(config_cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from(config_cls, values: dict):
    """A config from a (possibly saved, possibly older) dict: unknown keys are ignored."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in values.items() if k in names})


def saved_config_from(config_cls, saved: dict):
    """A config from one saved in a checkpoint: a field added since keeps the value older runs had.

    `config_cls.ADDED_LATER` maps such fields to the behaviour before them, where that differs from
    today's default (a new run gets the default, an old run what it was trained with).
    """
    return config_from(config_cls, {**getattr(config_cls, "ADDED_LATER", {}), **saved})


def main_entry(main):
    """Wrap a command's `main(argv)`: UserError -> one line on stderr and exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
