"""The chat loop as `chatrlhf iterate` runs it, when `iterate.source: labeling_app` and
`iterate.labeling_project` names a chat project of the app:

    round r:  the app serves the round r - 1 policy, tagged round r      (serve_policy)
              trainers chat with it; each finished chat queues a ranking of one of its model turns
              iterate waits for `iterate.prompts_per_round` fully ranked turns of round r, writes
              them as round_r/comparisons.jsonl, and the round's both_sides conversations as
              round_r/demonstrations.jsonl                                 (collect_chat_round)
              RM, PPO; then the app serves the new policy, tagged round r + 1
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from chatrlhf.config import Config


def client_for(cfg: Config):
    from chatrlhf.labeling.client import LabelingClient

    token = os.environ.get("CHATRLHF_LABEL_TOKEN")
    if not cfg.iterate.labeling_url or not token:
        raise ValueError("iterate.source = labeling_app needs iterate.labeling_url and the admin token in "
                         "the CHATRLHF_LABEL_TOKEN environment variable")
    return LabelingClient(cfg.iterate.labeling_url, token)


def chat_project(cfg: Config) -> dict[str, Any] | None:
    """The chat project iterate draws from, or None when the app's project is not a chat project
    (then iterate queues its own sampled comparisons in `<labeling_project>-round-<r>`)."""
    from chatrlhf.labeling.client import LabelingError

    if cfg.iterate.source != "labeling_app" or not cfg.iterate.labeling_project:
        return None
    try:
        stats = client_for(cfg).stats(cfg.iterate.labeling_project)
    except LabelingError as e:
        if " 404 " in str(e):
            return None
        raise
    return stats if stats["kind"] == "chat" else None


def serve_policy(cfg: Config, policy_dir: Path, round: int) -> dict:
    """Point the app at `policy_dir` for round `round` (unless it already serves exactly that)."""
    client = client_for(cfg)
    target = str(Path(policy_dir).resolve())
    now = client.policy()
    if now and now["kind"] == "local" and now["target"] == target and now["round"] == round:
        return now
    return client.set_policy(model_dir=target, round=round)


def collect_chat_round(cfg: Config, policy_dir: Path, out_dir: Path, r: int, poll_s: float = 5.0,
                       timeout_s: float | None = None) -> Path:
    """Serve the policy for round r, wait until `iterate.prompts_per_round` chat turns of round r are
    ranked by `settings.rank_labelers_per_item` trainers each, and write them (with the round's
    both-sides conversations) into `out_dir`. Returns the comparison file."""
    from chatrlhf.lm.rankings import assign_splits, write_comparisons

    project = chat_project(cfg)
    if project is None:
        raise ValueError(f"iterate.labeling_project '{cfg.iterate.labeling_project}' is not a chat project of "
                         f"{cfg.iterate.labeling_url}")
    client = client_for(cfg)
    serve_policy(cfg, policy_dir, r)
    settings = project["settings"]
    rank_project, per_item, want = settings["rank_project"], settings["rank_labelers_per_item"], cfg.iterate.prompts_per_round
    print(f"iterate: round {r}: {cfg.iterate.labeling_url} serves {policy_dir}; waiting for {want} ranked chat "
          f"turns in {rank_project}", file=sys.stderr, flush=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    wait = 0.2
    while True:
        try:
            ranked = [c for c in client.export(rank_project, round=r, group=cfg.iterate.labeling_group)
                      if len(c["rankings"]) >= per_item]
        except Exception as e:  # the rank project appears with the first finished chat
            if "404" not in str(e):
                raise
            ranked = []
        if len(ranked) >= want:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"round {r}: {len(ranked)} of {want} chat turns ranked in {rank_project} after "
                               f"{timeout_s:g} s")
        time.sleep(wait)
        wait = min(poll_s, wait * 1.5)
    for c, split in zip(ranked, assign_splits(ranked, cfg.rm.val_fraction, random.Random(cfg.run.seed * 1000 + r))):
        c["split"] = split
    out = write_comparisons(ranked, Path(out_dir) / "comparisons.jsonl")
    demos = []
    for p in client.projects():
        if p["kind"] == "both_sides":
            demos += client.export(p["project"], round=r)
    (Path(out_dir) / "demonstrations.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in demos))
    (Path(out_dir) / "watch.json").write_text(json.dumps(client.watch(r), indent=2))
    return out
