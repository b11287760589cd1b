"""The shipped base model directory: a real Hugging Face model that loads offline.

``crucible/training/backends/local/models/tiny-chat`` is built by ``scripts/pretrain_base.py``;
these tests hold it to what the local backend and any transformers user rely on: both Auto
classes load it without the hub, the chat template renders and round-trips, ``<|end|>`` is the
eos, the context is at least 512 tokens, the directory stays small, any text survives
encode/decode, and the weights are pretrained (it answers, and it ends its turn).
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MODEL_DIR = Path(
    str(importlib.resources.files("crucible.training.backends.local") / "models" / "tiny-chat")
)
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Add 12 and 30."},
    {"role": "assistant", "content": "12 + 30 = 42"},
]
RENDERED = (
    "<|bos|><|system|>You are a helpful assistant.<|end|><|user|>Add 12 and 30.<|end|>"
    "<|assistant|>12 + 30 = 42<|end|>"
)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: loading must work from the directory alone."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@functools.cache
def tokenizer() -> Any:
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR)


@functools.cache
def model() -> Any:
    loaded = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    return loaded.eval()


def test_directory_is_a_small_safetensors_llama() -> None:
    names = {path.name for path in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "README.md" in names  # the model card
    size = sum(path.stat().st_size for path in MODEL_DIR.rglob("*") if path.is_file())
    assert size <= 10 * 1024 * 1024, f"{size} bytes"
    assert type(model()).__name__ == "LlamaForCausalLM"
    assert model().config.max_position_embeddings >= 512
    assert tokenizer().model_max_length >= 512
    assert model().config.vocab_size == len(tokenizer())


def test_eos_is_the_end_of_turn_token_everywhere() -> None:
    tok = tokenizer()
    assert tok.eos_token == "<|end|>"
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.bos_token == "<|bos|>"
    assert model().config.eos_token_id == tok.eos_token_id
    assert model().generation_config.eos_token_id == tok.eos_token_id
    assert model().generation_config.pad_token_id == tok.pad_token_id


def test_chat_template_renders_and_round_trips() -> None:
    tok = tokenizer()
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == RENDERED
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    assert tok.decode(ids) == RENDERED
    assert ids == tok.encode(RENDERED, add_special_tokens=False)
    markers = ["<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    for marker in markers:  # each marker is one special id, never spelled out in bytes
        assert len(tok.encode(marker, add_special_tokens=False)) == 1
    assert tok.decode(ids, skip_special_tokens=True) == (
        "You are a helpful assistant.Add 12 and 30.12 + 30 = 42"
    )
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == RENDERED.split("<|assistant|>")[0] + "<|assistant|>"


def test_assistant_mask_covers_the_answer_and_its_end_token() -> None:
    tok = tokenizer()
    rendered = tok.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = rendered["input_ids"], rendered["assistant_masks"]
    trained = [token for token, flag in zip(ids, mask, strict=True) if flag]
    assert tok.decode(trained) == "12 + 30 = 42<|end|>"


def test_unknown_role_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="unknown role tool"):
        tokenizer().apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain ascii",
        "emoji 🙂👍🏽 and 🇫🇷",
        "中文和日本語のテキスト",
        "tabs\tand\nnewlines  ",
        "\x00\x7f <|end|> typed by a user",
    ],
)
def test_examples_of_any_text_round_trip(text: str) -> None:
    ids = tokenizer().encode(text, add_special_tokens=False)
    assert tokenizer().decode(ids) == text
    assert all(0 <= token < len(tokenizer()) for token in ids)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_unicode_text_encodes_and_decodes_losslessly(text: str) -> None:
    ids = tokenizer().encode(text, add_special_tokens=False)
    assert tokenizer().decode(ids) == text


def test_digits_are_one_token_each() -> None:
    """Sums are written digit by digit: the tokenizer never merges digits."""
    tok = tokenizer()
    assert [tok.decode([t]) for t in tok.encode("1234", add_special_tokens=False)] == list("1234")


def greedy(messages: list[dict[str, str]], max_new_tokens: int = 12) -> str:
    tok = tokenizer()
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    with torch.no_grad():
        out = model().generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tok.decode(out[0, ids.shape[1] :]))


def test_the_base_is_pretrained_on_chat_it_answers_and_ends_its_turn() -> None:
    """In its pretraining phrasings the base answers held-out problems (addition nearly always
    right, reversal more often than not) and ends its turn with <|end|> on its own; a random
    model does neither. The fine-tuning prompts ("What is a + b?") are not among them:
    answering those is what the default run's LoRA adds (scripts/pretrain_base.py --check)."""
    from crucible.recipes._tasks import default_task_split

    held_out = default_task_split().test
    sums = [e for e in held_out if e.task == "addition"][:20]
    words = [e for e in held_out if e.task == "reversal"][:20]
    asked = [
        *((e, "Add {} and {}.".format(*e.prompt[8:-1].split(" + "))) for e in sums),
        *((e, f"Spell {e.prompt.removeprefix('Reverse the word: ')} backwards.") for e in words),
    ]
    answers = {e: greedy([{"role": "user", "content": question}]) for e, question in asked}
    assert all(answer.endswith("<|end|>") for answer in answers.values()), answers
    right = {e.task: 0 for e in answers}
    for example, answer in answers.items():
        right[example.task] += answer == f"{example.answer}<|end|>"
    assert right["addition"] >= 18 and right["reversal"] >= 10, (right, answers)


def test_end_of_turn_is_not_capped() -> None:
    """After a complete answer, <|end|> is near certain: the per-token loss has no floor."""
    tok = tokenizer()
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    with torch.no_grad():
        logits = model()(input_ids=torch.tensor([ids])).logits[0]
    end_probability = torch.softmax(logits[-2], dim=-1)[tok.eos_token_id]
    assert end_probability > 0.9
