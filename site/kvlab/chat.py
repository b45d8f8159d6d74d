"""SmolLM2's chat template, rendered in plain Python (no Jinja2 at run time, e.g. under Pyodide).

The GGUF carries the template as Jinja (``TEMPLATE`` below, copied verbatim; the
builder also copies it into ``tokenizer.json``). It is ChatML: each message becomes

    <|im_start|>{role}\\n{content}<|im_end|>\\n

preceded by a default system message when the first message is not a system one,
and followed by ``<|im_start|>assistant\\n`` when a reply is wanted.
tests/kvlab/test_chat.py renders ``TEMPLATE`` with jinja2 and checks this module
gives the same string.
"""

from __future__ import annotations

__all__ = ["render_chat", "supports_template", "TEMPLATE", "DEFAULT_SYSTEM"]

# The GGUF's tokenizer.chat_template, verbatim.
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def supports_template(template: str | None) -> bool:
    """Whether ``render_chat`` renders ``template`` (a tokenizer's ``chat_template``)."""
    return template == TEMPLATE


def _turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def render_chat(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...]).

    Roles are not checked (the template does not check them either); role and
    content must be strings, as Jinja's ``+`` would fail on anything else.
    The result contains the control tokens as text: encode it with ``allow_special``.
    """
    for m in messages:
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"a chat message needs string 'role' and 'content', got {m!r}")
    parts = []
    # `loop.first and messages[0]['role'] != 'system'`: only when there is a first message.
    if messages and messages[0]["role"] != "system":
        parts.append(_turn("system", DEFAULT_SYSTEM))
    parts += [_turn(m["role"], m["content"]) for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
