"""LoRA fine-tune of a tiny byte-level language model: the `finetune` example job of Coop.

Two phases, counted by one step counter:

1. steps 1..P (``--pretrain-steps``): pre-train the base model on data/base.txt (plain prose),
   every weight trained, from a fixed seed. A real job would load a downloaded base model here;
   this one trains its own in about 30 s on a CPU, so that the example needs nothing but PyTorch.
2. steps P+1..P+L (``--lora-steps``): freeze the base and train LoRA adapters on the training
   records of data/target.txt (short questions and answers), which the base has never seen.

What makes it a good Coop job:

- It checkpoints to $COOP_CHECKPOINT_DIR every ``--checkpoint-every`` steps, atomically, with
  everything needed to go on: weights (the whole model while pre-training, only the adapter
  after), optimizer state, step and random-number-generator states.
- Started again (the next attempt after a preemption or a lost node) it resumes from the latest
  checkpoint, and on the CPU it ends with exactly the weights an uninterrupted run gets.
- On SIGTERM (how Coop preempts: SIGTERM, a grace period, then SIGKILL) it saves a checkpoint
  at once and exits, so no step is lost.
- It prints a progress line every ``--log-every`` steps, for ``coop logs -f``.
- It writes its result to $COOP_CHECKPOINT_DIR/final/: base.pt (the base model), adapter.pt (the
  LoRA weights) and meta.json. The eval job (evaluate.py) reads them from there. Under Coop it
  also copies them to $COOP_OUTPUT_DIR/adapter/, which Coop sends back: ``coop pull JOB``.

Every option is a flag and an environment variable (set them under env: in finetune.yaml):
    python train.py --lora-steps 300           # or: LORA_STEPS=300 python train.py
Run locally without Coop:
    COOP_CHECKPOINT_DIR=/tmp/lora-run python train.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tinylm
import torch
from tinylm import ModelConfig, TinyLM

CHECKPOINT_GLOB = "step-*.pt"
KEEP_CHECKPOINTS = 2  # the latest two: if the newest cannot be read, the one before it still can
# Options that shape the run: a checkpoint made with other values cannot be resumed.
MUST_MATCH = ("pretrain_steps", "lora_steps", "batch_size", "lr", "lora_lr", "rank", "alpha", "seed", "model")


def log(message: str) -> None:
    """Print at once (no buffering), so `coop logs -f` shows each line as it happens."""
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])

    def option(flag: str, env: str, default: Any, help: str) -> None:
        """A flag whose default comes from an environment variable, then from ``default``."""
        # argparse converts a string default with ``type``, so a bad value in the environment gets
        # the same clear error as a bad flag.
        value = os.environ.get(env, default)
        parser.add_argument(flag, type=type(default), default=value, help=f"{help} (default {default}) [env {env}]")

    option("--pretrain-steps", "PRETRAIN_STEPS", 800, "steps pre-training the base model")
    option("--lora-steps", "LORA_STEPS", 400, "steps training the LoRA adapter")
    option("--batch-size", "BATCH_SIZE", 8, "sequences (of 64 bytes, the model's context) per step")
    option("--lr", "LR", 2e-3, "peak learning rate while pre-training")
    option("--lora-lr", "LORA_LR", 5e-3, "peak learning rate of the adapter")
    option("--rank", "LORA_RANK", 8, "LoRA rank")
    option("--alpha", "LORA_ALPHA", 16.0, "LoRA alpha (the update is scaled by alpha / rank)")
    option("--checkpoint-every", "CHECKPOINT_EVERY", 100, "steps between checkpoints")
    option("--log-every", "LOG_EVERY", 50, "steps between progress lines")
    option("--seed", "SEED", 0, "random seed (same seed, same result on the CPU)")
    parser.add_argument(
        "--checkpoint-dir", help="default: $COOP_CHECKPOINT_DIR, else " + str(tinylm.DEFAULT_CHECKPOINT_DIR)
    )
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:06d}.pt"  # zero-padded so that names sort by step


def latest_checkpoint(ckpt_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads, or None. An unreadable one is reported and skipped."""
    for path in sorted(ckpt_dir.glob(CHECKPOINT_GLOB), reverse=True):
        try:
            return tinylm.load(path)
        except Exception as exc:  # e.g. a disk that filled up: fall back to the one before
            log(f"warning: cannot read {path} ({exc}); trying an older checkpoint")
    return None


def save_checkpoint(ckpt_dir: Path, state: dict[str, Any]) -> Path:
    path = checkpoint_path(ckpt_dir, state["step"])
    tinylm.atomic_save(state, path)
    for old in sorted(ckpt_dir.glob(CHECKPOINT_GLOB), reverse=True)[KEEP_CHECKPOINTS:]:
        old.unlink(missing_ok=True)
    return path


def rng_state(data_rng: torch.Generator) -> dict[str, Any]:
    """Every random-number generator the run uses. (Save numpy's and random's too if you use them.)"""
    state = {"torch": torch.get_rng_state(), "data": data_rng.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], data_rng: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_rng.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Preemption: Coop sends SIGTERM, waits a grace period (60 s by default), then SIGKILL
# ---------------------------------------------------------------------------------------------

stop_requested = False


def on_sigterm(signum: int, frame: Any) -> None:
    global stop_requested
    stop_requested = True  # acted on after the current step, in train_phase


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 10% of a phase, then cosine decay to 10% of the peak.

    A pure function of the step, so there is no scheduler state to save in the checkpoint.
    """
    warmup = max(1, steps // 10)
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class Run:
    """What both phases need: the options, where checkpoints go, and what every checkpoint records."""

    args: argparse.Namespace
    ckpt_dir: Path
    device: torch.device
    settings: dict[str, Any]  # the MUST_MATCH options, checked when resuming
    attempt: str  # COOP_ATTEMPT, recorded so that the log says which attempt saved a checkpoint
    losses: dict[str, float | None]  # the latest mean training loss of each phase


def train_phase(
    run: Run,
    phase: str,
    model: TinyLM,
    data: torch.Tensor,
    first: int,
    last: int,
    resume: dict[str, Any] | None,
) -> None:
    """Train the trainable parameters of ``model`` from global step ``first`` (done) to ``last``.

    ``resume`` is the checkpoint to continue from (None: a fresh start of this phase).
    """
    args = run.args
    first_of_phase, peak_lr = (args.pretrain_steps, args.lora_lr) if phase == "lora" else (0, args.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.0)
    data_rng = torch.Generator().manual_seed(args.seed + (1 if phase == "lora" else 0))  # draws the batches
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        restore_rng(resume["rng"], data_rng)

    context, batch, total = model.cfg.context, args.batch_size, args.pretrain_steps + args.lora_steps
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    model.train()
    for step in range(first + 1, last + 1):
        # A batch of random windows of context + 1 bytes: the model reads bytes 0..63 and predicts 1..64.
        starts = torch.randint(len(data) - context - 1, (batch,), generator=data_rng)
        chunk = torch.stack([data[s : s + context + 1] for s in starts.tolist()]).to(run.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - first_of_phase, last - first_of_phase, peak_lr)
        with tinylm.autocast(run.device):
            loss = model.loss(chunk[:, :-1], chunk[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

        window_loss += loss.item()
        window_steps += 1
        if step % args.log_every == 0 or step == last:
            elapsed = time.perf_counter() - window_start
            mean = run.losses[phase] = window_loss / window_steps
            log(
                f"step {step:4d}/{total} {phase:8s} loss {mean:.3f} lr {optimizer.param_groups[0]['lr']:.1e} "
                f"{window_steps * batch * context / elapsed:,.0f} tok/s"
            )
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()

        if step % args.checkpoint_every == 0 or step == last or stop_requested:
            state = {
                "step": step,
                "phase": phase,
                # Pre-training: the whole model. LoRA: only the adapter (the frozen base is in base.pt).
                **({"adapter": tinylm.lora_state_dict(model)} if phase == "lora" else {"model": model.state_dict()}),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(data_rng),
                "settings": run.settings,
                "attempt": run.attempt,
                "losses": run.losses,
            }
            path = save_checkpoint(run.ckpt_dir, state)
            log(f"checkpoint: step {step} -> {path}")
        if stop_requested:
            log(f"SIGTERM: saved step {step}; exiting so that Coop can requeue the job (the next attempt resumes)")
            sys.exit(128 + signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    device = tinylm.pick_device()
    ckpt_dir = tinylm.checkpoint_dir(args.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    job, attempt = os.environ.get("COOP_JOB_ID", "-"), os.environ.get("COOP_ATTEMPT", "-")
    log(
        f"job {job} attempt {attempt}: device {device} ({torch.get_num_threads()} CPU threads), "
        f"checkpoints in {ckpt_dir}"
    )

    cfg = ModelConfig()
    settings = {name: getattr(args, name) for name in MUST_MATCH if name != "model"} | {"model": asdict(cfg)}
    total = args.pretrain_steps + args.lora_steps
    base_text = tinylm.encode(tinylm.read_data("base.txt"))
    train_records, heldout_records = tinylm.split_records(tinylm.read_data("target.txt"))
    target_text = tinylm.encode(tinylm.join_records(train_records))
    log(
        f"data: base.txt {len(base_text):,} bytes; target.txt {len(train_records)} records "
        f"({len(target_text):,} bytes) for training, {len(heldout_records)} held out for the eval"
    )

    # ---- resume, if an earlier attempt left a checkpoint
    resume = latest_checkpoint(ckpt_dir)
    step = 0
    if resume is not None:
        different = [k for k in MUST_MATCH if resume["settings"].get(k) != settings[k]]
        if different:
            shown = ", ".join(f"{k}: {resume['settings'].get(k)} there, {settings[k]} now" for k in different)
            sys.exit(
                f"error: the checkpoint in {ckpt_dir} was made with other settings ({shown}). "
                "Run with the same settings, or empty the folder (or use another one) to start over."
            )
        step = resume["step"]
        log(f"resuming from step {step} ({resume['phase']}), saved by attempt {resume['attempt']}")
        if step >= total:
            log(f"step {step} is the last step: nothing left to train (empty {ckpt_dir} to train again)")
    else:
        log("no checkpoint: starting from step 0")
    run = Run(
        args, ckpt_dir, device, settings, attempt, resume["losses"] if resume else {"pretrain": None, "lora": None}
    )
    started = time.perf_counter()

    # ---- phase 1: pre-train the base model (every weight trains)
    torch.manual_seed(args.seed)  # the same initial weights on every fresh start
    model = TinyLM(cfg).to(device)
    log(f"model: {tinylm.num_params(model) / 1e6:.2f} M parameters ({cfg.n_layers} layers, width {cfg.d_model})")
    base_file = ckpt_dir / "base.pt"
    if resume is None or resume["phase"] == "pretrain":
        if resume is not None:
            model.load_state_dict(resume["model"])
        train_phase(run, "pretrain", model, base_text, step, args.pretrain_steps, resume)
        # The base model is done: store it once; the LoRA phase saves only the adapter.
        tinylm.atomic_save({"config": asdict(cfg), "model": model.state_dict()}, base_file)
        step, resume = args.pretrain_steps, None  # the adapter starts fresh
    else:
        model.load_state_dict(tinylm.load(base_file)["model"])

    # ---- phase 2: freeze the base, train LoRA adapters on the target records
    torch.manual_seed(args.seed + 1)  # the adapter's initial A matrices
    wrapped = tinylm.add_lora(model, args.rank, args.alpha)
    model.to(device)
    if resume is not None:
        tinylm.load_lora_state_dict(model, resume["adapter"])
    trainable = tinylm.num_params(model, trainable_only=True)
    log(
        f"LoRA rank {args.rank}, alpha {args.alpha:g} on {len(wrapped)} layers: {trainable / 1e3:.1f} k trainable "
        f"parameters ({100 * trainable / tinylm.num_params(model):.1f}% of the model)"
    )
    train_phase(run, "lora", model, target_text, step, total, resume)

    # ---- the result, for the eval job: final/base.pt, final/adapter.pt, final/meta.json
    final = ckpt_dir / "final"
    tinylm.atomic_save(tinylm.load(base_file), final / "base.pt")
    meta = {
        "job_id": job,
        "attempt": attempt,
        "steps": total,
        "settings": settings,
        "lora_targets": list(tinylm.DEFAULT_LORA_TARGETS),
        "train_loss": run.losses,
        "heldout": f"every {tinylm.HELDOUT_EVERY}th record of data/target.txt ({len(heldout_records)} records)",
        "device": str(device),
        "seconds_this_attempt": round(time.perf_counter() - started, 1),
    }
    tinylm.atomic_write_text(json.dumps(meta, indent=2) + "\n", final / "meta.json")
    adapter = {
        "rank": args.rank,
        "alpha": args.alpha,
        "targets": list(tinylm.DEFAULT_LORA_TARGETS),
        "state": tinylm.lora_state_dict(model),
    }
    tinylm.atomic_save(adapter, final / "adapter.pt")  # written last: its presence means final/ is complete
    log(
        f"done in {meta['seconds_this_attempt']} s: train loss base {run.losses['pretrain']:.3f}, "
        f"adapter {run.losses['lora']:.3f}; wrote {final}/ (base.pt, adapter.pt, meta.json)"
    )
    if os.environ.get("COOP_OUTPUT_DIR"):  # what Coop sends back to the researcher: coop pull JOB
        shutil.copytree(final, Path(os.environ["COOP_OUTPUT_DIR"]) / "adapter", dirs_exist_ok=True)
        log(f"copied {final}/ to $COOP_OUTPUT_DIR/adapter/: fetch it with 'coop pull {job}'")
    log("next: the eval job (coop submit eval.yaml --follow, or python evaluate.py)")


if __name__ == "__main__":
    main()
