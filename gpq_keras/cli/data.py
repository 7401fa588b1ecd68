"""`gpq data check`: what a data spec gives under a protocol, and whether it can train."""

from gpq_keras.cli.common import CLIError, add_command, non_negative_int, wrote


def add_data(sub):
    p = sub.add_parser(
        "data",
        help="look at a data set before training: gpq data check",
        description="look at a data set before training",
    )
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = add_command(
        data_sub,
        "check",
        "the size of every part and of every class in it, the image files that are missing or do "
        "not decode, rows without labels, queries that are also training or database images; "
        "exit 2 naming the first problem when the data cannot train",
        "gpq data check --data folder:photos --unlabeled 'pool/**/*.jpg' --json check.json",
        run_data_check,
    )
    from gpq_keras.cli.train import add_training_data_flags

    add_training_data_flags(c)
    c.add_argument("--seed", type=int, default=0, help="the protocol's seed, as gpq train's (0)")
    c.add_argument(
        "--val-per-class",
        type=non_negative_int,
        help="validation images per class, as gpq train holds them out (its default)",
    )
    c.add_argument("--json", help="write the report here (the keys of gpq data check --json)")


def run_data_check(args):
    from gpq_keras.cli.train import training_split
    from gpq_keras.data.check import check_split, per_class_counts, training_problems

    skip = args.skip_unreadable
    args.skip_unreadable = True  # every unreadable file listed, not the first alone
    args.report_skipped = False  # listed below, with the files that do not decode
    split, validation, _ = training_split(args, drop_undecodable=False)
    report = check_split(split)
    report["parts"]["validation"] = 0 if validation is None else len(validation[0])
    if validation is not None:
        report["per_class"]["validation"] = per_class_counts(validation[1], split.num_classes)
    _print_report(split, report)
    problems = training_problems(split, report, skip_unreadable=skip)
    report["problems"] = problems
    report["can_train"] = not problems
    if args.json:
        from gpq_keras.files import write_json

        write_json(args.json, report)
        wrote(args.json)
    if problems:
        raise CLIError(problems[0])
    print("the data can train")


def _print_report(split, report):
    from gpq_keras.files import display_path

    names = report["class_names"] or [str(c) for c in range(report["num_classes"])]
    print(
        f"{split.name}: {report['protocol']} protocol (seed {report['seed']}), "
        f"{report['num_classes']} classes"
    )
    for part, size in report["parts"].items():
        print(f"  {part:<10} {size:>8} images")
    counts = report["per_class"]
    parts = [p for p in ("labeled", "validation", "query", "database") if p in counts]
    print(f"  {'images per class':<20} " + "  ".join(f"{p:>10}" for p in parts))
    for c, name in enumerate(names):
        print(f"  {display_path(name)[:20]:<20} " + "  ".join(f"{counts[p][c]:>10}" for p in parts))
    zero = {p: n for p, n in report["zero_label_rows"].items() if n}
    if zero:
        print("  rows with no label: " + ", ".join(f"{p} {n}" for p, n in zero.items()))
    overlaps = report["overlaps"]
    print(
        f"  queries also labeled: {overlaps['query_labeled']}, also in the database: "
        f"{overlaps['query_database']}"
    )
    if report["seen_classes"] is not None:
        for what in ("seen", "unseen"):
            ids = report[f"{what}_classes"]
            print(f"  {what} classes: " + ", ".join(display_path(names[c]) for c in ids))
    for why in report["unreadable_reasons"]:
        print(f"  unreadable: {' '.join(why.split())}")
