"""The engine's compiled one-row decode step (`Engine(compile=True)`, `chat.compile`, `serve.compile`):
`FusedLlama.step` for a lone row, compiled ahead of time by AOTInductor into one C++ call per token.
See `CompiledStep`; docs/RESULTS.md "A lone conversation" for what it measures.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from chatrlhf.lm.decode import Draw, sample_tokens, sampled_logprobs

# the FusedLlama it compiles and the SlotKV it reads come from engine_fast, which imports this module
FusedLlama = SlotKV = Any


def cache_dir() -> Path:
    """Where compiled decode steps are kept: $CHATRLHF_CACHE/compiled, else ~/.cache/chatrlhf/compiled."""
    root = os.environ.get("CHATRLHF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatrlhf"
    return Path(root) / "compiled"


class CompiledStep:
    """`FusedLlama.step` for a batch of one row (a chat), compiled ahead of time by AOTInductor
    (torch.export, then inductor's C++ kernels and C++ wrapper in a shared library). At batch 1 the
    eager step is ~25 framework calls per layer, each costing more than its arithmetic; here a token
    is one call into generated code: the step, the write of the new keys and values into the cache,
    and the draw of the next token (the sampler's inverse CDF at the row's next uniform number, so
    the samples are the eager path's), with no Python guard checks per call.

    Shapes are static: one library per cache size (`SlotKV(pow2=True)` grows the columns in powers
    of two, so a conversation compiles a handful at most) and per draw (plain, or sorted for
    top-k/top-p), built once and kept on disk (`cache_dir()`), keyed by the architecture, the size,
    this code and the torch version. The weights are the library's constants, pointed at the model's live tensors after loading (no copy)
    and again whenever `FusedLlama.refresh` rebuilt them, so a trained model needs no recompiling.
    Batches of several rows take the eager step: at 32 rows compiling saved a seventh of a step
    (docs/RESULTS.md), where per-op overhead is shared by the rows."""

    def __init__(self, fused: FusedLlama):
        self.f = fused
        self.runners: dict[tuple[int, bool], object] = {}  # (cache columns, sorted draw) -> loaded library
        self.weights: list | None = None  # the FusedLlama.w the libraries read
        self.no_draw = Draw(torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long), torch.ones(1), False)  # greedy
        self.failed: str | None = None  # why a library could not be built

    def covers(self, B: int, kv: SlotKV) -> bool:
        """One row in a cache of one row (the library reads its tensors with the traced strides), on the
        CPU, unless building a library failed once (then every step runs eagerly)."""
        return self.failed is None and B == 1 and kv.pow2 and kv.k.shape[1] == 1 and kv.k.device.type == "cpu"

    def __call__(self, tokens, pos, kv: SlotKV, keep_hidden: bool,
                 draw: Draw | None = None) -> tuple[torch.Tensor, torch.Tensor | None, tuple | None] | None:
        """(logits, hidden state with keep_hidden, (next token, its log-prob) when `draw` is given);
        None when the library for this cache size cannot be built (no C++ compiler, say): the reason is
        printed once and the engine decodes eagerly from then on."""
        f = self.f
        C = kv.capacity[1]
        cos_t, sin_t = f.rope(C, tokens.device)
        d = draw if draw is not None else self.no_draw
        inputs = [tokens, pos, kv.k, kv.v, cos_t[:C], sin_t[:C], kv.cols, d.u, d.temperature, d.top_k, d.top_p]
        runner = self.runners.get((C, d.sort))
        if runner is None:
            try:
                runner = self._load(C, d.sort, inputs)
            except Exception as e:  # noqa: BLE001 -- any build failure: decode eagerly, as without compile
                self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                print(f"compile: could not build the compiled decode step ({self.failed}); decoding with the "
                      "eager fast path", file=sys.stderr)
                return None
        if self.weights is not f.w:  # the model was trained since: point the libraries at the new tensors
            self._point()
        # the flat inputs themselves: AOTICompiledModel.__call__ flattens and checks an argument tree every call
        logits, x, nxt, lp = runner.loader.boxed_run(inputs)
        return logits, (x if keep_hidden else None), ((nxt, lp) if draw is not None else None)

    def _constants(self) -> dict[str, torch.Tensor]:
        f = self.f
        flat = [t for layer in f.w for t in layer if isinstance(t, torch.Tensor)]
        return {**{f"w{i}": t for i, t in enumerate(flat)}, "embed": f.embed, "norm": f.norm[0], "head": f.head}

    def _point(self) -> None:
        """Every library reads the current weight tensors themselves (user-managed constants, no copy)."""
        constants = self._constants()
        for runner in self.runners.values():
            runner.load_constants(constants, check_full_update=True, user_managed=True)
        self.weights = self.f.w

    def key(self, C: int, sort: bool) -> str:
        """What the compiled library depends on: the graph's shapes, constants and code, and torch."""
        import hashlib
        import inspect

        f, cfg = self.f, self.f.model.config
        parts = [torch.__version__, f.n_heads, f.n_kv, f.head_dim, f.scaling, cfg.hidden_size, cfg.intermediate_size,
                 len(f.layers), f.embed.shape[0], [w[1] for w in f.w], [w[5] for w in f.w], f.norm[1], C, sort,
                 [(tuple(t.shape), t.stride()) for t in self._constants().values()],
                 str(f.embed.dtype), str(f.embed.device),
                 *(inspect.getsource(code) for code in (CompiledStep, _StepModule, sample_tokens, sampled_logprobs))]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]

    def _load(self, C: int, sort: bool, inputs: list[torch.Tensor]):
        path = cache_dir() / f"step-{self.key(C, sort)}.pt2"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.pt2")
            # distinct tensors for every input: export would trace two arguments given the same tensor as one
            args = tuple(t.clone() for t in inputs)
            print(f"compiling the decode step for a {C}-column cache (once: kept in {path.parent})", file=sys.stderr)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecations, not the caller's
                program = torch.export.export(_StepModule(self, sort), args)
                torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
            os.replace(tmp, path)  # whole or absent: another process may be reading the directory
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            runner = torch._inductor.aoti_load_package(str(path))
        self.runners[(C, sort)] = runner
        self._point()
        return runner

    def _pure(self, tokens, pos, K, V, w, embed, w_norm, head, cos_t, sin_t, cols, u, temp, top_k, top_p, sort: bool):
        f = self.f
        nh, nkv, d = f.n_heads, f.n_kv, f.head_dim
        B, dims, n_qk, C = tokens.shape[0], (embed.shape[1],), nh + nkv, K.shape[3]
        cos, sin = cos_t[pos].unsqueeze(1), sin_t[pos].unsqueeze(1)
        bias = torch.where(cols.unsqueeze(0) < pos.unsqueeze(1), 0.0, float("-inf"))  # the row's earlier columns
        bias = bias.unsqueeze(1).expand(B, nh, C).reshape(B * nh, 1, C)
        group = nh // nkv
        x = F.embedding(tokens, embed)
        ks, vs = [], []
        for li, (w_in, eps_in, w_qkv, w_o, w_post, eps_post, w_gu, w_down) in enumerate(w):
            qkv = torch.mm(F.rms_norm(x, dims, w_in, eps_in), w_qkv).view(B, 2 * n_qk + nkv, d)
            qk = torch.addcmul(qkv.narrow(1, 0, n_qk) * cos, qkv.narrow(1, n_qk + nkv, n_qk), sin)
            k, v = qk.narrow(1, nh, nkv), qkv.narrow(1, n_qk, nkv)
            ks.append(k)
            vs.append(v)
            keys, vals = K[li], V[li]  # (B, kv heads, C, d)
            if group > 1:
                keys, vals = keys.repeat_interleave(group, 1), vals.repeat_interleave(group, 1)
                k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            q = qk.narrow(1, 0, nh).reshape(B * nh, 1, d)
            s_old = torch.baddbmm(bias, q, keys.reshape(B * nh, C, d).transpose(1, 2), alpha=f.scaling)
            s_new = (q * k.reshape(B * nh, 1, d)).sum(-1, keepdim=True) * f.scaling
            p = torch.cat([s_old, s_new], -1).softmax(-1)
            a = torch.bmm(p.narrow(2, 0, C), vals.reshape(B * nh, C, d)) + p.narrow(2, C, 1) * v.reshape(B * nh, 1, d)
            x = torch.addmm(x, a.view(B, nh * d), w_o)
            gate, up = torch.mm(F.rms_norm(x, dims, w_post, eps_post), w_gu).chunk(2, -1)
            x = torch.addmm(x, F.silu(gate) * up, w_down)
        hidden = F.rms_norm(x, dims, w_norm, f.norm[1])
        logits = torch.mm(hidden, head)
        nxt = sample_tokens(logits, temp, top_k, top_p, u, sort=sort)  # the next token, as the eager path draws it
        lp = sampled_logprobs(logits, temp, nxt)
        K.index_copy_(3, pos, torch.stack(ks).unsqueeze(3))  # the new keys and values at column pos, in place
        V.index_copy_(3, pos, torch.stack(vs).unsqueeze(3))
        return logits, hidden, nxt, lp


class _StepModule(torch.nn.Module):
    """What torch.export traces: `CompiledStep._pure` with the weights as buffers, which become the
    library's constants (re-pointed at the live tensors after loading, so they never go stale)."""

    def __init__(self, step: CompiledStep, sort: bool):
        super().__init__()
        self.step, self.sort = [step], sort  # a list: not a submodule
        for name, t in step._constants().items():
            self.register_buffer(name, t.detach().clone())
        self.n = sum(1 for layer in step.f.w for t in layer if isinstance(t, torch.Tensor))

    def forward(self, tokens, pos, K, V, cos, sin, cols, u, temp, top_k, top_p):
        step = self.step[0]
        flat = iter([getattr(self, f"w{i}") for i in range(self.n)])
        w = [tuple(next(flat) if isinstance(t, torch.Tensor) else t for t in layer) for layer in step.f.w]
        return step._pure(tokens, pos, K, V, w, self.embed, self.norm, self.head, cos, sin, cols, u, temp, top_k, top_p,
                          self.sort)
