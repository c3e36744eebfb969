"""
Command-line configuration in nanoGPT's style, with checks:

    python train.py [config/file.py ...] [--key=value ...]

A config file is python that assigns top-level names (it runs as code: only use
files you trust). --key=value overrides a default; the value is read as a
python literal, or kept as a string if it is not one; a setting whose default
is a string takes the text as it is (--out_dir=2024). Config files apply
first, then the overrides, wherever they stand on the command line. Every key
must already have a default (an unknown key names the closest valid ones), and
the type of a new value must match the default's (an int may stand for a float).

Also here: fail(), the one-line exit for bad input, pick_device(), and
script_settings() for the scripts that only read settings and a device.
"""

import ast
import difflib
import re
import sys

import torch


class ConfigError(Exception):
    """A bad config file or override; the message is one line for the user."""


def parse_args(defaults, argv, usage):
    """Returns (config dict, set of keys the user set): the defaults, then every config file,
    then every --key=value, whatever their order on the command line. --help prints the
    settings as they stand after the config files, and exits."""
    config = dict(defaults)
    explicit = set()
    files = [arg for arg in argv if not arg.startswith("-")]
    for path in files:
        for key, value in _read_config_file(path).items():
            _set(config, explicit, key, value, f"config file {path}")
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage)
            width = max(map(len, config))
            for key, value in config.items():
                print(f"  --{key:<{width}} = {value!r}")
            sys.exit(0)
    for arg in argv:
        if arg in files:
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"cannot read argument {arg!r}; give settings as --key=value")
        key, sep, text = arg[2:].partition("=")
        if not sep:
            raise ConfigError(f"override {arg!r} has no value; write it as --{key}=VALUE")
        value = text if isinstance(config.get(key), str) else _literal(text)
        _set(config, explicit, key, value, f"override --{key}")
    return config, explicit


def _read_config_file(path):
    try:
        with open(path) as f:
            source = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}; check the path "
                          f"(configs live in config/)") from None
    names = {}
    try:
        exec(compile(source, path, "exec"), {}, names)
    except Exception as e:
        raise ConfigError(f"config file {path} failed: {type(e).__name__}: {e}; fix that file") from None
    # names starting with _, imported modules, functions and classes are helpers, not settings
    return {k: v for k, v in names.items()
            if not k.startswith("_") and not isinstance(v, type(sys)) and not callable(v)}


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as --router=gru is a string


def _set(config, explicit, key, value, where):
    if key not in config:
        close = difflib.get_close_matches(key, config.keys(), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "run with --help to list the keys"
        raise ConfigError(f"{where}: unknown key {key!r}; {hint}")
    default = config[key]
    if isinstance(default, float) and type(value) is int:
        value = float(value)  # 1 is as good as 1.0 for a float setting
    if type(value) is not type(default):
        raise ConfigError(f"{where}: {key} must be {type(default).__name__} like the default "
                          f"{default!r}, got {type(value).__name__} {value!r}")
    config[key] = value
    explicit.add(key)


def script_settings(defaults, argv, usage):
    """(settings, device) for sample.py, analyze.py and bench.py; a bad setting exits with one line."""
    try:
        cfg, _ = parse_args(defaults, argv, usage)
        return cfg, pick_device(cfg["device"])
    except ConfigError as e:
        fail(e)


def fail(message):
    """One line on stderr and a non-zero exit: bad input is not a traceback."""
    raise SystemExit(f"error: {message}")


def pick_device(name):
    """'auto' is cuda, then mps, then cpu; a named device must exist on this machine."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"device={name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if (name.startswith("cuda") and not cuda) or (name == "mps" and not mps):
        raise ConfigError(f"device={name!r} is not available on this machine; use --device=auto or --device=cpu")
    return name
