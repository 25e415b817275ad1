"""Prompts seen through a tokenizer's chat template, as an instruct model was trained to read them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple
from rl4lms.errors import ChatTemplateError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SLOT = "\x00rl4lms-prompt\x00"


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def folder_has_chat_template(folder: Path) -> Optional[bool]:
    """Whether the tokenizer saved in ``folder`` has a chat template, read from its files without
    loading it; None when the folder holds no tokenizer config."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return None


class ChatPrompt:
    """Encodes a prompt text as the user turn of a chat (after an optional system turn), ending with
    the template's assistant header so that the model's next tokens are its reply.

    Args:
        tokenizer: a tokenizer with a chat template.
        system_prompt: the system turn's text (default: none, and the template's own default if it has one).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, system_prompt: Optional[str] = None) -> None:
        if not has_chat_template(tokenizer):
            raise ChatTemplateError(f"tokenizer '{getattr(tokenizer, 'name_or_path', '')}' has no chat template: "
                                    "set env.args.chat_template: false (and no system_prompt), or use an instruct "
                                    "model's tokenizer")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        before, after = self.format(_SLOT).split(_SLOT)
        self.frame: Tuple[List[int], List[int]] = (self._ids(before), self._ids(after))
        """Token ids of the template around the user's text (kept whole when a prompt is cut)."""

    def messages(self, text: str) -> List[Dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return system + [{"role": "user", "content": text}]

    def format(self, text: str) -> str:
        """The prompt text as the chat template writes it, assistant header included."""
        return self.tokenizer.apply_chat_template(self.messages(text), add_generation_prompt=True, tokenize=False)

    def _ids(self, text: str) -> List[int]:
        # The template writes its special tokens itself: the tokenizer must not add more.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokens(self, text: str) -> List[int]:
        """Token ids of the templated prompt, uncut."""
        return self._ids(self.format(text))

    def encode(self, text: str, max_length: int, truncation_side: str = "left") -> Tuple[List[int], bool]:
        """Token ids of the templated prompt and whether it was cut to ``max_length``: an over-long
        prompt loses user text on ``truncation_side``, never the template's tokens."""
        ids = self.tokens(text)
        if len(ids) <= max_length:
            return ids, False
        before, after = self.frame
        room = max_length - len(before) - len(after)
        if room < 1:
            raise ChatTemplateError(f"env.args.max_prompt_length is {max_length} tokens, but the chat template "
                                    f"alone takes {len(before) + len(after)}: raise max_prompt_length")
        content = self._ids(text)
        content = content[-room:] if truncation_side == "left" else content[:room]
        return before + content + after, True
