"""Command-line interface of ``alges``: demo, simulate, train, evaluate, predict, query."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshared.cli import run_cli

from alges import __version__

EXPECTED_ERRORS = (FileNotFoundError, ValueError, NotADirectoryError, PermissionError)


# ---------------------------------------------------------------------------------------------------------- helpers
def _config(args: argparse.Namespace, **overrides: Any):
    """Preset -> --config YAML/JSON -> explicit CLI flags."""
    from medshared.config import load_config_file, override_dataclass

    from alges.config import create_config

    cfg = create_config(args.preset)
    if getattr(args, "config", None):
        d = load_config_file(args.config)
        if not isinstance(d, dict):
            raise ValueError(f"config file {args.config} must hold a mapping of config keys")
        cfg = override_dataclass(cfg, d)
    flags = {k: v for k, v in overrides.items() if v is not None}
    if flags:
        cfg = override_dataclass(cfg, flags)
    return cfg


def _device(spec: str):
    from medshared.runtime import resolve_device

    return resolve_device(spec)


def _add_common(p: argparse.ArgumentParser, preset: str = "alges_paper") -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--preset", default=preset, help=f"registered config (default {preset}; see alges.config)")
    p.add_argument("--config", help="YAML/JSON file of config overrides (keys of alges.config.AlgesConfig)")


def _split_lists(args: argparse.Namespace, index) -> dict[str, list[str]]:
    from alges.data import cholec_split, read_id_list

    if index.kind == "folder" or args.pool_list:
        if not (args.pool_list and args.test_list):
            raise ValueError("a folder dataset needs --pool-list and --test-list (files with one image id per line)")
        return {"train": read_id_list(args.pool_list, index), "test": read_id_list(args.test_list, index)}
    videos = None
    if args.train_videos or args.test_videos:
        if not (args.train_videos and args.test_videos):
            raise ValueError("give both --train-videos and --test-videos")
        videos = {"train": args.train_videos.split(","), "test": args.test_videos.split(",")}
    sp = cholec_split(index, videos, args.max_test_frames)
    if not sp["train"] or not sp["test"]:
        raise ValueError(f"the split has {len(sp['train'])} pool and {len(sp['test'])} test images; check the videos")
    return sp


def _headline_print(rows: list[dict[str, Any]]) -> None:
    from alges.report import summarize

    summ = summarize(rows)
    print(f"{'strategy':<18} {'% labeled':>10} {'dice (macro)':>14}")
    for s, d in summ.items():
        print(f"{s:<18} {d['pct_labeled'][-1]:>10.2f} {d['mean'][-1]:>8.3f} ± {d['std'][-1]:.3f}")


# ---------------------------------------------------------------------------------------------------------- commands
def cmd_simulate(args: argparse.Namespace) -> int:
    from medshared.runtime import atomic_write_json

    from alges.active import parse_strategies, simulate
    from alges.data import load_arrays, open_dataset
    from alges.evaluate import majority_chance
    from alges.report import write_simulation_outputs

    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    cfg = _config(
        args,
        n_rounds=args.rounds,
        epochs=args.epochs,
        seeds=seeds,
        image_size=args.image_size,
        encoder_weights=args.encoder_weights,
    )
    strategies = parse_strategies(args.strategies)
    index = open_dataset(args.data)
    sp = _split_lists(args, index)
    pool = load_arrays(index, sp["train"], cfg.image_size)
    test = load_arrays(index, sp["test"], cfg.image_size)
    out = Path(args.out)
    atomic_write_json(out / "config.json", cfg.to_dict())
    rows = simulate(
        pool,
        test,
        strategies,
        cfg.seeds,
        cfg,
        _device(args.device),
        out,
        resume=not args.no_resume,
        class_names=index.class_names,
    )
    chance = majority_chance(pool.masks, test.masks, cfg)
    write_simulation_outputs(rows, out, {"chance": chance, "config": cfg.to_dict()})
    _headline_print(rows)
    print(f"chance (constant majority class): dice macro {chance['dice_macro']:.3f}; outputs in {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    from medshared.checkpoint import save_checkpoint
    from medshared.runtime import atomic_write_json, seed_everything

    from alges.data import load_arrays, open_dataset, read_id_list
    from alges.model import build_model
    from alges.train import make_optimizer, save_resume_state, train_model

    cfg = _config(args, epochs=args.epochs, image_size=args.image_size, encoder_weights=args.encoder_weights)
    index = open_dataset(args.data)
    ids = read_id_list(args.labeled, index) if args.labeled else list(index.ids)
    if not ids:
        raise ValueError(f"the labeled list {args.labeled} is empty")
    device = _device(args.device)
    out = Path(args.out)
    seed_everything(args.seed)
    model = build_model(cfg, deal_head=args.deal_head).to(device)
    opt = make_optimizer(model, cfg)
    start = 0
    resume_path = out / "train_state.pt"
    if args.resume and resume_path.is_file():
        st = torch.load(resume_path, map_location=device, weights_only=False)
        if st.get("config") != cfg.to_dict() or st.get("ids") != ids:
            raise ValueError(f"{resume_path} was written for another config or labeled list; drop --resume")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start = st["epoch"] + 1
        print(f"resuming after epoch {start}")
    data = load_arrays(index, ids, cfg.image_size)
    extra = {"deal_head": args.deal_head, "class_names": list(index.class_names), "labeled": ids, "seed": args.seed}

    def on_epoch_end(epoch: int, optimizer: torch.optim.Optimizer, info: dict) -> None:
        save_resume_state(resume_path, epoch, optimizer, model, {"config": cfg.to_dict(), "ids": ids})

    t0 = time.perf_counter()
    hist = train_model(
        model,
        data.images,
        data.masks,
        cfg,
        device,
        seed=args.seed,
        start_epoch=start,
        optimizer=opt,
        on_epoch_end=on_epoch_end,
        progress=True,
    )
    save_checkpoint(out / "model.safetensors", model.state_dict(), cfg.to_dict(), extra)
    atomic_write_json(
        out / "train_log.json",
        {
            "losses": hist,
            "start_epoch": start,
            "seconds": time.perf_counter() - t0,
            "n_images": len(ids),
            "config": cfg.to_dict(),
        },
    )
    print(f"trained on {len(ids)} images for {cfg.epochs - start} epochs; checkpoint {out / 'model.safetensors'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medshared.runtime import atomic_write_csv, atomic_write_json

    from alges.config import CLASS_NAMES
    from alges.data import load_arrays, open_dataset, read_id_list
    from alges.evaluate import evaluate_model
    from alges.model import load_trained

    model, cfg, extra = load_trained(args.checkpoint)
    index = open_dataset(args.data)
    ids = read_id_list(args.list, index) if args.list else list(index.ids)
    if len(index.class_names) != cfg.num_classes:
        raise ValueError(f"the dataset has {len(index.class_names)} classes, the checkpoint {cfg.num_classes}")
    data = load_arrays(index, ids, cfg.image_size)
    res = evaluate_model(model, data.images, data.masks, cfg, _device(args.device), progress=True)
    names = extra.get("class_names") or list(CLASS_NAMES)
    out = Path(args.out)
    atomic_write_json(out / "metrics.json", {**res, "n_images": len(ids), "checkpoint": str(args.checkpoint)})
    atomic_write_csv(
        out / "per_class.csv",
        [{"class": n, "dice": d} for n, d in zip(names, res["dice_per_class"])],
        ["class", "dice"],
    )
    print(f"dice macro {res['dice_macro']:.4f}  official {res['dice_official']:.4f}  ({len(ids)} images) -> {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np
    from medshared.runtime import atomic_path

    from alges.data import load_images, read_image, scan_images
    from alges.evaluate import infer
    from alges.model import load_trained

    model, cfg, _ = load_trained(args.checkpoint)
    items = scan_images(args.images)
    imgs = load_images([p for _, p in items], cfg.image_size)
    pred = infer(model, imgs, cfg, _device(args.device), ("pred",), progress=True)["pred"]
    out = Path(args.out)
    for (i, p), m in zip(items, pred):
        h, w = read_image(p).shape[:2] if args.original_size else (cfg.image_size, cfg.image_size)
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) if (h, w) != m.shape else m
        dst = out / f"{i}_pred.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            if not cv2.imwrite(str(tmp) + ".png", np.ascontiguousarray(m)):
                raise ValueError(f"could not write {dst}")
            Path(str(tmp) + ".png").replace(tmp)
    print(f"wrote {len(items)} class-id masks to {out}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import numpy as np
    from medshared.runtime import atomic_write_csv

    from alges.active import parse_strategies, select_batch
    from alges.data import load_images, read_id_list, scan_images
    from alges.model import load_trained

    (strategy,) = parse_strategies(args.strategy)
    model, cfg, extra = load_trained(args.checkpoint)
    if strategy == "deal" and model.deal is None:
        raise ValueError("strategy deal needs a checkpoint trained with the DEAL head (alges train --deal-head)")
    items = scan_images(args.pool)
    ids = [i for i, _ in items]
    labeled_ids = read_id_list(args.labeled) if args.labeled else []
    pos = {i: k for k, i in enumerate(ids)}
    unknown = [i for i in labeled_ids if i not in pos]
    if unknown:
        raise ValueError(f"the labeled list names {len(unknown)} images not in the pool {args.pool}: {unknown[:5]}")
    labeled = np.asarray(sorted(pos[i] for i in labeled_ids), dtype=np.int64)
    unlabeled = np.setdiff1d(np.arange(len(ids)), labeled)
    if len(unlabeled) == 0:
        raise ValueError(f"the unlabeled pool is empty: all {len(ids)} images of {args.pool} are labeled")
    if args.budget < 1 or args.budget > len(unlabeled):
        raise ValueError(f"budget {args.budget} must be between 1 and the unlabeled pool size ({len(unlabeled)})")
    images = load_images([p for _, p in items], cfg.image_size)
    chosen, scores = select_batch(
        strategy,
        model,
        images,
        unlabeled,
        labeled,
        args.budget,
        cfg,
        _device(args.device),
        seed=args.seed,
        progress=True,
    )
    rows = [
        {"rank": r + 1, "image": ids[c], "path": str(items[c][1]), "score": float(s)}
        for r, (c, s) in enumerate(zip(chosen, scores))
    ]
    atomic_write_csv(args.out, rows, ["rank", "image", "path", "score"])
    print(f"{strategy}: {len(rows)} images to annotate next -> {args.out}")
    for r in rows[: min(10, len(rows))]:
        print(f"{r['rank']:>4}  {r['score']:.4g}  {r['image']}")
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
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="the paper's experiment: AL curves per strategy over seeds")
    p.add_argument("--data", required=True, help="CholecSeg8k root or images/+masks/+classes.json folder")
    p.add_argument(
        "--strategies",
        default="random,entropy,alges-img,alges-sem",
        help="comma list of: random, entropy, margin, least-confidence, coreset, deal, alges-img, alges-sem",
    )
    p.add_argument("--rounds", type=int, help="AL rounds (paper 30)")
    p.add_argument("--epochs", type=int, help="epochs per round (paper 50)")
    p.add_argument("--seeds", help="comma list of seeds (paper: 3 seeds)")
    p.add_argument("--image-size", type=int, help="resize to this square size (paper 224)")
    p.add_argument("--encoder-weights", help="none (paper), imagenet, or a resnet18 .pth file")
    p.add_argument("--train-videos", help="comma list of pool videos (default: the documented 8-video split)")
    p.add_argument("--test-videos", help="comma list of test videos")
    p.add_argument("--max-test-frames", type=int, help="keep the first N test frames in sorted order (official 1640)")
    p.add_argument("--pool-list", help="file of pool image ids (folder datasets, or to override the video split)")
    p.add_argument("--test-list", help="file of test image ids")
    p.add_argument("--out", required=True, help="output folder (state is kept there; rerun to resume)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has saved state")
    _add_common(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a model on a labeled list")
    p.add_argument("--data", required=True, help="CholecSeg8k root or images/+masks/+classes.json folder")
    p.add_argument("--labeled", help="file of image ids to train on (default: every image)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, train_log.json")
    p.add_argument("--epochs", type=int, help="epochs (paper 50)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--encoder-weights", help="none (paper), imagenet, or a resnet18 .pth file")
    p.add_argument("--deal-head", action="store_true", help="train DEAL's difficulty head too (for --strategy deal)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Dice of a checkpoint on labeled images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--list", help="file of image ids to evaluate (default: every image)")
    p.add_argument("--out", required=True, help="output folder: metrics.json, per_class.csv")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class-id masks for a folder of images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of images (or a dataset root)")
    p.add_argument("--out", required=True)
    p.add_argument("--original-size", action="store_true", help="resize masks back to each image's size")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("query", help="rank the unlabeled images to annotate next")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--pool", required=True, help="folder of pool images (images/ of a dataset, or a CholecSeg8k root)")
    p.add_argument("--budget", type=int, required=True, help="how many images to select")
    p.add_argument("--strategy", default="alges-img")
    p.add_argument("--labeled", help="file of already labeled image ids of the pool (excluded; used by coreset)")
    p.add_argument("--out", default="query.csv", help="ranked CSV (default query.csv)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_query)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 on expected bad input, with one message on stderr)."""
    return run_cli(
        build_parser(),
        argv,
        expected=EXPECTED_ERRORS,
        error_code=1,
        interrupt_hint="simulate resumes when re-run; train with --resume",
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
