"""The commands' config flags: ``--config``, ``--set``, ``--keys`` and Make's overrides."""

from __future__ import annotations

import argparse
import json
import os
import sys

from training.config import Config, ConfigError, load_config

#: CLI flag → config key it overrides (Make variables map onto these flags).
FLAG_KEYS = {
    "access": "access.pattern",
    "storage": "storage.type",
    "epochs": "train.epochs",
    "batch_size": "loader.batch_size",
    "workers": "loader.num_workers",
    "lr": "train.lr",
    "limit": "dataset.limit",
    "out": "output.dir",
    "data": "storage.root, storage.prefixes (and storage.type, storage.bucket)",
    "format": "dataset.format",
    "arch": "model.arch",
    "s3_endpoint": "storage.endpoint_url",
    "s3_bucket": "storage.bucket",
    "s3_prefix": "storage.prefixes",
}

#: Flags whose values are strings, whatever they look like to YAML (numbers, dates, ``#``).
STRING_FLAGS = ("access", "storage", "out", "format", "arch", "s3_endpoint", "s3_bucket")


def print_keys(command: type[Config] = Config) -> None:
    """Print every key of ``command``'s configuration, its default and its description."""
    from training.config import describe_keys

    try:
        for key, default, description in describe_keys(command):
            print(f"{key} = {default!r}\n    {description}")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _KeysAction(argparse.Action):
    """``--keys``: print the configuration keys (or say there are none), then exit 0."""

    def __init__(self, option_strings, dest, config: type[Config] | None = Config, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.config = config

    def __call__(self, parser, namespace, values, option_string=None):
        if self.config is not None:
            print_keys(self.config)
        else:
            print("this command reads no configuration file: every setting is a flag (--help)")
        parser.exit()


def add_keys_argument(
    parser: argparse.ArgumentParser, *, config: type[Config] | None = Config
) -> None:
    """Add ``--keys``: list ``config``'s keys, defaults, descriptions (None: say there are none)."""
    parser.add_argument(
        "--keys",
        action=_KeysAction,
        config=config,
        help="print every config key with its default and description, then exit"
        if config is not None
        else "say that this command reads no config keys (its settings are flags), then exit",
    )


def add_config_arguments(
    parser: argparse.ArgumentParser,
    flags: tuple[str, ...] = tuple(FLAG_KEYS),
    command: type[Config] = Config,
) -> None:
    """Add ``--config``, ``--set``, ``--keys`` and the override ``flags`` for class ``command``."""
    parser.add_argument(
        "--config", default="configs/detection.yaml", help="YAML config file (default: %(default)s)"
    )
    for flag in flags:
        help_text = f"overrides {FLAG_KEYS[flag]}"
        if flag == "s3_prefix":
            help_text += " (comma-separated for several)"
        if flag == "data":
            help_text = (
                "dataset location(s), comma-separated: directories, or s3://bucket/prefix "
                "(overrides storage.*; the format is detected and the classes read from the "
                "data unless --format / dataset.classes say otherwise)"
            )
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, help=help_text)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set access.shuffle_buffer=128 (repeatable)",
    )
    add_keys_argument(parser, config=command)
    parser.set_defaults(config_command=command)


def config_from_args(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    """Load ``args.config`` with the flags' overrides, then ``extra``, then ``--set`` ones.

    Returns:
        The configuration, of the class given to :func:`add_config_arguments` (:class:`Config` when
        none).

    Raises:
        ConfigError: as :func:`training.config.load_config`.
    """
    overrides = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value in (None, ""):
            continue
        if flag == "data":
            overrides.extend(data_overrides(value))
            continue
        if flag == "s3_prefix":
            value = _yaml_list([p.strip() for p in value.split(",") if p.strip()])
        elif flag in STRING_FLAGS:
            value = _yaml_string(value)  # `--out "runs #2"`, `--s3-bucket 123` stay strings
        overrides.append(f"{key}={value}")
    command = getattr(args, "config_command", Config)
    return load_config(args.config, [*overrides, *extra, *args.set], command)


def data_overrides(value: str) -> list[str]:
    """Config overrides that point a run at the dataset(s) of ``DATA=`` / ``--data``.

    ``value``: comma-separated locations, all directories or all ``s3://bucket/prefix`` URLs in one
    bucket; several are sources with the same classes read as one dataset. Directories become
    ``storage.root`` (their common parent) and ``storage.prefixes`` (their paths under it); URLs
    become ``storage.bucket`` and ``storage.prefixes``. Then ``dataset.format=auto`` (detected) and
    ``dataset.classes=[]`` (read from the data); later overrides (``--format``, ``--set``) win.

    Raises:
        ConfigError: mixed directories and URLs, several buckets, or an URL without a bucket.
    """
    locations = [p.strip() for p in value.split(",") if p.strip()]
    urls = [p for p in locations if p.startswith("s3://")]
    common = ["dataset.format=auto", "dataset.classes=[]"]
    if urls and len(urls) != len(locations):
        raise ConfigError(f"--data {value!r} mixes directories and s3:// URLs; use one kind")
    if urls:
        parts = [u[len("s3://") :].split("/", 1) for u in urls]
        buckets = {p[0] for p in parts}
        if len(buckets) != 1 or "" in buckets:
            raise ConfigError(
                f"--data {value!r}: every s3:// URL must name the same bucket (s3://bucket/prefix)"
            )
        prefixes = [p[1].strip("/") if len(p) > 1 else "" for p in parts]
        return [
            "storage.type=s3",
            f"storage.bucket={_yaml_string(buckets.pop())}",
            f"storage.prefixes={_yaml_list(prefixes)}",
            *common,
        ]
    paths = [os.path.normpath(p) for p in locations]
    root = os.path.commonpath([os.path.abspath(p) for p in paths])
    if len(paths) == 1:
        root = paths[0]
    elif not any(os.path.isabs(p) for p in paths):
        root = os.path.relpath(root)
    prefixes = [os.path.relpath(os.path.abspath(p), os.path.abspath(root)) for p in paths]
    return [
        "storage.type=fs",
        f"storage.root={_yaml_string(root)}",
        f"storage.prefixes={_yaml_list(['' if p == '.' else p for p in prefixes])}",
        *common,
    ]


def _yaml_string(text: str) -> str:
    """``text`` as a double-quoted YAML scalar, for any path (JSON strings: YAML 1.2, 7.3.1)."""
    return json.dumps(text)


def _yaml_list(items: list[str]) -> str:
    """A YAML flow list of double-quoted strings (safe for any path)."""
    return "[" + ", ".join(_yaml_string(item) for item in items) + "]"
