"""`xgenmm-fast` command line: demo, train, validate, export, ops, generate, chat, eval.

    xgenmm-fast demo [--out DIR] [key=value ...]        generate shapes data, train, evaluate, answer
    xgenmm-fast train --config CFG.yaml [key=value ...]  sequence-packed SFT on DeepSpeed
    xgenmm-fast dpo --config CFG.yaml [key=value ...]    sequence-packed DPO on preference pairs
    xgenmm-fast dpo-demo [--out DIR] [key=value ...]     DPO on generated right/wrong answers, CPU
    xgenmm-fast validate CFG.yaml|DATA                   report records that would fail, per file
    xgenmm-fast export --checkpoints DIR --out DIR       merge a (ZeRO) training checkpoint to HF format
    xgenmm-fast ops                                      which backend each op runs on here
    xgenmm-fast generate --model DIR --prompt "..."      answer about --image files, streamed
    xgenmm-fast chat --model DIR                         chat on stdin (/image PATH, /reset, /quit)
    xgenmm-fast eval --model DIR --questions q.jsonl     accuracy on a JSONL question file
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys


def _cmd_demo(args) -> int:
    from .demo.run import run_demo
    return run_demo(args.out, args.overrides, eval_limit=args.eval_limit)


def _cmd_train(args) -> int:
    from .training.config import load_config
    from .training.sft import train
    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps(result.__dict__, indent=2))
    return 0


def _cmd_dpo(args) -> int:
    from .training.config import load_dpo_config
    from .training.dpo import train_dpo
    result = train_dpo(load_dpo_config(args.config, args.overrides))
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps(result.__dict__, indent=2))
    return 0


def _cmd_dpo_demo(args) -> int:
    from .demo.dpo_run import run_dpo_demo
    return run_dpo_demo(args.out, args.overrides)


def _cmd_validate(args) -> int:
    from .data.validate import run_validate
    return run_validate(args)


def _cmd_export(args) -> int:
    from .training.export import export_checkpoint
    path = export_checkpoint(args.checkpoints, args.out, tag=args.tag)
    print(f"wrote {path}")
    return 0


def _cmd_ops(args) -> int:
    from . import ops
    report = ops.report()
    width = max(map(len, report), default=0)
    for op, backend in report.items():
        print(f"{op:{width}s}  {backend:10s} (available: {', '.join(ops.available_backends(op))})")
    print(f"attention kernel settings: {ops.kernel_settings()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xgenmm-fast", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train and evaluate the demo model on generated shapes data")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--eval-limit", type=int, default=None, help="held-out pictures to evaluate (default all)")
    d.add_argument("overrides", nargs="*", help="training config overrides, e.g. train.epochs=2")
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("train", help="sequence-packed SFT (launch with torchrun/deepspeed for several ranks)")
    t.add_argument("--config", required=True, help="training YAML (see xgenmm_fast/training/config.py)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 train.zero_stage=3")
    t.set_defaults(fn=_cmd_train)

    dp = sub.add_parser("dpo", help="sequence-packed DPO on preference pairs (launch like train)")
    dp.add_argument("--config", required=True, help="DPO YAML (training config + dpo: section, training/config.py)")
    dp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dpo.beta=0.1 dpo.reference=precomputed")
    dp.set_defaults(fn=_cmd_dpo)
    dd = sub.add_parser("dpo-demo", help="DPO the demo model on generated right/wrong answers (CPU, ~3 min)")
    dd.add_argument("--out", default="runs/dpo-demo", help="output directory (default runs/dpo-demo)")
    dd.add_argument("overrides", nargs="*", help="DPO config overrides, e.g. dpo.beta=0.2")
    dd.set_defaults(fn=_cmd_dpo_demo)

    v = sub.add_parser("validate", help="scan a dataset or mixture and report records that would fail")
    from .data.validate import add_validate_args
    add_validate_args(v)
    v.set_defaults(fn=_cmd_validate)

    e = sub.add_parser("export", help="write HF-format weights from a training checkpoint (ZeRO shards merged)")
    e.add_argument("--checkpoints", required=True, help="the run's checkpoints/ directory")
    e.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    e.add_argument("--out", required=True, help="output directory")
    e.set_defaults(fn=_cmd_export)

    o = sub.add_parser("ops", help="show the backend chosen for every op")
    o.set_defaults(fn=_cmd_ops)

    from .inference import cli as infer
    g = sub.add_parser("generate", help="answer one prompt about images, streaming to stdout")
    infer.add_generate_args(g)
    g.set_defaults(fn=infer.run_generate)
    c = sub.add_parser("chat", help="interactive chat on stdin (/image PATH, /reset, /quit)")
    infer.add_chat_args(c)
    c.set_defaults(fn=infer.run_chat)
    ev = sub.add_parser("eval", help="accuracy on a JSONL question file (open and multiple choice)")
    infer.add_eval_args(ev)
    ev.set_defaults(fn=infer.run_eval)
    return p


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """DeepSpeed's launcher appends --local_rank=N; the rank is in the environment already."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a.startswith("--local_rank=") or a.startswith("--local-rank="):
            continue
        elif a in ("--local_rank", "--local-rank"):
            skip = True
        else:
            out.append(a)
    return out


def main(argv=None) -> int:
    argv = _strip_launcher_args(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        status = args.fn(args)
        sys.stdout.flush()  # a reader that went away shows up here, not as a traceback at exit
        return status
    except BrokenPipeError:
        # `xgenmm-fast ops | head`: the reader has what it wanted; stop quietly, as other command-line tools do
        _stdout_to_devnull()
        return 128 + 13  # (SIGPIPE's shell status)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"xgenmm-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


def _stdout_to_devnull() -> None:
    """After a broken pipe, so that the interpreter's final flush of stdout fails no more."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # stdout without a file descriptor (captured): nothing to flush at exit


if __name__ == "__main__":
    sys.exit(main())
