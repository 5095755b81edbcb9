"""How much of what the held-out labelers prefer does a language model's own likelihood know? On a run's
RM validation comparisons, each answer is scored by the log-likelihood a model gives it (summed and
averaged over the answer's tokens), and that score is read as a reward: its pairwise accuracy with the
held-out labelers, per task, beside each listed reward model's (from its `eval.json`) and the world's
noise-free rubric's. Where the likelihood ranks fact pairs no better than the RM, an RM that keeps its
LM's knowledge (`rm.lm_coef`) has little to keep.

    python bench/likelihood_as_reward.py --run runs/d1234 [--model runs/d1234/sft] \
        --rms runs/d1234/rm runs/lm0.5_1234/rm [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from transformers import AutoModelForCausalLM  # noqa: E402

from chatrlhf.lm.modeling import load_tokenizer  # noqa: E402
from chatrlhf.lm.rankings import load_comparisons, pairwise_accuracy  # noqa: E402
from chatrlhf.rl.dpo import encode_pair_side, sequence_logprobs  # noqa: E402


@torch.no_grad()
def likelihoods(model, tok, comparison: dict, max_len: int = 256) -> list[tuple[float, float]]:
    """(sum, mean) of the answer tokens' log-probabilities, for each of the comparison's answers."""
    seqs = [encode_pair_side(tok, comparison["messages"], r, max_len) for r in comparison["responses"]]
    sums = sequence_logprobs(model, seqs, tok.pad_token_id, "cpu").tolist()
    return [(s, s / len(resp)) for s, (_, resp) in zip(sums, seqs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run directory with world/, sft/ and rm/val_comparisons.jsonl")
    ap.add_argument("--model", help="the causal LM whose likelihood is read (default: the run's SFT model)")
    ap.add_argument("--rms", nargs="*", default=[], help="reward model directories whose eval.json to set beside it")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(a.run)
    meta = json.loads((run / "rm" / "meta.json").read_text())
    held_out = set(meta["held_out_labelers"])

    def keep(labeler: str) -> bool:
        return labeler in held_out

    val = load_comparisons(run / "rm" / "val_comparisons.jsonl")
    model_dir = Path(a.model or run / "sft")
    tok, model = load_tokenizer(model_dir), AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    scores = [likelihoods(model, tok, c) for c in val]
    tasks = sorted({c.get("task", "?") for c in val})
    rows: dict[str, dict[str, float]] = {}
    for task in [*tasks, "all"]:
        idx = [i for i, c in enumerate(val) if task in ("all", c.get("task", "?"))]
        cs = [val[i] for i in idx]
        acc_sum, pairs = pairwise_accuracy(cs, [[s for s, _ in scores[i]] for i in idx], keep)
        acc_mean, _ = pairwise_accuracy(cs, [[m for _, m in scores[i]] for i in idx], keep)
        rows[task] = {"pairs": pairs, "likelihood_sum": acc_sum, "likelihood_mean": acc_mean}
    rms = {}
    for d in a.rms:
        ev = json.loads((Path(d) / "eval.json").read_text())
        rms[d] = {"all": ev["acc_held_out_labelers"], "ceiling": ev["held_out_labeler_agreement"],
                  **{t: v["rm"] for t, v in ev.get("acc_held_out_labelers_by_task", {}).items()}}
        for t, v in ev.get("acc_held_out_labelers_by_task", {}).items():
            rows.setdefault(t, {})["rubric"] = v["gold"]
        rows["all"]["rubric"] = ev.get("gold_acc_held_out_labelers", float("nan"))
    print(f"{'task':12s} {'pairs':>6s} {'loglik sum':>10s} {'loglik mean':>11s} {'rubric':>7s}  " + "  ".join(rms))
    for t, r in rows.items():
        print(f"{t:12s} {r.get('pairs', 0):6d} {r.get('likelihood_sum', float('nan')):10.3f} "
              f"{r.get('likelihood_mean', float('nan')):11.3f} {r.get('rubric', float('nan')):7.3f}  "
              + "  ".join(f"{rms[d].get(t, float('nan')):.3f}" for d in rms))
    if a.json:
        Path(a.json).write_text(json.dumps({"run": str(run), "model": str(model_dir), "by_task": rows, "rms": rms},
                                           indent=2))


if __name__ == "__main__":
    main()
