"""
Compare routers over seeds: train every (variant, seed) run of an experiment with train.py,
then report each variant's val loss as mean ± std over seeds and its difference from a
baseline, paired by seed, with a Student-t 95% interval.

    python compare.py experiments/routers_small.py                   # one run at a time
    python compare.py experiments/routers_small.py --jobs=2          # two at once, sharing the cores
    python compare.py experiments/routers_small.py --max_iters=200   # any train.py setting, for every run
    python compare.py experiments/routers_small.py --report_only=True

An experiment file is python that sets:
    base     = ["config/rmoe_small.py"]              # config files and --key=value for every run
    variants = {"smoe": ["config/smoe_small.py"],    # name -> config files and --key=value on top of base
                "rmoe": []}
    baseline = "smoe"                                # the variant the others are compared against
    seeds    = [1337, 1338, 1339]

Run <variant> with seed s trains into <exp_dir>/<variant>/seed<s>/: train.py's ckpt.pt and log.jsonl,
and its output in train.log. Stop at any moment (Ctrl-C) and give the same command again: finished
runs are skipped, interrupted ones resume from their checkpoint; a raised --max_iters trains finished
runs on. Any other change to the command is refused before anything trains, as is a run trained on
data prepared again since, or one whose record disagrees with its checkpoint: each run reported is
the run the command plans. One compare.py at a time owns exp_dir; its runs end when it ends.
The report goes to stdout as a Markdown table, to <exp_dir>/summary.json, and, with matplotlib,
to <exp_dir>/val_loss.png.
"""

import ast
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time

from rmoe.checkpoint import atomic_write, claim, load_checkpoint, read_record, record_problem
from configurator import ConfigError, fail, parse_args, pyplot, read_config_file, script_settings
from rmoe import REPO
from rmoe.dataset import dataset_dir, load_dataset, split_fingerprints
from rmoe.training import check_settings, default_settings

DEFAULTS = {
    "exp_dir": "",  # folder of the runs and the report (default: out-compare/<experiment file's name>)
    "jobs": 1,  # runs at once; on CPU they share the cores, with several GPUs each gets its own
    "seeds": "",  # comma-separated seeds instead of the experiment file's, e.g. 1,2,3
    "report_only": False,  # only report the runs that have finished; train nothing
}
OWNED = ("out_dir", "seed", "init_from")  # set by compare.py for each run
PER_RUN = ("out_dir", "init_from", "max_iters")  # the settings a run's checkpoint may differ in from the plan


def main(argv):
    files = [a for a in argv if not a.startswith("-")]
    ours = [a for a in argv if a.split("=")[0][2:] in DEFAULTS or a in ("-h", "--help")]
    overrides = [a for a in argv if a.startswith("-") and a not in ours]
    lock = None
    cfg, _ = script_settings(sys.modules[__name__], ours)
    try:
        if len(files) != 1:
            raise ConfigError(f"give one experiment file (got {len(files)}), e.g. experiments/routers_small.py")
        exp = read_experiment(files[0], cfg["seeds"])
        exp_dir = cfg["exp_dir"] or os.path.join("out-compare", os.path.splitext(os.path.basename(files[0]))[0])
        if cfg["jobs"] < 1:
            raise ConfigError(f"jobs={cfg['jobs']} must be at least 1")
        runs = plan_runs(exp, overrides, exp_dir)  # every run's settings checked before any starts
        if not cfg["report_only"]:
            for dataset in dict.fromkeys(run["dataset"] for run in runs):
                load_dataset(dataset)  # prepared once, here, not by every run at once; a missing one stops us now
            lock = own(exp_dir)  # held until the report is written, released however the process ends
        check_runs(runs)  # every run trained as planned, before anything trains
    except (ConfigError, ValueError) as e:
        fail(e)
    if not cfg["report_only"]:
        train_all(runs, cfg["jobs"])
    report(exp, runs, exp_dir)
    if lock:
        lock.close()  # the folder is free for the next compare


def read_experiment(path, seeds_text):
    """The experiment file's base, variants, baseline and seeds, checked; a problem is one ConfigError."""
    names = read_config_file(path)
    unknown = set(names) - {"base", "variants", "baseline", "seeds"}
    if unknown:
        raise ConfigError(f"experiment file {path}: unknown name(s) {', '.join(sorted(unknown))}; "
                          f"it sets base, variants, baseline and seeds")
    exp = {"base": names.get("base", []), "variants": names.get("variants"), "baseline": names.get("baseline"),
           "seeds": names.get("seeds")}
    if seeds_text:
        try:
            exp["seeds"] = [int(s) for s in seeds_text.split(",")]
        except ValueError:
            raise ConfigError(f"seeds={seeds_text!r} must be comma-separated integers, e.g. --seeds=1,2,3") from None
    variants = exp["variants"]
    if not (isinstance(variants, dict) and variants and all(
            isinstance(v, list) and all(isinstance(a, str) for a in v) for v in variants.values())):
        raise ConfigError(f"experiment file {path}: variants must be a dict of name -> list of config files "
                          f"and --key=value strings")
    if not (isinstance(exp["base"], list) and all(isinstance(a, str) for a in exp["base"])):
        raise ConfigError(f"experiment file {path}: base must be a list of config files and --key=value strings")
    duplicated = duplicate_variant_names(path)
    if duplicated:
        raise ConfigError(f"experiment file {path}: variant {duplicated!r} is named twice; give each its own name")
    for name in variants:
        if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name)):
            raise ConfigError(f"experiment file {path}: variant name {name!r} must be a string of at most 100 "
                              f"letters, digits, '.', '_' or '-' (it names a folder)")
    if not isinstance(exp["baseline"], str) or exp["baseline"] not in variants:
        raise ConfigError(f"baseline={exp['baseline']!r} is not one of the variants ({', '.join(variants)})")
    seeds = exp["seeds"]
    if not (isinstance(seeds, list) and seeds and all(type(s) is int and s >= 0 for s in seeds)):
        raise ConfigError(f"experiment file {path}: seeds must be a non-empty list of non-negative integers")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a seed; each seed once")
    return exp


def duplicate_variant_names(path):
    """A name given twice in the variants dict literal (python would silently keep the last one)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "variants" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
            for key in keys:
                if keys.count(key) > 1:
                    return key
    return None


def plan_runs(exp, overrides, exp_dir):
    """One dict per (variant, seed): its name, seed, folder, train.py arguments and max_iters."""
    runs = []
    for seed in exp["seeds"]:  # seed by seed: an experiment stopped early still has whole pairs
        for name, args in exp["variants"].items():
            for arg in exp["base"] + args + overrides:
                if arg.startswith("--") and arg[2:].split("=")[0] in OWNED:
                    raise ConfigError(f"variant {name}: {arg} is set by compare.py for each run; remove it")
            run_dir = os.path.join(exp_dir, name, f"seed{seed}")
            argv = exp["base"] + args + overrides + [f"--out_dir={run_dir}", f"--seed={seed}"]
            try:
                settings, _ = parse_args(default_settings(), argv, "")
                cfg, _ = check_settings(settings)
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"variant {name}: {e}") from None
            runs.append({"variant": name, "seed": seed, "dir": run_dir, "argv": argv, "max_iters": cfg.max_iters,
                         "dataset": cfg.dataset, "settings": settings})
    return runs


def own(exp_dir):
    """Make and lock exp_dir: one compare.py at a time trains its runs."""
    try:
        os.makedirs(exp_dir, exist_ok=True)
        return claim(exp_dir, "exp_dir", "compare.py")
    except OSError as e:
        why = "it is a file" if os.path.isfile(exp_dir) else e.strerror or e
        raise ConfigError(f"cannot use exp_dir {exp_dir} ({why}); pick another --exp_dir") from None


def check_runs(runs):
    """Set each run's state: "new", "resume" or "finished". A run trained otherwise than planned (settings,
    data, steps) or whose record disagrees with its checkpoint is a ConfigError, before anything trains."""
    fingerprints = {}
    for run in runs:
        run["state"] = run_state(run, fingerprints)


def run_state(run, fingerprints):
    """Where a run stands, from its checkpoint and record, each compared with the plan and the other."""
    records = read_record(run["dir"])
    end = max((r["step"] for r in records if r["kind"] == "end"), default=None)
    where, again = f"run {run['dir']}", f"delete {run['dir']} to train it again, or use a new --exp_dir"
    ckpt_path = os.path.join(run["dir"], "ckpt.pt")
    if not os.path.exists(ckpt_path):
        if end:  # it trained, but nothing says with which settings
            raise ConfigError(f"{where}: its record ends at step {end} but it has no ckpt.pt, so its settings "
                              f"cannot be checked; restore the checkpoint, or {again}")
        return "finished" if end == run["max_iters"] else "new"  # end is None, or 0 for --max_iters=0
    ckpt = load_checkpoint(ckpt_path, for_resume=True)
    problem = record_problem(records, ckpt)
    if problem:
        raise ConfigError(f"{where}: its log.jsonl {problem}; restore it, or {again}")
    saved = {**ckpt["train_config"], **ckpt["model_config"]}
    differ = [f"{k}={saved.get(k)!r} (this command: {v!r})" for k, v in run["settings"].items()
              if k not in PER_RUN and saved.get(k) != v]
    if differ:
        raise ConfigError(f"{where} was trained with {', '.join(differ)}; give the command it was trained with, "
                          f"or a new --exp_dir")
    if "data_files" not in ckpt:
        raise ConfigError(f"{where}: its checkpoint does not name the files of its data (an older rmoe wrote it), "
                          f"so its data cannot be checked; {again}")
    if ckpt["data_files"] != data_of(run, fingerprints):
        raise ConfigError(f"{where} was trained on other data than {dataset_dir(run['dataset'])} holds now (it was "
                          f"prepared again since); restore the data it was trained on, or use a new --exp_dir")
    trained = max(end or 0, ckpt["iter_num"])
    if trained > run["max_iters"]:
        raise ConfigError(f"{where} was trained to step {trained}, past max_iters={run['max_iters']}; give "
                          f"--max_iters={trained}, or a new --exp_dir")
    return "finished" if end == run["max_iters"] else "resume"


def data_of(run, fingerprints):
    """The fingerprint of a run's dataset as it is now, computed once per dataset."""
    data_dir = dataset_dir(run["dataset"])
    if data_dir not in fingerprints:
        if not os.path.exists(os.path.join(data_dir, "train.bin")):
            raise ConfigError(f"run {run['dir']}: its dataset {run['dataset']!r} is not in {data_dir}, so its data "
                              f"cannot be checked; prepare it again, or use a new --exp_dir")
        fingerprints[data_dir] = split_fingerprints(data_dir)
    return fingerprints[data_dir]


def train_all(runs, jobs):
    """Train the runs that have not finished, `jobs` at a time; Ctrl-C stops each at its current step."""
    todo = [r for r in runs if r["state"] != "finished"]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to train, {jobs} at a time")
    gpus = gpu_count()
    threads = threads_per_run(jobs)
    running, failed = {}, []  # slot -> (run, process, start time)

    def on_term(signum, frame):
        raise KeyboardInterrupt  # SIGTERM and SIGHUP (a closed terminal) stop the runs as Ctrl-C does
    signal.signal(signal.SIGTERM, on_term)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_term)
    try:
        while todo or running:
            for slot in range(jobs):
                if slot not in running and todo:
                    run = todo.pop(0)
                    running[slot] = (run, start(run, slot, gpus, threads), time.time())
            time.sleep(0.2)
            for slot, (run, process, t0) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[slot]
                label = f"{run['variant']} seed {run['seed']}"
                if process.returncode == 0:
                    print(f"  finished {label} in {(time.time() - t0) / 60:.1f} min")
                else:
                    failed.append(f"{label}: {run_error(run)}")
                    print(f"  FAILED {label} (exit code {process.returncode}): see {run['dir']}/train.log")
    except KeyboardInterrupt:
        stop_all([(run, process) for run, process, _ in running.values()])
    if failed:
        fail(f"{len(failed)} run(s) failed ({'; '.join(failed)}); fix that, then give the same command again")


def stop_all(running):
    """Ctrl-C (or SIGTERM, SIGHUP): each run saves its current step and exits; a second one stops them at once."""
    try:
        for run, process in running:
            process.send_signal(signal.SIGINT)  # once: train.py saves at its current step and exits
        for run, process in running:
            process.wait()
    except KeyboardInterrupt:
        for run, process in running:
            process.kill()
            process.wait()
        print("interrupted again: the runs in flight stopped without saving their current step; their last "
              "checkpoints are kept; give the same command again to continue")
        sys.exit(130)
    unsaved = [f"{run['variant']} seed {run['seed']} ({run_error(run)})" for run, process in running
               if process.returncode != 130]  # train.py's code for "saved at the current step"
    saved = "every run in flight saved its current step" if not unsaved else (
        f"these runs did not save their current step: {'; '.join(unsaved)}")
    print(f"interrupted: {saved}; give the same command again to continue")
    sys.exit(130)


def threads_per_run(jobs):
    """CPU threads for each of `jobs` runs at once: the cores shared out, or fewer where the user's
    OMP_NUM_THREADS asks for fewer (a machine shared with other work)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    asked = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(asked)) if asked.isdigit() and int(asked) > 0 else threads


def start(run, slot, gpus, threads):
    """Start train.py for a run: from scratch, or resumed from its checkpoint. Its output goes to train.log;
    it ends when compare.py ends, however that ends."""
    os.makedirs(run["dir"], exist_ok=True)
    resume = run["state"] == "resume"
    argv = run["argv"] + (["--init_from=resume"] if resume else [])
    env = dict(os.environ)
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)  # one run per GPU
    elif not gpus:
        env["OMP_NUM_THREADS"] = str(threads)  # jobs x threads <= cores: no run slows the others
    done = [r["step"] for r in read_record(run["dir"]) if r["kind"] == "train"]
    how = f"resumed from its checkpoint (record at step {max(done, default=0)})" if resume else "from scratch"
    print(f"  training {run['variant']} seed {run['seed']} {how} -> {run['dir']}")
    log_path = os.path.join(run["dir"], "train.log")
    log = open(log_path, "a")
    run["log_start"] = log.tell()  # where this attempt's output begins
    return subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *argv], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True,  # Ctrl-C reaches us alone
                            preexec_fn=die_with_parent(os.getpid()))


def die_with_parent(parent):
    """A preexec_fn for a child that gets SIGINT (train.py: save and exit) when this process dies, even by
    SIGKILL: Linux's prctl(PR_SET_PDEATHSIG). Elsewhere, None: the run is stopped by our signal handlers only."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec():
        libc.prctl(1, signal.SIGINT)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # we died before the prctl took hold
            os.kill(os.getpid(), signal.SIGINT)
    return preexec


def gpu_count():
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


def run_error(run):
    """Why a run failed: the last "error:" line its train.py wrote in this attempt, else its last line."""
    try:
        with open(os.path.join(run["dir"], "train.log"), "rb") as f:
            f.seek(run.get("log_start", 0))
            lines = f.read().decode("utf-8", errors="replace").strip().splitlines()
    except OSError as e:
        lines = [f"its train.log cannot be read ({e.strerror})"]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["no output"])[-1]


# -----------------------------------------------------------------------------
# statistics

def mean_std(values):
    """(mean, sample standard deviation); the deviation is nan for a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def paired_difference(values, baseline):
    """Mean of the per-seed differences values[i] - baseline[i] and its 95% interval, Student t with
    n - 1 degrees of freedom: mean ± t * sd / sqrt(n). (mean, low, high); the interval is nan for n < 2."""
    d = [v - b for v, b in zip(values, baseline, strict=True)]
    mean, sd = mean_std(d)
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile(0.975, len(d) - 1) * sd / math.sqrt(len(d))
    return mean, mean - half, mean + half


def t_quantile(p, df):
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom: bisection on its CDF,
    whose density is integrated from 0 by Simpson's rule (no scipy needed)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x, n=2000):
        h = x / n
        f = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[n] + 4 * sum(f[1:n:2]) + 2 * sum(f[2:n:2]))
    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


# -----------------------------------------------------------------------------
# the report

def summarise(exp, runs):
    """Per variant: each finished run's final and best val loss (and BPC), ms/step, and the statistics."""
    per_run = {}
    for run in runs:
        records = read_record(run["dir"])
        evals = [r for r in records if r["kind"] == "eval"]
        if not any(r["kind"] == "end" and r["step"] == run["max_iters"] for r in records) or not evals:
            continue  # not finished (check_runs saw that every run is the planned one)
        final = evals[-1]
        times = [r["ms_per_step"] for r in records if r["kind"] == "train" and "ms_per_step" in r]
        per_run[(run["variant"], run["seed"])] = {
            "final_val_loss": final["val_loss"], "best_val_loss": min(r["val_loss"] for r in evals),
            "final_val_bpc": final.get("val_bpc"),
            "ms_per_step": statistics.median(times) if times else None,  # none without logged steps
            "curve": [(r["step"], r["val_loss"]) for r in evals],
        }
    variants = {}
    base_seeds = {s for v, s in per_run if v == exp["baseline"]}
    for name in exp["variants"]:
        seeds = [s for s in exp["seeds"] if (name, s) in per_run]
        if not seeds:
            continue
        rows = [per_run[(name, s)] for s in seeds]
        v = {"seeds": seeds, "runs": {s: {k: x for k, x in r.items() if k != "curve"} for s, r in zip(seeds, rows)}}
        for key in ("final_val_loss", "best_val_loss", "ms_per_step", "final_val_bpc"):
            values = [r[key] for r in rows if r[key] is not None]
            v[key] = mean_std(values) if values else None  # None: no run measured it
        paired = [s for s in seeds if s in base_seeds]
        if name != exp["baseline"] and paired:
            for key in ("final_val_loss", "best_val_loss"):
                v[f"{key}_vs_baseline"] = paired_difference([per_run[(name, s)][key] for s in paired],
                                                            [per_run[(exp["baseline"], s)][key] for s in paired])
            v["paired_seeds"] = paired
        v["curves"] = [r["curve"] for r in rows]
        variants[name] = v
    return variants


def markdown_table(exp, variants):
    bpc = any(v["final_val_bpc"] for v in variants.values())
    head = ["variant", "seeds", "final val loss", "best val loss"] + (["final val BPC"] if bpc else []) + [
        f"final − {exp['baseline']} (95% CI)", "beyond noise?", "ms/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in variants.items():
        cells = [name, str(len(v["seeds"])), pm(v["final_val_loss"]), pm(v["best_val_loss"])]
        if bpc:
            cells.append(pm(v["final_val_bpc"]) if v["final_val_bpc"] else "")
        if "final_val_loss_vs_baseline" in v:
            mean, low, high = v["final_val_loss_vs_baseline"]
            cells += [f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]" if math.isfinite(low) else f"{mean:+.4f} (one seed)",
                      "—" if not math.isfinite(low) else "yes" if low > 0 or high < 0 else "no"]
        else:
            cells += ["baseline" if name == exp["baseline"] else "no paired seed", ""]
        cells.append(f"{v['ms_per_step'][0]:.0f}" if v["ms_per_step"] else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pm(mean_sd):
    mean, sd = mean_sd
    return f"{mean:.4f} ± {sd:.4f}" if math.isfinite(sd) else f"{mean:.4f}"


def report(exp, runs, exp_dir):
    variants = summarise(exp, runs)
    n_done = sum(len(v["seeds"]) for v in variants.values())
    print(f"\n{n_done} of {len(runs)} runs finished; mean ± std over seeds; differences paired by seed\n")
    if not variants:
        return
    print(markdown_table(exp, variants))
    summary = {"baseline": exp["baseline"], "variants": {n: {k: x for k, x in v.items() if k != "curves"}
                                                         for n, v in variants.items()}}
    text = json.dumps(no_nan(summary), indent=1, allow_nan=False)  # strict JSON: no bare NaN
    write_report(os.path.join(exp_dir, "summary.json"), text.encode(), "JSON")
    print(f"\nwrote {os.path.join(exp_dir, 'summary.json')}")
    plot_curves(variants, os.path.join(exp_dir, "val_loss.png"))


def no_nan(value):
    """value with every non-finite float (a one-seed deviation or interval) as None, JSON's null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: no_nan(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [no_nan(x) for x in value]
    return value


def plot_curves(variants, path):
    """Mean val loss per variant over steps, with a band of ± one standard deviation over seeds."""
    plt = pyplot("to draw the val-loss curves")
    if plt is None:
        return
    import io
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, v in variants.items():
        curves = [dict(c) for c in v["curves"]]  # step -> val loss, of each seed
        steps = sorted(set.intersection(*(set(c) for c in curves)))  # every seed is drawn, at the steps all have
        left_out = sorted(set().union(*curves) - set(steps))
        if left_out:
            print(f"  {path}: {name} is drawn at the {len(steps)} steps every seed evaluated; steps "
                  f"{', '.join(map(str, left_out))} are left out, as not every seed has them")
        losses = [[c[s] for s in steps] for c in curves]
        mean = [statistics.fmean(col) for col in zip(*losses)]
        sd = [statistics.stdev(col) if len(col) > 1 else 0.0 for col in zip(*losses)]
        for ax, start in zip(axes, (0, len(steps) // 2)):
            ax.plot(steps[start:], mean[start:], marker=".", label=f"{name} ({len(curves)} seeds)")
            ax.fill_between(steps[start:], [m - s for m, s in zip(mean, sd)][start:],
                            [m + s for m, s in zip(mean, sd)][start:], alpha=0.2)
    axes[0].set_title("val loss (mean ± std over seeds)")
    axes[1].set_title("second half of the run")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("val loss (nats)")
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110)
    plt.close(fig)
    write_report(path, buffer.getvalue(), "picture")
    print(f"wrote {path}")


def write_report(path, data, what):
    try:
        atomic_write(path, data, what)
    except ValueError as e:
        fail(e)


if __name__ == "__main__":
    main(sys.argv[1:])
