"""Byte-level BPE trained with `tokenizers`, wrapped as a PreTrainedTokenizerFast with a chat template.

The saved directory loads with `AutoTokenizer.from_pretrained(dir)` and supports
`apply_chat_template(messages, add_generation_prompt=True)`, so the embedded model and any
Hugging Face model go through the same code path in SFT, RM, PPO and chat.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]

# ChatML-like: each turn is <|role|>content<|end|>; the assistant turn ends with <|end|> too, and
# <|end|> doubles as the generation stop (eos) token. `{% generation %}` marks assistant tokens so
# `return_assistant_tokens_mask=True` gives the SFT loss mask straight from the template.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# The turns written as the pre-training corpus writes its chat logs ("User: ...\nAssistant: ..."), so
# what pre-training learnt from them carries over to the chat model; the assistant turn still ends
# with <|end|> (the stop token and the reward model's read-out). tokenizer.chat_format=corpus.
CORPUS_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "Assistant:{% generation %} {{ message['content'] }}<|end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _near_answer(plain: str, line: str) -> str:
    """The plain template with the system message (the last one, if several) written as `line` right
    before every assistant turn and the generation prompt, and nowhere else."""
    capture = ("{% set ns = namespace(system='') %}{% for message in messages %}{% if message['role'] == 'system' %}"
               "{% set ns.system = message['content'] %}{% endif %}{% endfor %}")
    near = plain.replace("{{ bos_token }}", "{{ bos_token }}" + capture, 1)
    line = "{% if ns.system %}" + line + "{% endif %}"
    near = near.replace("{% if message['role'] == 'assistant' %}", "{% if message['role'] == 'assistant' %}" + line, 1)
    near = near.replace("{% else %}", "{% elif message['role'] != 'system' %}", 1)
    return near.replace("{% if add_generation_prompt %}", "{% if add_generation_prompt %}" + line, 1)


# The same layout with the system message (the last one, if several) written right before every
# assistant turn instead of first. A model this small reads a line a fixed number of tokens back, not
# one at the head of a long context (bench/copy_probe.py): with sft.group_line_near_answer a
# group-conditioned SFT model is trained and served with this template, so the group line sits next
# to the answer it should shape. A model trained without system messages keeps CHAT_TEMPLATE: for it
# a line next to the answer would read as the user's words.
SYSTEM_NEAR_ANSWER_TEMPLATE = _near_answer(CHAT_TEMPLATE, "<|system|>{{ ns.system }}<|end|>")
# The corpus layout with the system message (the last one, if several) written right before every
# assistant turn ("User: ...\nSystem: ...\nAssistant: ..."), as SYSTEM_NEAR_ANSWER_TEMPLATE is to CHAT_TEMPLATE.
CORPUS_SYSTEM_NEAR_ANSWER_TEMPLATE = _near_answer(CORPUS_CHAT_TEMPLATE, "System: {{ ns.system }}\n")


def _before_last_answer(near: str) -> str:
    """A near-answer template that writes the system message before the last answer only (the one
    trained on, or asked for by the generation prompt): the earlier turns of a conversation read as
    they were said, and its first question stays as near its answers as without a system message."""
    last = ("{% for message in messages %}{% if message['role'] == 'assistant' and not add_generation_prompt %}"
            "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}")
    near = near.replace("namespace(system='')", "namespace(system='', last=-1)", 1)
    near = near.replace("{% endfor %}", "{% endfor %}" + last, 1)
    return near.replace("{% if ns.system %}", "{% if ns.system and loop.index0 == ns.last %}", 1)


SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE = _before_last_answer(SYSTEM_NEAR_ANSWER_TEMPLATE)
CORPUS_SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE = _before_last_answer(CORPUS_SYSTEM_NEAR_ANSWER_TEMPLATE)

# tokenizer.chat_format -> the embedded tokenizer's template
CHAT_FORMATS = {"corpus": CORPUS_CHAT_TEMPLATE, "roles": CHAT_TEMPLATE}
# sft.group_line_turns -> an embedded template -> the same layout with the system message next to each answer
# ("every") or next to the last answer only ("last")
NEAR_ANSWER = {"every": {CHAT_TEMPLATE: SYSTEM_NEAR_ANSWER_TEMPLATE, CORPUS_CHAT_TEMPLATE: CORPUS_SYSTEM_NEAR_ANSWER_TEMPLATE},
               "last": {CHAT_TEMPLATE: SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE,
                        CORPUS_CHAT_TEMPLATE: CORPUS_SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE}}

# For a user's tokenizer that has no chat template: the same turn layout, written as plain text and
# ended with the model's own eos token, so SFT/PPO/chat work unchanged on any causal LM.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def ensure_chat_template(tokenizer):
    """Give a tokenizer without a chat template the fallback one (kept as is when it has one)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def system_near_answer(tokenizer, turns: str = "every") -> bool:
    """Give the embedded tokenizer the template that writes the system message next to every answer
    (`turns="every"`) or the last one ("last"), True; a user's tokenizer keeps its own template (False)."""
    near = NEAR_ANSWER[turns]
    if tokenizer.chat_template in near.values():
        return True
    if tokenizer.chat_template not in near:
        return False
    tokenizer.chat_template = near[tokenizer.chat_template]
    return True


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """System messages joined into the start of the first user turn (what Mistral's and Llama 2's
    own chat code does for templates that have no system role)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    first_user = next((m for m in rest if m["role"] == "user"), None)
    if first_user is None:
        return [{"role": "user", "content": system}, *rest]
    first_user["content"] = f"{system}\n\n{first_user['content']}"
    return rest


class ChatTemplateError(ValueError):
    """The tokenizer's chat template refused a conversation."""


def apply_template(tokenizer, messages: list[dict[str, str]], **kwargs):
    """`tokenizer.apply_chat_template`, except that a template which rejects system messages (it
    raises, as the [INST] templates do) gets the system prompt folded into the first user turn,
    instead of losing the conversation to an exception."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except TemplateError as e:
        first = e
    if any(m["role"] == "system" for m in messages):
        try:
            return tokenizer.apply_chat_template(fold_system(messages), **kwargs)
        except TemplateError as e:
            first = e
    roles = ", ".join(m["role"] for m in messages)
    raise ChatTemplateError(f"the tokenizer's chat template rejected a conversation with roles [{roles}]: {first}. "
                            "Most templates need user and assistant turns to alternate, starting with the user") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2,
                    chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it for transformers with `chat_template`."""
    tok = Tokenizer(models.BPE())
    # every text segment (also the one after a role token) starts a word with a space, so a reply's
    # first word is the same token as in running pre-training text: ' Hello', not 'H' 'ell' 'o'
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok, chat_template)


def wrap(tok: Tokenizer, chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token="<|end|>",  # the end of an assistant turn is where generation stops
        pad_token=PAD,
        additional_special_tokens=[EOS, *[t for t in ROLE_TOKENS if t != "<|end|>"]],
    )
    fast.chat_template = chat_template
    fast.padding_side = "left"  # decoder-only generation pads on the left
    fast.model_max_length = 1_000_000
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    return out


def document_eos(tokenizer) -> int:
    """Token that separates pre-training documents (<|eos|> for ours, the model's eos otherwise)."""
    tid = tokenizer.convert_tokens_to_ids(EOS)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
        return tid
    return tokenizer.eos_token_id
