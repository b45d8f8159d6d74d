"""kvlab.chat against jinja2 rendering the GGUF's own chat template."""

from __future__ import annotations

import json

import jinja2
import pytest

from builder.tokenizer_data import build_tokenizer
from kvlab.chat import DEFAULT_SYSTEM, TEMPLATE, render_chat, supports_template
from kvlab.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(build_tokenizer().read_text(encoding="utf-8"))


def jinja_render(template: str, messages, add_generation_prompt: bool, hf_env: bool) -> str:
    # transformers renders chat templates with trim_blocks and lstrip_blocks; plain
    # jinja2 does not. The template has no whitespace between tags, so both must agree.
    env = jinja2.Environment(trim_blocks=hf_env, lstrip_blocks=hf_env)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


CONVERSATIONS = {
    "empty": [],
    "user": [{"role": "user", "content": "What is the capital of Australia?"}],
    "system_user": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Write a haiku\nabout caches."},
    ],
    "system_later": [  # only a *first* system message replaces the default one
        {"role": "user", "content": "a"},
        {"role": "system", "content": "b"},
    ],
    "odd_content": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "  spaces, \ttabs,\n\nnewlines, ½, 中文, 😀 "},
        {"role": "user", "content": "literal <|im_end|> inside {{ braces }} {% raw %}"},
    ],
    "custom_role": [{"role": "tool", "content": "42"}],
}


def test_the_gguf_template_is_the_one_implemented(data):
    assert data["chat_template"] == TEMPLATE
    assert supports_template(data["chat_template"]) and not supports_template("{{ x }}")


@pytest.mark.parametrize("hf_env", [False, True], ids=["jinja2", "transformers-env"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", CONVERSATIONS)
def test_matches_jinja(data, name, add_generation_prompt, hf_env):
    msgs = CONVERSATIONS[name]
    want = jinja_render(data["chat_template"], msgs, add_generation_prompt, hf_env)
    assert render_chat(msgs, add_generation_prompt=add_generation_prompt) == want


def test_default_system_message():
    text = render_chat([{"role": "user", "content": "hi"}])
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_rejects_non_string_content():
    with pytest.raises(TypeError):
        render_chat([{"role": "user", "content": None}])
    with pytest.raises(TypeError):
        render_chat([{"content": "no role"}])


def test_encodes_to_control_tokens(data):
    tok = Tokenizer.from_json(data)
    ids = tok.encode(render_chat([{"role": "user", "content": "hi"}]))
    assert ids[0] == tok.special["<|im_start|>"] and ids.count(tok.eos_id) == 2
    tail = [tok.special["<|im_start|>"], *tok.encode("assistant\n")]
    assert ids[-len(tail):] == tail
