"""Evaluation-time methods: models made at inference, judged like trained ones.

    bonN      best of N samples of the SFT model (or NAME=DIR's model) under the RM: the answer with
              the highest reward (Nakano et al. 2021; Stiennon et al. 2020). KL to the sampled model
              is at most log N - (N - 1) / N (Hilton's bound), with no training at all.
    fewshot   the pre-trained model prompted with a handful of the labelers' demonstrations before
              the question (GPT-3's few-shot prompting, InstructGPT's "prompted" baseline).

A method is named by its kind ("bon16", "fewshot") and may be given a model as NAME=DIR. Its
handle's `answer_fn` replaces world_eval.answer's greedy/sampled decoding: for bonN the "greedy"
slot is the best of N samples and the "sample" slot the best of another N; fewshot decodes as any
plain-text model does, its prompts prefixed with the demonstrations.
"""

from __future__ import annotations

import math

from chatrlhf.evaluate.models import BON, ModelHandle, encode_prompt, load_handle, prompt_text


def bon_kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n || the sampled policy): log n - (n - 1) / n nats."""
    return math.log(n) - (n - 1) / n


def fewshot_prefix(demonstrations: list[dict], k: int, max_chars: int = 400) -> str:
    """k single-turn demonstrations, one per task where possible (shortest first, so more fit in the
    context), as the pre-training corpus writes chat logs: "User: ...\\nAssistant: ...\\n"."""
    single = [d for d in demonstrations if len(d["messages"]) == 2 and d["messages"][-1]["role"] == "assistant"
              and len(d["messages"][0]["content"]) + len(d["messages"][1]["content"]) <= max_chars]
    single.sort(key=lambda d: len(d["messages"][0]["content"]) + len(d["messages"][1]["content"]))
    chosen, tasks = [], set()
    for d in single:  # one per task first, then the shortest of the rest
        if len(chosen) < k and d.get("task") not in tasks:
            chosen.append(d)
            tasks.add(d.get("task"))
    chosen += [d for d in single if d not in chosen][: k - len(chosen)]
    return "".join(f"User: {d['messages'][0]['content']}\nAssistant: {d['messages'][1]['content']}\n" for d in chosen)


def load_method_handle(name: str, path: str, dtype: str = "float32", reward_model=None, world=None,
                       fewshot_demos: int = 4) -> ModelHandle:
    """A handle whose answers are the method's: bonN needs `reward_model`, fewshot the `world`'s demonstrations."""
    if name == "fewshot":
        h = load_handle("base", path, dtype)  # plain-text prompts: the base model never saw the chat template
        h.name = name
        h.prefix = fewshot_prefix(world.demonstrations(), fewshot_demos) if world is not None else ""
        return h
    m = BON.fullmatch(name)
    if not m:
        raise ValueError(f"unknown evaluation method {name!r} (bonN or fewshot)")
    if reward_model is None:
        raise FileNotFoundError(f"{name}: best-of-n needs a reward model (the run's rm/, or eval.judge)")
    n = int(m.group(1))
    h = load_handle("sft", path, dtype)
    h.name = name
    h.answer_fn = lambda prompts, max_new, temperature, seed: best_of_n_answers(h, reward_model, prompts, n, max_new,
                                                                                temperature, seed)
    h.info = {"n": n, "kl_bound": bon_kl_bound(n)}
    return h


def best_of_n_answers(h: ModelHandle, rm, prompts: list[dict], n: int, max_new_tokens: int, temperature: float,
                      seed: int) -> dict[str, list[str]]:
    """For each prompt the highest-reward of n samples at `temperature`, twice with other seeds
    ("greedy" and "sample" slots); counts the tokens generated in h.info["tokens_generated"]."""
    from chatrlhf.lm.engine import Engine, SamplingParams

    texts = [prompt_text(h, p["messages"]) for p in prompts]
    ids = [encode_prompt(h, t)[-(h.max_len - max_new_tokens):] for t in texts]
    eng = Engine(h.model, h.tokenizer)
    out, tokens = {}, 0
    for slot, s in (("greedy", seed), ("sample", seed + 7919)):
        gens = eng.generate(ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature or 1.0,
                                                seed=s), n=n)
        tokens += sum(len(g.token_ids) for g in gens)
        cands = [g.text.strip() for g in gens]
        scores = rm.score([p["messages"] for p in prompts for _ in range(n)], cands).view(len(prompts), n)
        best = scores.argmax(1).tolist()
        out[slot] = [cands[i * n + b] for i, b in enumerate(best)]
    h.info["tokens_generated"] = h.info.get("tokens_generated", 0) + tokens
    return out


def count_generated_tokens(h: ModelHandle, responses: list[str]) -> int:
    """Tokens in a list of answers (for single-sample methods, what eval generated for them)."""
    return sum(len(h.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses)
