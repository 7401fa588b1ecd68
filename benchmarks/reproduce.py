"""The paper's CIFAR-10 table in one command: train, select on validation, evaluate, tabulate.

    .venv/bin/python benchmarks/reproduce.py --data cifar10:DIR [--protocol gpq]
        [--bits 12,24,32,48] [--seeds 3] [--out runs/reproduce] [--epochs 300] [--batch-size 500]
        [--top-k K] [--mode original|consistent] [--dry-run]
        [gpq train flags: --imagenet-mat FILE, --filters ..., --labeled-per-class N, ...]

For each code length and seed, `gpq train` runs the paper's schedule (300 epochs of batch 500
labeled + 500 unlabeled images, the original's learning rate: `GPQConfig`'s default) in its own
run folder, `OUT/PROTOCOL/BITSbits-seedS`. The model evaluated is the one chosen on validation,
`best.keras` (labeled images held out of training, never the test queries); `model.keras`, the
last epoch's, only when a run has no `best.keras` (no validation images), which is said and
recorded. `gpq evaluate --split RUN` scores it on the run's own queries and database (unseen:
unseen@unseen and unseen@all). Protocols: `gpq` (the paper's, 1,000 / 5,000 / 54,000),
`unseen[:FRACTION]`, `cifar10-1`, `cifar10-2` (`gpq_keras.data.protocols`). Other flags go to
`gpq train` unchanged (`--imagenet-mat` for the paper's initialisation, `--filters`,
`--labeled-per-class`, `--image-size`, ...).

Writes `OUT/results.json` (every run: its folder, run.json, the checkpoint evaluated and why, the
evaluation's JSON, mAP) and `OUT/table.md` (rows: data and protocol, columns: bits, cells: mean
± sample std of mAP over the seeds). Runs of other protocols already in OUT stay in both.

Rerunning the same command resumes: a finished run (run.json status "finished") is not trained
again, nor re-evaluated while its evaluation is newer than its checkpoint; an interrupted run is
resumed by `gpq train` from its last backup; a diverged run is reported and left alone (remove its
folder to train it again). A finished run trained with other arguments is refused, naming them.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

PROTOCOL_CHOICES = ("gpq", "unseen[:FRACTION]", "cifar10-1", "cifar10-2")
BITS = (12, 24, 32, 48)
# dests of `gpq train` flags this script sets itself: refused among the flags passed through
OWN_DESTS = {  # dest: (the gpq train flag, this script's own)
    "data": ("--data", "--data"),
    "output": ("--output", "--out"),
    "protocol": ("--protocol", "--protocol"),
    "seed": ("--seed", "--seeds"),
    "bits": ("--bits", "--bits"),
    "num_subspaces": ("--n-book", "--bits"),
    "num_codewords": ("--n-word", "--bits"),
    "epochs": ("--epochs", "--epochs"),
    "batch_size": ("--batch-size", "--batch-size"),
    "overwrite": ("--overwrite", None),
    "restart": ("--restart", None),
}
SENTINEL = "reproduce.py-output"


def parse_args(argv=None):
    """(reproduce.py's arguments, the flags passed through to `gpq train`)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,  # an abbreviation might be a `gpq train` flag
        epilog="other flags are passed to gpq train (see gpq train --help)",
    )
    parser.add_argument("--data", required=True, help="a data spec: cifar10:DIR, tfds:cifar10, ...")
    parser.add_argument(
        "--protocol",
        default="gpq",
        type=_protocol,
        help=f"{' | '.join(PROTOCOL_CHOICES)} (gpq, the paper's)",
    )
    parser.add_argument(
        "--bits", default=",".join(map(str, BITS)), type=_bits, help="code lengths (12,24,32,48)"
    )
    parser.add_argument(
        "--seeds",
        default="3",
        type=_seeds,
        help="N: seeds 0..N-1; or a list such as 3,4 (a single seed S: 'S,') (3)",
    )
    parser.add_argument("--out", default=os.path.join("runs", "reproduce"), help="(runs/reproduce)")
    parser.add_argument("--epochs", type=_positive, default=300, help="(300, the paper's)")
    parser.add_argument(
        "--batch-size", type=_positive, default=500, help="labeled images per step (500)"
    )
    parser.add_argument(
        "--top-k", type=_positive, help="gpq evaluate --top-k: mAP@K (default mAP@all)"
    )
    parser.add_argument(
        "--mode", choices=("original", "consistent"), help="gpq evaluate --mode (model's default)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands of the runs left; run nothing"
    )
    args, extra = parser.parse_known_args(argv)
    check_extra(parser, args, extra)
    return args, extra


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _protocol(text):
    from gpq_keras.data.protocols import parse_protocol

    try:
        name, _ = parse_protocol(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name == "given":
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(PROTOCOL_CHOICES)}; given is not a CIFAR-10 protocol"
        )
    return text.strip().lower()


def _bits(text):
    try:
        bits = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        bits = []
    if not bits or any(b not in BITS for b in bits) or len(set(bits)) != len(bits):
        raise argparse.ArgumentTypeError(
            f"expected distinct code lengths among {','.join(map(str, BITS))}, got {text!r}"
        )
    return bits


def _seeds(text):
    try:
        if "," in text:
            seeds = [int(v) for v in text.split(",") if v.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(
            f"expected a count N >= 1 (seeds 0..N-1) or distinct seeds >= 0 such as 3,4, got "
            f"{text!r}"
        )
    return seeds


def check_extra(parser, args, extra):
    """Refuse flags passed through that `gpq train` does not know, or that this script sets."""
    from gpq_keras.cli import build_parser

    base = ["train", "--data", args.data, "--output", SENTINEL]
    try:
        plain, given = (vars(build_parser().parse_args(base + list(e))) for e in ([], extra))
    except SystemExit:  # gpq train has printed the one-line error
        parser.exit(2, f"{parser.prog}: error: a flag for gpq train above is wrong: {extra}\n")
    for dest, (flag, own) in OWN_DESTS.items():
        if plain[dest] != given[dest]:
            instead = f"use {parser.prog}'s own {own}" if own else "remove the run folder instead"
            parser.error(f"gpq train {flag} is set by {parser.prog}: {instead}")


def protocol_folder(protocol):
    """The folder name of a protocol: "unseen:0.5" -> "unseen-0.5"."""
    return protocol.replace(":", "-")


def run_folder(out, protocol, bits, seed):
    return os.path.join(out, protocol_folder(protocol), f"{bits}bits-seed{seed}")


def read_record(folder):
    """run.json of a run folder as a dict, None when there is none."""
    path = os.path.join(folder, "run.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def run_state(folder):
    """ "new", "finished" (run.json status "finished" and model.keras there), "diverged", or
    "interrupted" (anything else: `gpq train` resumes it)."""
    record = read_record(folder)
    if record is None and not os.path.exists(os.path.join(folder, "backup")):
        return "new"
    status = (record or {}).get("status")
    if status == "finished" and os.path.exists(os.path.join(folder, "model.keras")):
        return "finished"
    return "diverged" if status == "diverged" else "interrupted"


def train_argv(args, extra, bits, seed, folder):
    """`gpq train`'s arguments for one run."""
    return [
        "train",
        "--data",
        args.data,
        "--protocol",
        args.protocol,
        "--bits",
        str(bits),
        "--seed",
        str(seed),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--output",
        folder,
        *extra,
    ]


def evaluate_name(args):
    """The evaluation's file in the run folder: eval.json, or e.g. eval-top1000-original.json."""
    parts = [f"top{args.top_k}" if args.top_k else None, args.mode]
    return "-".join(["eval", *filter(None, parts)]) + ".json"


def evaluate_argv(args, checkpoint, folder, output):
    argv = ["evaluate", "--model", checkpoint, "--data", args.data, "--split", folder]
    argv += ["--json", output]
    if args.top_k:
        argv += ["--top-k", str(args.top_k)]
    if args.mode:
        argv += ["--mode", args.mode]
    return argv


def choose_checkpoint(folder, record):
    """(the model to evaluate, how it was selected): best.keras, chosen on validation; the last
    epoch's model.keras when there is no best.keras (no validation images) or when validation
    found no relevant image at any epoch (best val_mAP 0: it cannot choose)."""
    best = os.path.join(folder, "best.keras")
    last = os.path.join(folder, "model.keras")
    if not os.path.exists(best):
        return last, "last epoch (no best.keras: no validation images)"
    val_map = ((record.get("validation") or {}).get("best") or {}).get("val_mAP")
    if val_map == 0:
        return last, "last epoch (best val_mAP 0: validation found no relevant image)"
    return best, "validation"


def check_finished(record, argv, folder):
    """None when a finished run was trained by `argv`, else one line naming what differs."""
    trained = list(record.get("command") or [])[1:]
    if trained == list(argv):
        return None
    mine, theirs = _flags(argv), _flags(trained)
    changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return (
        f"{folder} holds a finished run trained with other arguments ({', '.join(changed)}: "
        f"{' '.join(theirs.get(k) or k + ' absent' for k in changed)}); use another --out, or "
        "remove that folder to train it again"
    )


def _flags(argv):
    """{"--flag": "--flag value"} of an argument list."""
    out, key = {}, None
    for token in argv:
        if token.startswith("--"):
            key = token.split("=")[0]
            out[key] = token
        elif key is not None:
            out[key] += " " + token
    return out


def gpq(argv, dry_run=False):
    """Run `gpq ARGV` in a child process (its output goes to ours) -> its exit status."""
    command = [sys.executable, "-m", "gpq_keras.cli", *argv]
    print("$ gpq " + " ".join(shlex.quote(a) for a in argv), flush=True)
    if dry_run:
        return 0
    return subprocess.run(command).returncode


def fail(message, status=2):
    print(f"reproduce.py: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def run_one(args, extra, bits, seed):
    """Train (unless finished), select and evaluate one (bits, seed) -> its results.json entry
    (None in a dry run)."""
    folder = run_folder(args.out, args.protocol, bits, seed)
    argv = train_argv(args, extra, bits, seed, folder)
    state = run_state(folder)
    entry = {"bits": bits, "seed": seed, "run": folder, "record": os.path.join(folder, "run.json")}
    if state == "finished":
        changed = check_finished(read_record(folder), argv, folder)
        if changed:
            fail(changed)
        print(f"{folder}: finished, not trained again", flush=True)
        entry["trained"] = False
    elif state == "diverged":
        print(f"{folder}: diverged (see its run.json); remove the folder to train it again")
        return None if args.dry_run else {**entry, "status": "diverged", "trained": False}
    else:
        if state == "interrupted":
            print(f"{folder}: interrupted, resuming", flush=True)
        status = gpq(argv, args.dry_run)
        if status == 130:
            fail(f"interrupted; rerun the same command to resume {folder}", 130)
        if args.dry_run:
            return None
        if status:
            if (read_record(folder) or {}).get("status") == "diverged":
                return {**entry, "status": "diverged", "trained": True}
            fail(f"gpq train failed (exit status {status}) for {folder}: see its message above")
        entry["trained"] = True
    record = read_record(folder) or {}
    checkpoint, selected = choose_checkpoint(folder, record)
    if selected != "validation":
        print(f"{folder}: evaluating model.keras, the {selected}", flush=True)
    output = os.path.join(folder, evaluate_name(args))
    report = _read_json(output) if os.path.exists(output) else None
    fresh = (
        report is not None
        and report.get("model") == os.path.abspath(checkpoint)
        and os.path.getmtime(output) >= os.path.getmtime(checkpoint)
    )
    if not fresh and not args.dry_run:
        status = gpq(evaluate_argv(args, checkpoint, folder, output))
        if status:
            fail(f"gpq evaluate failed (exit status {status}) for {folder}", status)
        report = _read_json(output)
    elif fresh:
        print(f"{folder}: evaluated already ({output})", flush=True)
    if args.dry_run:
        return None
    best = (record.get("validation") or {}).get("best") or {}
    entry.update(
        status="finished",
        checkpoint=checkpoint,
        selected_on=selected,
        val_mAP=best.get("val_mAP"),
        best_epoch=best.get("epoch"),
        evaluation=output,
        mAP=report["mAP"],
        top_k=report.get("top_k"),
        mode=report.get("mode"),
        n_query=report.get("n_query"),
        n_database=report.get("n_database"),
        parts=(record.get("split") or {}).get("parts"),
    )
    for key in ("unseen@unseen", "unseen@all", "n_database_all", "unseen_classes"):
        if key in report:
            entry[key] = report[key]
    return entry


def _read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def metrics_of(protocol):
    """The figures a protocol's table rows show."""
    return ["unseen@unseen", "unseen@all"] if protocol.startswith("unseen") else ["mAP"]


def summarise(runs):
    """{(data, protocol, metric): {bits: (mean, sample std or None, seeds)}} of finished runs."""
    import numpy as np

    cells = {}
    for run in runs:
        if run.get("status") != "finished":
            continue
        for metric in metrics_of(run["protocol"]):
            key = (run["data"], run["protocol"], metric)
            cells.setdefault(key, {}).setdefault(run["bits"], []).append(run[metric])
    out = {}
    for key, by_bits in cells.items():
        out[key] = {}
        for bits, values in sorted(by_bits.items()):
            values = np.asarray(values, np.float64)
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            out[key][bits] = (float(values.mean()), std, len(values))
    return out


def cell(mean, std, seeds):
    if std is None:
        return f"{mean:.4f} (1 seed)"
    return f"{mean:.4f} ± {std:.4f}"


def row_label(data, protocol, metric):
    kind = data.partition(":")[0]
    return f"{kind}, {protocol}" + ("" if metric == "mAP" else f" ({metric})")


def markdown(payload):
    """table.md: one row per (data, protocol[, unseen@...]), one column per code length."""
    runs = payload["runs"]
    summary = summarise(runs)
    bits = sorted({b for by_bits in summary.values() for b in by_bits})
    lines = [
        "| data, protocol | " + " | ".join(f"{b} bits" for b in bits) + " |",
        "|---|" + "---:|" * len(bits),
    ]
    for (data, protocol, metric), by_bits in summary.items():
        row = [cell(*by_bits[b]) if b in by_bits else "–" for b in bits]
        lines.append(f"| {row_label(data, protocol, metric)} | " + " | ".join(row) + " |")
    notes = []
    for protocol, run in payload.get("settings", {}).items():
        done = [r for r in runs if r["protocol"] == protocol and r.get("status") == "finished"]
        seeds = sorted({r["seed"] for r in done})
        picked = sorted({r["selected_on"] for r in done})
        modes = sorted({str(r["mode"]) for r in done})
        at = "mAP@all" if run.get("top_k") is None else f"mAP@{run['top_k']}"
        init = "ImageNet initialisation" if "--imagenet-mat" in run["train_flags"] else "scratch"
        notes.append(
            f"- {run['data']}, {protocol}: {run['epochs']} epochs of batch {run['batch_size']} "
            f"labeled + {run['batch_size']} unlabeled, {init}, seeds {seeds}, {at}, "
            f"{'/'.join(modes) or '?'} mode, model chosen on {', '.join(picked) or '?'}. "
            f"Command: `{run['command']}`"
        )
        mine = [r for r in runs if r["protocol"] == protocol]
        diverged = [r["run"] for r in mine if r["status"] == "diverged"]
        if diverged:
            notes.append(f"  Diverged, left out: {', '.join(diverged)}.")
    return (
        "mAP, mean ± sample std over seeds (`benchmarks/reproduce.py`; every run in "
        "results.json).\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    )


def write_results(args, extra, entries, command):
    """Merge this protocol's runs into OUT/results.json (other protocols' runs kept) and rewrite
    OUT/table.md -> the payload."""
    from gpq_keras.files import atomic_path, write_json

    path = os.path.join(args.out, "results.json")
    payload = _read_json(path) if os.path.exists(path) else {"runs": [], "settings": {}}
    mine = {(e["bits"], e["seed"]) for e in entries}
    payload["runs"] = [
        r
        for r in payload["runs"]
        if r["protocol"] != args.protocol or (r["bits"], r["seed"]) not in mine
    ] + [{"data": args.data, "protocol": args.protocol, **e} for e in entries]
    payload["runs"].sort(key=lambda r: (r["protocol"], r["bits"], r["seed"]))
    payload["settings"][args.protocol] = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "bits": args.bits,
        "seeds": args.seeds,
        "top_k": args.top_k,
        "mode": args.mode,
        "train_flags": list(extra),
    }
    write_json(path, payload)
    with atomic_path(os.path.join(args.out, "table.md")) as tmp, open(tmp, "w") as fh:
        fh.write(markdown(payload))
    return payload


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parse_args(argv)
    command = " ".join(["python benchmarks/reproduce.py", *map(shlex.quote, argv)])
    if "--imagenet-mat" not in " ".join(extra):
        print(
            "training from scratch: the paper starts from ImageNet weights (pass "
            "--imagenet-mat checkpoints/original/ImageNet_pretrained.mat)",
            flush=True,
        )
    entries = []
    for bits in args.bits:
        for seed in args.seeds:
            entry = run_one(args, extra, bits, seed)
            if entry is not None:
                entries.append(entry)
    if args.dry_run:
        return
    write_results(args, extra, entries, command)
    with open(os.path.join(args.out, "table.md"), encoding="utf-8") as fh:
        print(fh.read(), end="")


if __name__ == "__main__":
    main()
