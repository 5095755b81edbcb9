"""Plain-text prompts for models without a chat template ('User: ...\nAssistant:')."""

from __future__ import annotations

from chatrlhf.lm.conversations import Conversation


# --- SFT vs base on held-out prompts ------------------------------------------------------------
def plain_prompt(messages: Conversation) -> str:
    """The base model never saw chat-template tokens, so it gets 'User: ...\nAssistant:' text."""
    lines = [f"{'Assistant' if m['role'] == 'assistant' else 'User'}: {m['content']}"
             for m in messages if m["role"] != "system"]
    return "\n".join(lines) + "\nAssistant:"

BASE_STOPS = ["\nUser:", "\n\n"]  # where a base-model continuation stops answering
