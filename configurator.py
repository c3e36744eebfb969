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

A float setting must be finite, wherever its value comes from. --help prints every
setting with its value and what it means; the meanings are the trailing comments of the
defaults in the source, read by setting_comments(), so they are written once.

Also here, what every script shares: fail(), the one-line exit for bad input; pick_device(),
precision() and set_threads(); script_settings() for the scripts whose settings are a DEFAULTS
dict; run_script() and say(), what a closed output pipe does.
"""

import ast
import difflib
import inspect
import io
import math
import os
import re
import sys
import tokenize
import zipfile

import torch


class ConfigError(Exception):
    """A bad config file or override; the message is one line for the user."""


def parse_args(defaults, argv, usage, help=None):
    """Returns (config dict, set of keys the user set): the defaults, then every config file,
    then every --key=value, whatever their order on the command line. --help prints the
    usage, then each setting as it stands after the config files with its meaning from the
    help dict (key -> text; see setting_comments), and exits."""
    config = dict(defaults)
    explicit = set()
    files = [arg for arg in argv if not arg.startswith("-")]
    for path in files:
        for key, value in read_config_file(path).items():
            _set(config, explicit, key, value, f"config file {path}")
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage)
            width = max(map(len, config))
            for key, value in config.items():
                print(f"  --{key:<{width}} = {value!r}")
                if (help or {}).get(key):
                    print(f"      {help[key]}")
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


def read_config_file(path):
    """The settings a python config file assigns; anything else given in its place (a folder, a
    checkpoint, a binary or non-UTF-8 file, a file not named .py) is a ConfigError."""
    fix = "give a python config file such as config/rmoe_small.py, and settings as --key=value"
    if not path.strip():
        raise ConfigError(f"an empty argument {path!r} is not a config file; {fix}")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder, not a config file; {fix} (a checkpoint's folder "
                          f"goes in --out_dir={path})")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}; check the path "
                          f"(configs live in config/)") from None
    if zipfile.is_zipfile(io.BytesIO(data)):  # torch.save writes zip archives
        raise ConfigError(f"{path} is a checkpoint or another archive, not a config file; give a "
                          f"checkpoint's folder as --out_dir={os.path.dirname(path) or '.'}")
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a python config file (not UTF-8 text: bad byte at offset "
                          f"{e.start}); {fix}") from None
    if "\0" in source:
        raise ConfigError(f"{path} is not a python config file (it holds binary data); {fix}")
    if not path.endswith(".py"):
        raise ConfigError(f"{path} is not a python config file (its name does not end in .py); {fix}")
    names = {}
    try:
        exec(compile(source, path, "exec"), {}, names)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"config file {path} failed: {type(e).__name__}: {first}; fix that file") from None
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
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key}={value} is not a finite number; give a number such as "
                          f"the default {default!r}")
    config[key] = value
    explicit.add(key)


def setting_comments(source, name=None):
    """{setting: meaning} from the trailing comments of the defaults in the source: the fields of
    a class (a dataclass such as TrainConfig), or, with name, the entries of the dict literal
    assigned to that name in a module (such as sample.DEFAULTS). A setting without a trailing
    comment is left out. The comment of a setting is the one on the line where it ends."""
    text = inspect.getsource(source)
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(text).readline)
                if token.type == tokenize.COMMENT}
    tree = ast.parse(text)
    if name is None:
        entries = [(node.target.id, node) for node in tree.body[0].body
                   if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    else:
        found = [node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)]
        entries = [(key.value, value) for key, value in zip(found[0].keys, found[0].values)]
    return {key: comments[node.end_lineno] for key, node in entries if node.end_lineno in comments}


def set_threads(threads):
    """Use this many CPU threads in torch (0 keeps torch's default, one per core, or
    OMP_NUM_THREADS). On a machine other programs share, one thread samples a small model
    about twice as fast as two (see docs/troubleshooting.md, "Threads on a busy machine")."""
    if threads < 0:
        raise ConfigError(f"threads={threads} must be 0 (torch's default) or more")
    if threads:
        torch.set_num_threads(threads)


def script_settings(script, argv):
    """(settings, device) of a script that keeps its settings in a DEFAULTS dict, each with its meaning
    as a trailing comment (sample.py, eval.py, analyze.py, bench.py, compare.py, the lessons): the
    defaults, then config files, then --key=value; --help prints the script's docstring and the
    meanings. torch takes the settings' threads where they have that key; device is None where they
    have none. A bad setting exits with one line."""
    try:
        cfg, _ = parse_args(script.DEFAULTS, argv, script.__doc__, help=setting_comments(script, "DEFAULTS"))
        if "threads" in cfg:
            set_threads(cfg["threads"])
        return cfg, pick_device(cfg["device"]) if "device" in cfg else None
    except ConfigError as e:
        fail(e)


def run_script(main, argv):
    """main(argv), but output piped into a reader that stops early (| head) ends the script
    quietly, as SIGPIPE ends a Unix tool: exit code 141, no traceback."""
    try:
        main(argv)
        sys.stdout.flush()  # inside the try: what is still buffered can meet the closed pipe too
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush goes nowhere
        sys.exit(141)


def say(text):
    """print for a long job: a closed pipe (train.py | head) does not stop it; the rest of its output goes
    nowhere. (run_script is the policy of the short scripts: they stop.)"""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")


def pyplot(purpose):
    """matplotlib.pyplot, drawing into files only; or None, after a line saying how to get it, where
    matplotlib is not installed: pictures are optional, and nothing else needs it."""
    try:
        import matplotlib
    except ImportError:
        print(f"pip install matplotlib {purpose}")
        return None
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    return plt


def fail(message):
    """One line on stderr and a non-zero exit: bad input is not a traceback."""
    raise SystemExit(f"error: {message}")


def precision(device, dtype="auto"):
    """(dtype name, autocast context) of a device: bfloat16 autocast, or float32 with no autocast.
    "auto" is bfloat16 on a CUDA GPU that has it, float32 elsewhere; every script takes its
    precision from here."""
    device_type = device.split(":")[0]
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float32":
        return dtype, torch.autocast(device_type=device_type, enabled=False)
    return dtype, torch.autocast(device_type=device_type, dtype=torch.bfloat16)


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
