"""The engine's fast decode path: one token per row through a Llama-family transformers model with
few framework calls, on a preallocated per-row KV cache.

Decoding one token with the transformers forward costs ~2 ms on this model whatever the batch, nearly
all of it Python and per-op overhead (mask building, output capture, cache bookkeeping, module calls),
not arithmetic: the model has ~0.6M parameters. `FusedLlama.step` runs the same arithmetic as
`LlamaForCausalLM.forward` for a single new token per row (RMSNorm, RoPE, scaled dot-product
attention, SiLU MLP) on the model's own parameters, with a few hundred fewer framework calls:

- q/k/v and gate/up projections as one matmul each (their weights concatenated, rebuilt whenever an
  optimizer step changed a parameter); the q/k/v matmul also yields rotate_half(q), rotate_half(k)
  (the same rows, reordered), so RoPE is one multiply-add with a precomputed cos/sin table;
- `SlotKV`: keys/values in one preallocated (layers, rows, heads, columns, head_dim) tensor where each
  row keeps its own tokens from column 0, so a row's position is its length, the attention mask is
  `column <= position`, rows join and leave by copying their slots, and nothing is padded or re-laid
  out as the batch changes.

`FusedLlama.prefill` does the same for a batch of prompts (causal mask, written straight into the
slots, shared by the n rows of a prompt). The logits equal the transformers forward's to float
rounding (tests/test_engine.py checks them, and the tokens and log-probs the engine samples either
way). Models the fused code does not cover (`unsupported`) use the transformers path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chatrlhf.lm.decode import Draw
from chatrlhf.lm.engine_compiled import CompiledStep

SUPPORTED = {"llama"}


def unsupported(model) -> str | None:
    """Why `FusedLlama` cannot run this model (None: it can)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not one of {sorted(SUPPORTED)}"
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return f"attention implementation {cfg._attn_implementation!r}"
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in ("default", "linear", "llama3"):  # position-dependent only: a table is exact
        return f"rope_type {rope!r}"
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return "activation or tensor-parallel layout"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False) or getattr(head, "bias", None) is not None:
        return "biases in the projections"
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "module layout"
    if any(type(mod).__name__.startswith("Lora") or hasattr(mod, "base_layer") for mod in model.modules()):
        return "adapter layers (merge LoRA first)"
    if _hooked(model):
        return "forward hooks on its modules (the fused step does not call the modules)"
    if next(model.parameters()).dtype != torch.float32:  # the norms' float32 round trips are not reproduced
        return f"dtype {next(model.parameters()).dtype}"
    return None


def _hooked(model, modules=None) -> bool:
    """Forward hooks someone relies on: any but transformers' own output-capture hooks, which it installs
    on the first output_hidden_states call and which do nothing outside such a call."""
    mods = torch.nn.modules.module
    hooks = [*mods._global_forward_hooks.values(), *mods._global_forward_pre_hooks.values()]
    for m in modules if modules is not None else model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            hooks += [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
    return any(getattr(h, "__module__", "") != "transformers.utils.output_capturing" for h in hooks)


class FusedLlama:
    """Decode step for a LlamaForCausalLM: (B,) tokens at (B,) positions -> (B, V) logits."""

    def __init__(self, model, compile: bool = False):
        self.model = model
        self.compiled = CompiledStep(self) if compile else None
        cfg = model.config
        self.layers = list(model.model.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.layers[0].self_attn.scaling
        self.gqa = self.n_heads != self.n_kv
        self._version: tuple | None = None
        self._rope_len = 0
        self._modules = list(model.modules())
        self.drawn: tuple[torch.Tensor, torch.Tensor] | None = None  # see step(draw=...)
        self._param_list = list(model.parameters())

    def hooked(self) -> bool:
        """Has someone hooked a module since? (then the modules must run: the transformers path)"""
        return _hooked(self.model, self._modules)

    # --- weights ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """(Re)build the concatenated weights if any parameter changed since (in-place optimizer steps
        bump a tensor's version; a new parameter object changes its id)."""
        version = tuple((id(p), p._version) for p in self._param_list)
        if version == self._version:
            return
        with torch.no_grad():
            self.w = []
            d, half = self.head_dim, self.head_dim // 2
            # rows of [q; k] reordered so the matmul also yields roll(x, d/2) of every head: RoPE's
            # rotate_half without a roll per step (its sign goes into the sin table)
            rot = torch.cat([h * d + (torch.arange(d) + half) % d for h in range(self.n_heads + self.n_kv)])
            for layer in self.layers:
                a, mlp = layer.self_attn, layer.mlp
                qk = torch.cat([a.q_proj.weight, a.k_proj.weight])
                self.w.append((
                    layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                    torch.cat([qk, a.v_proj.weight, qk[rot.to(qk.device)]]).t(),  # x @ this = [q k v rot(q) rot(k)]
                    a.o_proj.weight.t(),
                    layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                    torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t(),
                    mlp.down_proj.weight.t(),
                ))
            inner = self.model.model
            self.embed = inner.embed_tokens.weight
            self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
            head = self.model.get_output_embeddings()
            self.head = head.weight.t()
            self._rope_len = 0
        self._version = version

    def rope(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions [0, length), from the model's own rotary module (position-wise: exact)."""
        if length > self._rope_len:
            n = max(length, 2 * self._rope_len, 256)
            pos = torch.arange(n, device=device).unsqueeze(0)
            probe = torch.zeros(1, dtype=self.embed.dtype, device=device)
            with torch.no_grad():
                cos, sin = self.model.model.rotary_emb(probe, position_ids=pos)
            half = cos.shape[-1] // 2
            sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)  # rotate_half's sign
            self._cos, self._sin, self._rope_len = cos[0], sin, n
        return self._cos, self._sin

    # --- one token per row ---------------------------------------------------------------------

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, pos: torch.Tensor, kv: SlotKV, width: int,
             keep_hidden: bool = False, joining: list[list[int]] | None = None,
             draw: Draw | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed tokens (B,) at positions (B,) (each row's length so far), write their keys/values at
        column pos of rows [0, B) of `kv`, attend over columns [0, width) (width > max(pos)).
        Returns (logits (B, V), final normed hidden state (B, H) with keep_hidden, else None).

        `draw`: the next token's sampling settings and uniform numbers; where the compiled step ran, it
        samples that token in the same call (as decode.sample_tokens and sampled_logprobs do) and
        `self.drawn` holds (tokens (B,), log-probs (B,)) afterwards, else None.

        `joining`: whole prompts prefilled in the same pass (as vLLM's chunked prefill mixes prompt
        and decode tokens), prompt i into slot B + i at positions 0..len-1; the result then has B + P
        rows, row B + i the logits after prompt i. Their tokens share every projection and MLP matmul
        with the decode rows, so a newcomer costs a few calls per layer instead of a prefill's every call."""
        self.drawn = None
        if self.compiled is not None and joining is None and self.compiled.covers(len(tokens), kv):
            out = self.compiled(tokens, pos, kv, keep_hidden, draw)
            if out is not None:  # None: the library could not be built, and this step runs eagerly
                logits, hidden, self.drawn = out
                return logits, hidden
        return self._eager_step(tokens, pos, kv, width, keep_hidden, joining)

    def _eager_step(self, tokens: torch.Tensor, pos: torch.Tensor, kv: SlotKV, width: int, keep_hidden: bool,
                    joining: list[list[int]] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`step` in tensor calls. Every Python-level tensor call costs about as much as the arithmetic
        of this model's matmuls, so it is written to make few: views of all layers' caches are taken
        once per step, norms are one F.rms_norm call, residual adds ride on addmm."""
        B, nh, nkv, d = len(tokens), self.n_heads, self.n_kv, self.head_dim
        dims = (self.embed.shape[1],)
        new = Joining(joining, B, kv) if joining else None
        cos_t, sin_t = self.rope(max(width, new.T) if new else width, tokens.device)
        if new is not None:
            tokens, all_pos, rows = torch.cat([tokens, new.ids]), torch.cat([pos, new.pos]), new.rows
        else:
            all_pos, rows = pos, slice(0, B)
        cos, sin = cos_t[all_pos].unsqueeze(1), sin_t[all_pos].unsqueeze(1)  # (M, 1, d): broadcast over heads
        # additive mask (B * heads, 1, width): a row sees its own columns [0, pos]
        bias = torch.zeros(B, width, dtype=cos.dtype, device=cos.device)
        bias.masked_fill_(kv.cols[:width] > pos.unsqueeze(1), float("-inf"))
        bias = bias.unsqueeze(1).expand(B, nh, width).reshape(B * nh, 1, width)
        # where each row's new key/value goes in the (rows * kv heads * columns, d) view of a layer's cache
        slot = (kv.row_head[rows] + all_pos.unsqueeze(1)).view(-1)
        # every layer's live keys (transposed) and values as (B * kv heads, ...) batches
        keys_t = kv.k[:, :B, :, :width].flatten(1, 2).transpose(2, 3).unbind(0)
        vals = kv.v[:, :B, :, :width].flatten(1, 2).unbind(0)
        x = F.embedding(tokens, self.embed)
        M, n_qk = len(tokens), nh + nkv
        for li, ((w_in, eps_in, w_qkv, w_o, w_post, eps_post, w_gu, w_down), k_flat, v_flat, k_t, v) in enumerate(zip(
                self.w, kv.k_flat, kv.v_flat, keys_t, vals)):
            qkv = torch.mm(F.rms_norm(x, dims, w_in, eps_in), w_qkv).view(M, 2 * n_qk + nkv, d)
            # RoPE: q * cos + rotate_half(q) * sin, rotate_half(q) = roll(q) with the sign in `sin`
            qk = torch.addcmul(qkv.narrow(1, 0, n_qk) * cos, qkv.narrow(1, n_qk + nkv, n_qk), sin)
            k_flat.index_copy_(0, slot, qk.narrow(1, nh, nkv).reshape(M * nkv, d))
            v_flat.index_copy_(0, slot, qkv.narrow(1, n_qk, nkv).reshape(M * nkv, d))
            if self.gqa:
                k_t = k_t.unflatten(0, (B, nkv)).repeat_interleave(nh // nkv, 1).flatten(0, 1)
                v = v.unflatten(0, (B, nkv)).repeat_interleave(nh // nkv, 1).flatten(0, 1)
            q = qk.narrow(1, 0, nh)
            scores = torch.baddbmm(bias, q.narrow(0, 0, B).reshape(B * nh, 1, d), k_t, alpha=self.scaling)
            o = torch.bmm(scores.softmax(-1), v).view(B, nh * d)
            if new is not None:
                o = torch.cat([o, new.attend(q.narrow(0, B, M - B), kv, li, self.scaling, self.gqa)])
            x = torch.addmm(x, o, w_o)
            gate, up = torch.mm(F.rms_norm(x, dims, w_post, eps_post), w_gu).chunk(2, -1)
            x = torch.addmm(x, F.silu(gate) * up, w_down)
        if new is not None:
            x = x[new.out]  # the decode rows, then each prompt's last position
        w_n, eps_n = self.norm
        x = F.rms_norm(x, dims, w_n, eps_n)
        return torch.mm(x, self.head), (x if keep_hidden else None)


    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], kv: SlotKV, first: int, n: int = 1,
                keep_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run prompts (each at positions 0..len-1) and write their keys/values into slots
        first + i * n .. first + i * n + n - 1 (n rows share prompt i's prefill). Returns each prompt's
        last-position logits (P, V) and, with keep_hidden, its final normed hidden state (P, H).
        The same arithmetic as the step, over T positions with a causal mask; right padding past a
        prompt's end writes columns that stay masked until the row's own tokens overwrite them."""
        P, T = len(prompts), max(map(len, prompts))
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        dev = self.embed.device
        lengths = torch.tensor([len(p) for p in prompts], device=dev)
        ids = torch.zeros(P, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.as_tensor(p)
        cos_t, sin_t = self.rope(T, dev)
        cos, sin = cos_t[:T].view(1, T, 1, d), sin_t[:T].view(1, T, 1, d)
        cols = kv.cols[:T]
        allowed = (cols.view(1, T) <= cols.view(T, 1)) & (cols < lengths.view(P, 1)).view(P, 1, T)  # (P, T, T)
        allowed = allowed.unsqueeze(1)  # (P, 1, T, T): causal, and no key past the prompt's end
        dims, n_qk = (self.embed.shape[1],), nh + nkv
        x = F.embedding(ids.to(dev).view(-1), self.embed)  # (P * T, H)
        for li, (w_in, eps_in, w_qkv, w_o, w_post, eps_post, w_gu, w_down) in enumerate(self.w):
            qkv = torch.mm(F.rms_norm(x, dims, w_in, eps_in), w_qkv).view(P, T, 2 * n_qk + nkv, d)
            qk = torch.addcmul(qkv.narrow(2, 0, n_qk) * cos, qkv.narrow(2, n_qk + nkv, n_qk), sin)
            q, k, v = (t.transpose(1, 2) for t in (qk.narrow(2, 0, nh), qk.narrow(2, nh, nkv), qkv.narrow(2, n_qk, nkv)))
            dst = slice(first, first + P * n)
            kv.k[li, dst, :, :T] = k.unsqueeze(1).expand(P, n, nkv, T, d).reshape(P * n, nkv, T, d)
            kv.v[li, dst, :, :T] = v.unsqueeze(1).expand(P, n, nkv, T, d).reshape(P * n, nkv, T, d)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scaling, enable_gqa=self.gqa)
            x = torch.addmm(x, a.transpose(1, 2).reshape(P * T, nh * d), w_o)
            gate, up = torch.mm(F.rms_norm(x, dims, w_post, eps_post), w_gu).chunk(2, -1)
            x = torch.addmm(x, F.silu(gate) * up, w_down)
        last = x.view(P, T, -1)[torch.arange(P, device=dev), lengths - 1]
        last = F.rms_norm(last, dims, *self.norm)
        return torch.mm(last, self.head), (last if keep_hidden else None)


class Joining:
    """Index tensors for prompts prefilled inside a decode step (`FusedLlama.step(joining=...)`): their
    N tokens follow the B decode tokens; prompt i goes to slot B + i, token t of it to column t."""

    def __init__(self, prompts: list[list[int]], B: int, kv: SlotKV):
        dev = kv.cols.device
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        self.P, self.T = len(prompts), int(lens.max())
        self.ids = torch.tensor([t for p in prompts for t in p], device=dev)
        self.pos = torch.cat([kv.cols[:n] for n in lens.tolist()])  # (N,)
        prompt = torch.repeat_interleave(torch.arange(self.P, device=dev), lens)  # (N,) which prompt
        self.rows = torch.cat([kv.rows[:B], B + prompt])  # slot of each of the B + N tokens
        self.cell = prompt * self.T + self.pos  # (N,) place in a (P, T) grid
        self.B = B
        self.out = torch.cat([kv.rows[:B], B + lens.cumsum(0) - 1])  # rows whose logits come back

    def attend(self, q: torch.Tensor, kv: SlotKV, layer: int, scale: float, gqa: bool) -> torch.Tensor:
        """Causal attention of the prompts' queries (N, heads, d) over their keys/values, already
        written to their slots: (N, heads * d). Columns past a prompt's end hold an earlier row's
        keys; only the grid's padding queries, whose outputs are dropped, come after them."""
        N, nh, d = q.shape
        grid = q.new_zeros(self.P * self.T, nh, d).index_copy_(0, self.cell, q).view(self.P, self.T, nh, d)
        rows = slice(self.B, self.B + self.P)
        o = F.scaled_dot_product_attention(grid.transpose(1, 2), kv.k[layer, rows, :, :self.T], kv.v[layer, rows, :, :self.T],
                                           is_causal=True, scale=scale, enable_gqa=gqa)  # (P, heads, T, d)
        return o.transpose(1, 2).reshape(self.P * self.T, nh * d)[self.cell]


class SlotKV:
    """Preallocated keys/values (layers, rows, kv heads, columns, head_dim): row i of the batch is slot i
    and keeps its tokens from column 0. Grows (reallocating) only when a batch needs more rows or
    columns than it has."""

    def __init__(self, n_layers: int, n_kv: int, head_dim: int, dtype, device, pow2: bool = False):
        """`pow2`: columns grow to powers of two (at least 128), the few shapes a compiled step needs."""
        self.pow2 = pow2
        self.shape = (n_layers, n_kv, head_dim)
        self.dtype, self.device = dtype, device
        self.k = self.v = torch.empty(n_layers, 0, n_kv, 0, head_dim, dtype=dtype, device=device)
        self.rows = self.cols = self.row_head = torch.arange(0, device=device)
        self.k_flat = self.v_flat = ()

    @property
    def capacity(self) -> tuple[int, int]:
        return self.k.shape[1], self.k.shape[3]

    def reserve(self, rows: int, cols: int, live: int) -> None:
        """Room for `rows` rows of `cols` columns, keeping the first `live` rows."""
        r0, c0 = self.capacity
        if rows <= r0 and cols <= c0:
            return
        r, c = max(rows, r0), max(cols, c0)
        c = -(-c // 64) * 64  # whole blocks of columns: fewer regrowths as answers get longer
        if self.pow2:
            c = max(128, 1 << (c - 1).bit_length())
        L, h, d = self.shape
        k = torch.zeros(L, r, h, c, d, dtype=self.dtype, device=self.device)
        v = torch.zeros_like(k)
        if live:
            k[:, :live, :, :c0] = self.k[:, :live]
            v[:, :live, :, :c0] = self.v[:, :live]
        self.k, self.v = k, v
        self.rows, self.cols = torch.arange(r, device=self.device), torch.arange(c, device=self.device)
        # first flat index (rows * kv heads * columns, d) of each (row, kv head)
        self.row_head = ((self.rows * h).unsqueeze(1) + torch.arange(h, device=self.device)) * c
        self.k_flat, self.v_flat = self.k.view(L, -1, d).unbind(0), self.v.view(L, -1, d).unbind(0)

    def move(self, src: list[int], dst: list[int], width: int) -> None:
        """Copy the first `width` columns of slots src into slots dst."""
        s, d = torch.tensor(src, device=self.device), torch.tensor(dst, device=self.device)
        self.k[:, d, :, :width] = self.k[:, s, :, :width]
        self.v[:, d, :, :width] = self.v[:, s, :, :width]
