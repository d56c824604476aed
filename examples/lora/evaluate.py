"""Score the LoRA fine-tune of train.py: the `eval` example job of Coop.

It reads what the fine-tune wrote: under Coop, its outputs in $COOP_INPUT_DIR/finetune/adapter/
(eval.yaml takes them as an input); without Coop, $COOP_CHECKPOINT_DIR/final/. Then, on the
held-out records of data/target.txt, which the fine-tune never trained on:

- scores the base model alone and the base model with the adapter: loss in nats per byte,
  bits per byte and perplexity per byte (lower is better for all three);
- prints a few greedy generations of each, for questions from the held-out records;
- writes everything to score.json next to the adapter (and to $COOP_OUTPUT_DIR under Coop).

Exit status, so that Coop marks a bad result FAILED:
    0  the fine-tuned model has a lower held-out loss than the base model
    1  it has not: the fine-tune did not help (or broke the model)
    2  there is no adapter: run the fine-tune first

Run locally without Coop (after train.py, with the same folder):
    COOP_CHECKPOINT_DIR=/tmp/lora-run python evaluate.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import tinylm
from tinylm import ModelConfig, TinyLM

EXIT_NOT_BETTER = 1
EXIT_NO_ADAPTER = 2


def log(message: str = "") -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--checkpoint-dir", help="default: $COOP_CHECKPOINT_DIR, else " + str(tinylm.DEFAULT_CHECKPOINT_DIR)
    )
    parser.add_argument(
        "--generations",
        type=int,
        default=int(os.environ.get("EVAL_GENERATIONS", 3)),
        help="held-out questions to answer greedily [env EVAL_GENERATIONS]",
    )
    return parser.parse_args(argv)


def scores(loss: float) -> dict[str, float]:
    """One loss (nats per byte) in the three usual units."""
    return {
        "loss": round(loss, 4),
        "bits_per_byte": round(loss / math.log(2), 4),
        "perplexity": round(math.exp(loss), 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = tinylm.pick_device()
    given = Path(os.environ.get("COOP_INPUT_DIR", "/nonexistent")) / "finetune" / "adapter"
    final = (
        given if given.is_dir() and not args.checkpoint_dir else tinylm.checkpoint_dir(args.checkpoint_dir) / "final"
    )
    adapter_file, base_file = final / "adapter.pt", final / "base.pt"
    if not adapter_file.is_file() or not base_file.is_file():
        # train.py writes adapter.pt last, so its presence means that final/ is complete.
        log(
            f"error: no fine-tuned adapter in {final}/ (adapter.pt and base.pt). Run the fine-tune first: "
            "coop submit examples/lora/finetune.yaml --follow (or, without Coop, python train.py with the "
            "same COOP_CHECKPOINT_DIR), then run this eval again."
        )
        return EXIT_NO_ADAPTER
    meta: dict[str, Any] = json.loads((final / "meta.json").read_text()) if (final / "meta.json").is_file() else {}
    log(f"job {os.environ.get('COOP_JOB_ID', '-')}: evaluating {final}/ on {device}")

    # The base model, exactly as the fine-tune froze it.
    base = tinylm.load(base_file)
    model = TinyLM(ModelConfig(**base["config"])).to(device)
    model.load_state_dict(base["model"])

    # The held-out split: the same rule (tinylm.split_records) that train.py used to leave them out.
    _, heldout = tinylm.split_records(tinylm.read_data("target.txt"))
    heldout_ids = tinylm.encode(tinylm.join_records(heldout))
    questions = [record.split("\nA:", 1)[0] + "\nA:" for record in heldout[: args.generations]]
    log(f"held out: {len(heldout)} records, {len(heldout_ids):,} bytes of data/target.txt, never trained on")

    base_loss = tinylm.mean_loss(model, heldout_ids, device)
    base_answers = [tinylm.generate(model, q, device) for q in questions]

    # The same model with the adapter: wrap the same layers, load the LoRA weights.
    adapter = tinylm.load(adapter_file)
    tinylm.add_lora(model, adapter["rank"], adapter["alpha"], adapter["targets"])
    tinylm.load_lora_state_dict(model, adapter["state"])
    model.to(device)
    tuned_loss = tinylm.mean_loss(model, heldout_ids, device)
    tuned_answers = [tinylm.generate(model, q, device) for q in questions]

    better = tuned_loss < base_loss
    result = {
        "passed": better,
        "heldout_records": len(heldout),
        "heldout_bytes": len(heldout_ids),
        "base": scores(base_loss),
        "finetuned": scores(tuned_loss),
        "loss_reduction_pct": round(100 * (base_loss - tuned_loss) / base_loss, 2),
        "generations": [
            {"prompt": q, "base": b, "finetuned": t}
            for q, b, t in zip(questions, base_answers, tuned_answers, strict=True)
        ],
        "adapter": {"rank": adapter["rank"], "alpha": adapter["alpha"], "targets": adapter["targets"]},
        "finetune": {k: meta.get(k) for k in ("job_id", "attempt", "steps", "train_loss")},
        "eval_job_id": os.environ.get("COOP_JOB_ID"),
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 1),
    }
    tinylm.atomic_write_text(json.dumps(result, indent=2) + "\n", final / "score.json")
    if os.environ.get("COOP_OUTPUT_DIR"):  # sent back by Coop: coop pull JOB
        tinylm.atomic_write_text(
            json.dumps(result, indent=2) + "\n", Path(os.environ["COOP_OUTPUT_DIR"]) / "score.json"
        )

    # ---- the summary
    log()
    log(f"{'held-out score':24s} {'loss (nats/byte)':>17s} {'bits/byte':>10s} {'perplexity':>11s}")
    for name, s in (("base model", result["base"]), ("base + LoRA adapter", result["finetuned"])):
        log(f"{name:24s} {s['loss']:17.4f} {s['bits_per_byte']:10.4f} {s['perplexity']:11.3f}")
    log(f"loss reduction: {result['loss_reduction_pct']:.1f}%")
    for g in result["generations"]:
        log()
        log(g["prompt"].replace("\n", " | "))
        log(f"  base:       {g['base']!r}")
        log(f"  fine-tuned: {g['finetuned']!r}")
    log()
    log(f"wrote {final / 'score.json'}")
    if not better:
        log(
            f"FAILED: the fine-tuned model is not better than the base model on held-out data "
            f"({tuned_loss:.4f} >= {base_loss:.4f} nats/byte)"
        )
        return EXIT_NOT_BETTER
    log(f"PASSED: the adapter lowers the held-out loss from {base_loss:.4f} to {tuned_loss:.4f} nats/byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
