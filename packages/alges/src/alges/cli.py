"""Command-line interface of ``alges``: demo, simulate, train, evaluate, predict, query, split (thin wrappers over
the library functions in ``alges.study``, ``alges.fit``, ``alges.evaluate``, ``alges.query``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from medshared.cli import add_runtime_args, run_cli

from alges import __version__
from alges.cli_args import (
    PRECISION_HELP,
    add_common,
    config_from_args,
    device_from_arg,
    headline_print,
    infer_device_precision,
    print_precision,
    runtime_args,
    split_lists,
)

EXPECTED_ERRORS = (FileNotFoundError, ValueError, NotADirectoryError, PermissionError)


# ---------------------------------------------------------------------------------------------------------- commands
def cmd_simulate(args: argparse.Namespace) -> int:
    from alges.config import adapt_to_classes
    from alges.data import open_dataset
    from alges.strategies import parse_strategies
    from alges.study import run_simulation

    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    cfg, explicit = config_from_args(
        args,
        n_rounds=args.rounds,
        epochs=args.epochs,
        seeds=seeds,
        image_size=args.image_size,
        encoder_weights=args.encoder_weights,
    )
    strategies = parse_strategies(args.strategies)
    index = open_dataset(args.data)
    cfg = adapt_to_classes(cfg, index.class_map, explicit)
    split = split_lists(args, index, cfg)
    pct = None
    if args.percentages:
        pct = (
            None
            if args.percentages == "rounds"
            else (
                (0.43, 1.94, 3.02, 4.96)
                if args.percentages == "paper"
                else tuple(float(v) for v in args.percentages.split(","))
            )
        )
    from medshared.distributed import launched_by_torchrun, resolve_shard

    from alges.precision import resolve_alges_precision
    from alges.ranks import rank_device

    shard = resolve_shard(args.shard)
    # torchrun: the ranks share the runs and never meet in a collective (no process group; see alges.ranks)
    ranked = launched_by_torchrun() and not args.shard and shard[1] > 1
    device = rank_device(args.device) if ranked else device_from_arg(args.device)
    prec = resolve_alges_precision(args.precision, device, amp=cfg.amp)
    main_rank = not ranked or shard[0] == 0
    if main_rank:
        print_precision(prec)
    res = run_simulation(
        index,
        split,
        cfg,
        strategies,
        device,
        Path(args.out),
        resume=not args.no_resume,
        full=args.full,
        full_steps=args.full_steps,
        percentages=pct,
        shard=shard,
        ranked=ranked,
        progress=main_rank,
        precision=prec,
        workers=args.workers,
    )
    if "shard" in res:
        i, n = res["shard"]
        if not ranked:
            print(f"shard {i}/{n} done ({len(res['jobs'])} runs); rerun without --shard to write the report")
        return 0
    headline_print(res)
    pri = res["prior_mask"]
    print(f"chance (prior mask): dice_image {pri['dice_image']:.3f}, hd95 {pri['hd95']:.1f}; outputs in {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from alges.config import adapt_to_classes
    from alges.data import open_dataset
    from alges.fit import fit
    from alges.index import read_id_list

    cfg, explicit = config_from_args(
        args, epochs=args.epochs, image_size=args.image_size, encoder_weights=args.encoder_weights
    )
    index = open_dataset(args.data)
    cfg = adapt_to_classes(cfg, index.class_map, explicit)
    ids = read_id_list(args.labeled, index) if args.labeled else list(index.labeled_ids)
    index.check_ids(ids, need_masks=True)
    if not ids:
        raise ValueError(f"no labelled images in {args.data} (a labelled image has a mask of the same name)")
    from medshared.distributed import distributed_session

    from alges.precision import resolve_alges_precision

    with distributed_session(args.device) as ctx:
        prec = resolve_alges_precision(args.precision, ctx.device).train
        if ctx.is_main:
            print_precision(prec)
        log = fit(
            index,
            ids,
            cfg,
            ctx.device,
            Path(args.out),
            seed=args.seed,
            deal_head=args.deal_head,
            resume=args.resume,
            ctx=ctx,
            precision=prec,
            workers=args.workers,
        )
    if not ctx.is_main:
        return 0
    best = f"; best validation Dice {log['best_val_dice']:.3f} (epoch {log['best_epoch']})" if log["n_val"] else ""
    print(
        f"trained on {log['n_train']} images for {cfg.epochs - log['start_epoch']} epochs{best}; "
        f"checkpoints {Path(args.out) / 'best.safetensors'}, {Path(args.out) / 'model.safetensors'}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from alges.evaluate import evaluate_checkpoint

    device, prec = infer_device_precision(args)
    res = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        Path(args.out),
        id_list=args.list,
        device=device,
        precision=prec,
        workers=args.workers,
    )
    h = res["headline"]
    print(
        f"{h['metric']}: {h['value']:.4f} (chance {h['chance']:.4f}); HD95 {res['hd95']:.1f} {res['hd95_units']}; "
        f"dice macro {res['dice_macro']:.4f} ({res['n_images']} images) -> {args.out}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from alges.evaluate import predict_folder

    device, prec = infer_device_precision(args)
    n = predict_folder(
        args.checkpoint,
        args.images,
        Path(args.out),
        original_size=args.original_size,
        device=device,
        precision=prec,
        workers=args.workers,
    )
    print(f"wrote {n} class-id masks to {args.out}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from medshared.runtime import atomic_write_csv, atomic_write_text

    from alges.index import read_id_list
    from alges.precision import resolve_alges_precision
    from alges.query import query_pool
    from alges.strategies import parse_strategies

    (strategy,) = parse_strategies(args.strategy)
    device = device_from_arg(args.device)
    prec = resolve_alges_precision(args.precision, device)
    print(prec.lines()[1])
    res = query_pool(
        args.checkpoint,
        args.pool,
        args.budget,
        strategy=strategy,
        labeled_ids=read_id_list(args.labeled) if args.labeled else (),
        exclude_checkpoint_labeled=not args.keep_checkpoint_labeled,
        skip_unreadable=args.skip_unreadable,
        device=device,
        seed=args.seed,
        workdir_near=args.out,
        precision=prec,
        workers=args.workers,
    )
    rows = res["rows"]
    atomic_write_csv(args.out, rows, ["rank", "image", "path", "score"])
    print(
        f"pool {res['pool_size']} images; excluded {res['excluded_checkpoint']} the checkpoint was trained on "
        f"(of its {res['checkpoint_labeled']} labelled ids) and {res['excluded_list']} from --labeled"
    )
    if res["skipped"]:
        skipped = Path(str(args.out) + ".skipped.txt")
        atomic_write_text(skipped, "".join(f"{p}\t{why}\n" for p, why in res["skipped"]))
        print(f"skipped {len(res['skipped'])} unreadable images (listed in {skipped}):")
        for p, why in res["skipped"]:
            print(f"  {p}: {why}")
    print(f"{strategy}: {len(rows)} images to annotate next -> {args.out}")
    for r in rows[: min(10, len(rows))]:
        print(f"{r['rank']:>4}  {r['score']:.4g}  {r['image']}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from alges.splits import split_folder

    counts = split_folder(
        args.data, Path(args.out), args.case_pattern, args.test_fraction, seed=args.seed, copy=args.copy
    )
    print(f"case-disjoint split of {args.data}: {counts} -> {args.out}/train, {args.out}/test")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from alges.demo import run_demo

    res = run_demo(args.out, device=args.device, seed=args.seed, quick=args.quick)
    h = res["headline"]
    print(
        f"headline: {h['metric']} = {h['value']:.3f} (chance {h['chance']:.3f}); report {Path(args.out) / 'report.md'}"
    )
    return 0


# ---------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """Build the ``alges`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="alges",
        description="ALGES (MLHC 2022): active learning with gradient embeddings for surgical segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="whole pipeline on synthetic CholecSeg8k-layout videos (~2 min on 2 cores)")
    p.add_argument("--out", default="alges_demo", help="output folder (default ./alges_demo)")
    add_runtime_args(p, precision=False, seed=0)  # the demo runs fp32 (its README numbers)
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="the paper's experiment: AL curves per strategy over seeds")
    p.add_argument("--data", required=True, help="CholecSeg8k root or an images/ + masks/ folder")
    p.add_argument(
        "--strategies",
        default="random,entropy,alges-img,alges-sem",
        help="comma list of: random, entropy, margin, least-confidence, coreset, deal, badge, alges-img, alges-sem",
    )
    p.add_argument("--rounds", type=int, help="AL rounds (paper 30)")
    p.add_argument("--epochs", type=int, help="epochs per round (paper 50)")
    p.add_argument("--seeds", help="comma list of seeds (paper: 3 seeds)")
    p.add_argument("--image-size", type=int, help="resize to this square size (paper 224)")
    p.add_argument("--encoder-weights", help="none (paper), imagenet, or a resnet18 .pth file")
    p.add_argument("--train-videos", help="comma list of pool videos (default: the documented 8-video split)")
    p.add_argument("--test-videos", help="comma list of test videos")
    p.add_argument("--max-test-frames", type=int, help="keep the first N test frames in sorted order (official 1640)")
    p.add_argument("--pool-list", help="file of pool image ids (default: video split, or case split by case_pattern)")
    p.add_argument("--test-list", help="file of test image ids")
    p.add_argument("--full", action="store_true", help="add the Full line: train on the whole pool per seed")
    p.add_argument("--full-steps", type=int, help="optimiser steps of the Full model (default: the round recipe)")
    p.add_argument(
        "--percentages",
        help="table columns: paper (0.43,1.94,3.02,4.96), rounds, or a comma list (default: "
        "paper for CholecSeg8k, else every round)",
    )
    p.add_argument("--out", required=True, help="output folder (state is kept there; rerun to resume)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has saved state")
    p.add_argument(
        "--shard", help="i/n: run only shard i of n of the (strategy, seed) runs (default: torchrun's rank / world)"
    )
    add_common(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a model on a dataset's labelled images (best checkpoint on validation)")
    p.add_argument("--data", required=True, help="CholecSeg8k root or an images/ + masks/ folder")
    p.add_argument("--labeled", help="file of image ids to train on (default: every image that has a mask)")
    p.add_argument("--out", required=True, help="output folder: best.safetensors, model.safetensors, train.json")
    p.add_argument("--epochs", type=int, help="epochs (paper 50)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--encoder-weights", help="none (paper), imagenet, or a resnet18 .pth file")
    p.add_argument("--deal-head", action="store_true", help="train DEAL's difficulty head too (for --strategy deal)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Dice and HD95 of a checkpoint on labelled images, beside the prior mask")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--list", help="file of image ids to evaluate (default: every image that has a mask)")
    p.add_argument("--out", required=True, help="output folder: metrics.json (with headline), per_class.csv")
    runtime_args(p, workers=0, seed=None, precision_help="alges: the forward pass only (evaluation)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class-id masks for a folder of images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of images (searched recursively, or a dataset root)")
    p.add_argument("--out", required=True)
    p.add_argument("--original-size", action="store_true", help="resize masks back to each image's size")
    runtime_args(p, workers=0, seed=None, precision_help="alges: the forward pass only")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("query", help="rank the unlabeled images to annotate next")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--pool", required=True, help="folder of pool images (searched recursively; masks not needed)")
    p.add_argument("--budget", type=int, required=True, help="how many images to select")
    p.add_argument("--strategy", default="alges-img")
    p.add_argument("--labeled", help="file of already labelled image ids of the pool (excluded; used by coreset)")
    p.add_argument(
        "--keep-checkpoint-labeled",
        action="store_true",
        help="do not exclude the images the checkpoint was trained on (excluded by default)",
    )
    p.add_argument(
        "--skip-unreadable", action="store_true", help="leave unreadable images out (listed) instead of failing"
    )
    p.add_argument("--out", default="query.csv", help="ranked CSV (default query.csv)")
    runtime_args(p, workers=0, seed=0, precision_help=PRECISION_HELP)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("split", help="case-disjoint split of a folder dataset into OUT/train and OUT/test folders")
    p.add_argument("--data", required=True, help="images/ + masks/ folder")
    p.add_argument("--out", required=True)
    p.add_argument("--case-pattern", default=r"^(\d+)_", help="regex with one group: an image's case (default DDTI's)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    add_runtime_args(p, device=False, precision=False, seed=0)
    p.add_argument("--copy", action="store_true", help="copy files instead of symlinking them")
    p.set_defaults(func=cmd_split)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 on expected bad input, with one message on stderr)."""
    before = os.environ.get("MEDREPRO_OFFLINE")  # --offline sets it for this command only (config_from_args)
    try:
        return run_cli(
            build_parser(),
            argv,
            expected=EXPECTED_ERRORS,
            error_code=1,
            interrupt_hint="simulate resumes when re-run; train with --resume",
        )
    finally:
        if before is None:
            os.environ.pop("MEDREPRO_OFFLINE", None)
        else:
            os.environ["MEDREPRO_OFFLINE"] = before


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
