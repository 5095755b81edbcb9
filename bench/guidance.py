"""Does the conditioned model follow its group line more when decoding leans on it? Classifier-free
guidance (Sanchez et al. 2023, "Stay on topic with classifier-free guidance") for a finished
`chatrlhf preferences` run's conditioned policy, judged as the whose-preferences table judges it.

Asked for group G, each greedy token maximises

    log p(x | G's line, prompt) + w * (log p(x | G's line, prompt) - log p(x | prompt without a line))

so w = 0 is the table's own greedy answer and w > 0 pushes the answer further the way the line moves
it. The answers to the first eval prompts (the config's preferences.eval_prompts), asked for each
group, are judged against the pooled policy's greedy answers by that group's held-out members, with
the table's judging seed and judgements per pair; the rubric's substance (hedges, safety notes,
facts right) beside them. One model serves every group at every w.

    python bench/guidance.py --run runs/X --scales 0 0.5 1 [--variant conditioned-sft] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chatrlhf.config import load_config  # noqa: E402
from chatrlhf.evaluate.models import encode_prompt, load_handle, prompt_text  # noqa: E402
from chatrlhf.lm.reward_model import collate_sequences  # noqa: E402
from chatrlhf.stages.preferences import answers, judged_by_groups, substance_of  # noqa: E402
from chatrlhf.world import World  # noqa: E402
from chatrlhf.world.groups import for_group  # noqa: E402


@torch.no_grad()
def _last_logprobs(model, rows: list[list[int]], pad: int) -> torch.Tensor:
    logits = model(**collate_sequences(rows, pad)).logits  # left-padded: every row ends at the last column
    return torch.log_softmax(logits[:, -1].float(), -1)


def guided(h, conds: list[list[int]], unconds: list[list[int]], w: float, max_new: int,
           batch: int = 50) -> list[str]:
    """Greedy answers under guidance scale w (no cache: the prompts are short and the model tiny)."""
    tok, eos = h.tokenizer, h.tokenizer.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    out: list[str] = []
    for s in range(0, len(conds), batch):
        c, u = [list(r) for r in conds[s:s + batch]], [list(r) for r in unconds[s:s + batch]]
        new: list[list[int]] = [[] for _ in c]
        live = list(range(len(c)))
        for _ in range(max_new):
            lp = _last_logprobs(h.model, [c[i] for i in live], pad)
            if w:
                lp = lp + w * (lp - _last_logprobs(h.model, [u[i] for i in live], pad))
            nxt = lp.argmax(-1).tolist()
            still = []
            for i, t in zip(live, nxt):
                if t == eos:
                    continue
                new[i].append(t)
                c[i].append(t)
                u[i].append(t)
                still.append(i)
            live = still
            if not live:
                break
        out += [tok.decode(n, skip_special_tokens=True).strip() for n in new]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run directory with world/ and a finished preferences/")
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"), help="the config the run was made with")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides the run was made with (run.seed=1 ...)")
    ap.add_argument("--variant", default="conditioned-sft")
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--json")
    a = ap.parse_args()
    run = Path(a.run)
    cfg = load_config(a.config, [f"run.out_dir={run}", *a.set])
    world = World.load(run / "world")
    groups = cfg.preferences.groups
    prompts = world.prompts("eval")[: cfg.preferences.eval_prompts]
    prefs = run / "preferences"
    pooled = answers(cfg, prefs / "pooled" / "ppo", prompts)
    h = load_handle(a.variant, str(prefs / a.variant / "ppo"), cfg.model.dtype)
    h.model.eval()
    room = h.max_len - cfg.eval.max_new_tokens
    def encoded(asked: list[dict]) -> list[list[int]]:
        return [encode_prompt(h, prompt_text(h, p["messages"]))[-room:] for p in asked]

    unconds = encoded(prompts)
    conds = {g: encoded([for_group(p, g) for p in prompts]) for g in groups}
    result: dict = {"run": str(run), "variant": a.variant, "prompts": len(prompts), "seed": cfg.run.seed,
                    "judgements": cfg.preferences.judgements, "scales": {}}
    for w in a.scales:
        cells = {}
        for g in groups:
            said = guided(h, conds[g], unconds, w, cfg.eval.max_new_tokens)
            cell = judged_by_groups(world, prompts, said, pooled, [g], cfg.run.seed, cfg.preferences.judgements)[g]
            cells[g] = {**cell, "substance": substance_of(world, prompts, said), "examples": said[:3]}
        result["scales"][f"{w:g}"] = cells
        print(f"w={w:g}  " + "  ".join(f"{g} {c['win_rate']:.3f} [{c['low']:.3f}, {c['high']:.3f}] hedge "
                                         f"{c['substance']['hedge_rate']:.2f}" for g, c in cells.items()), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
