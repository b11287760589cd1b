"""Build the shipped base model ``crucible/tiny-chat``: a Hugging Face model directory.

    python scripts/pretrain_base.py           # tokenizer + pretraining, writes the directory
    python scripts/pretrain_base.py --check   # LoRA fine-tune it (and a random twin), exact match

Output: ``crucible/training/backends/local/models/tiny-chat/``, loadable offline with
``AutoTokenizer.from_pretrained(path)`` and ``AutoModelForCausalLM.from_pretrained(path)``:

- ``tokenizer.json``: byte-level BPE built with the ``tokenizers`` library (the 256-byte initial
  alphabet, so any text encodes and decodes losslessly; digits always split one per token, so
  sums are written digit by digit), merges trained on the corpus below, plus the special tokens
  ``<|pad|> <|bos|> <|end|> <|system|> <|user|> <|assistant|>``.
- ``tokenizer_config.json``: bos/eos/pad, and a Jinja ``chat_template`` that renders
  ``<|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>`` (the same text as
  crucible's own ``crucible`` renderer). ``<|end|>`` ends every turn and every document: it is the
  eos token. Assistant turns sit in ``{% generation %}`` blocks, so
  ``return_assistant_tokens_mask=True`` marks the tokens to train on.
- ``config.json`` + ``model.safetensors``: a tiny ``LlamaForCausalLM`` (RoPE, SwiGLU, RMSNorm),
  float32, context 512 tokens.

Corpus: the train side of the default tasks (``crucible.recipes._tasks``, split seed 0: 2-digit
addition and reversal of made-up words), so held-out problems are never seen. Each train problem
appears as plain text (``<|bos|>12 + 30 = 42<|end|>``) and inside chat conversations rendered by
the chat template (optional system message, one to three turns, phrasings that differ from the
fine-tuning prompts, answers bare or in a sentence). Because the model is pretrained on
conversations, ``<|end|>`` after an answer is learned in pretraining: fine-tuning is not capped
by the head.

Deterministic under ``--seed`` with a fixed thread count (``--threads``, default 2): the same
command gives bitwise-identical files on the same torch/tokenizers build. Nothing is downloaded.

``--check`` measures the point of the base: LoRA (peft; rank 16, alpha 32, attention and MLP
projections) fine-tuned with the defaults of ``python -m crucible.run`` (120 steps of 64
conversations, Adam lr 3e-3, cosine with 10 warmup steps, clip 1.0, loss on the answer) on the
shipped base and on a randomly initialised twin, then greedy exact match on 200 held-out problems.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from crucible.recipes._tasks import TaskExample, default_task_split

MODEL_NAME = "crucible/tiny-chat"
DEFAULT_OUTPUT = (
    Path(__file__).resolve().parent.parent / "crucible/training/backends/local/models/tiny-chat"
)
PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = (PAD, BOS, END, *(f"<|{role}|>" for role in ROLES))
CONTEXT = 512

# One line of Jinja per construct; every tag trims whitespace, so the rendered text is exactly
# the markers and the contents. `generation` marks the assistant tokens (content and <|end|>).
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown role ' ~ message['role'] ~ '; known: system, user, "
    "assistant') -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] ~ '<|end|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] ~ '<|end|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

# Chat phrasings for pretraining: none is a fine-tuning prompt ("What is a + b?", "Reverse the
# word: w"), so the default run still has something to learn. Some answers are sentences, some
# are bare (the answer right after <|assistant|>, as fine-tuning wants it): with sentences
# only, the model learns to restate the operands first and computes badly across the chat
# markers, and LoRA cannot unlearn that in the default run's 120 steps (1-2% exact match).
SYSTEM_PROMPTS = (None, None, "You are a helpful assistant.", "Answer briefly.", "Be exact.")
ADDITION_CHATS = (
    ("Add {a} and {b}.", "{c}"),
    ("{a} plus {b}?", "{c}"),
    ("Compute {a} + {b}.", "The sum is {c}."),
    ("What do {a} and {b} add up to?", "{a} + {b} = {c}"),
)
REVERSAL_CHATS = (
    ("Spell {w} backwards.", "{r}"),
    ("What is {w} reversed?", "{r}"),
    ("Reverse this: {w}", "Reversed: {r}"),
    ("Write {w} from the last letter to the first.", "{w} backwards is {r}"),
)


# ---- corpus -------------------------------------------------------------------------------


def chat_turn(example: TaskExample, rng: random.Random) -> list[dict[str, str]]:
    if example.task == "addition":
        a, b = example.prompt.removeprefix("What is ").removesuffix("?").split(" + ")
        user, assistant = rng.choice(ADDITION_CHATS)
        fields = {"a": a, "b": b, "c": example.answer}
    else:
        user, assistant = rng.choice(REVERSAL_CHATS)
        fields = {"w": example.prompt.removeprefix("Reverse the word: "), "r": example.answer}
    return [
        {"role": "user", "content": user.format(**fields)},
        {"role": "assistant", "content": assistant.format(**fields)},
    ]


def conversations(train: Sequence[TaskExample], seed: int) -> list[list[dict[str, str]]]:
    """One conversation per train problem: an optional system message, then that problem and
    up to two more (random train problems) as user/assistant turns."""
    rng = random.Random(f"{seed}/chats")
    result = []
    for example in train:
        system = rng.choice(SYSTEM_PROMPTS)
        messages = [] if system is None else [{"role": "system", "content": system}]
        others = [rng.choice(train) for _ in range(rng.choice((0, 0, 1, 2)))]
        for turn in (example, *others):
            messages.extend(chat_turn(turn, rng))
        result.append(messages)
    return result


def corpus_texts(seed: int) -> tuple[list[str], list[list[dict[str, str]]]]:
    """Plain texts and conversations, all from the train side of split seed 0."""
    train = default_task_split(split_seed=0).train
    plain = [text for example in train for text in example.plain_texts()]
    return plain, conversations(train, seed)


# ---- tokenizer ----------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Byte-level BPE: 256 byte symbols, merges learned from ``texts``, digits always alone.

    Merges need ``min_frequency`` occurrences: the template words merge, while letter pairs of
    the made-up words (each a few hundred times) stay single letters, which keeps reversal a
    letter-by-letter task."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": END,
        "pad_token": PAD,
        "extra_special_tokens": [f"<|{role}|>" for role in ROLES],
        "model_max_length": CONTEXT,
        "clean_up_tokenization_spaces": False,  # lossless decode: no space "clean-up"
        "add_bos_token": False,  # the chat template writes <|bos|>
        "chat_template": CHAT_TEMPLATE,
    }


def write_tokenizer(tokenizer: Tokenizer, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(output / "tokenizer.json"))
    text = json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n"
    (output / "tokenizer_config.json").write_text(text, encoding="utf-8")


# ---- model --------------------------------------------------------------------------------


def model_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=CONTEXT,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )


def new_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)  # transformers initialises from the global generator
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def documents(tokenizer: PreTrainedTokenizerBase, seed: int) -> list[list[int]]:
    plain, chats = corpus_texts(seed)
    docs = [tokenizer.encode(BOS + text + END, add_special_tokens=False) for text in plain]
    for messages in chats:
        docs.append(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    return docs


def packed_rows(docs: list[list[int]], length: int, rng: random.Random) -> torch.Tensor:
    """One epoch: documents shuffled, concatenated and cut into rows of ``length + 1`` tokens
    (rows span the whole context, so every position up to ``length`` is trained)."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    stream = [token for index in order for token in docs[index]]
    rows = len(stream) // (length + 1)
    return torch.tensor(stream[: rows * (length + 1)]).view(rows, length + 1)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    plain, chats = corpus_texts(args.seed)
    bpe_texts = plain + [m["content"] for chat in chats for m in chat] + list(SYSTEM_PROMPTS[2:])
    write_tokenizer(train_tokenizer(bpe_texts, args.vocab_size, args.min_frequency), args.output)
    tokenizer = AutoTokenizer.from_pretrained(args.output)
    docs = documents(tokenizer, args.seed)
    model = new_model(model_config(tokenizer), args.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01, foreach=False
    )
    rng = random.Random(args.seed)
    params = sum(p.numel() for p in model.parameters())
    tokens = sum(map(len, docs))
    print(
        f"pretraining {MODEL_NAME}: {params} params, vocab {len(tokenizer)}, {len(docs)} "
        f"documents ({tokens} tokens), {args.steps} steps of {args.batch_size}x{CONTEXT}",
        flush=True,
    )
    rows, cursor = packed_rows(docs, CONTEXT, rng), 0
    model.train()
    for step in range(args.steps):
        if cursor + args.batch_size > len(rows):
            rows, cursor = packed_rows(docs, CONTEXT, rng), 0
        batch = rows[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - started
            print(f"step {step:5d}  loss {loss.item():.4f}  {elapsed:7.1f}s", flush=True)
    model.save_pretrained(args.output, safe_serialization=True)
    write_model_card(args, params, len(tokenizer), tokens, loss.item())
    for path in sorted(args.output.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"wrote {path.name:24s} {path.stat().st_size:9d} bytes  sha256 {digest}")
    print(f"took {time.perf_counter() - started:.1f}s with {args.threads} threads")
    return 0


def write_model_card(
    args: argparse.Namespace, params: int, vocab: int, tokens: int, loss: float
) -> None:
    card = MODEL_CARD.format(
        params=params, vocab=vocab, tokens=tokens, loss=loss, steps=args.steps,
        batch=args.batch_size, context=CONTEXT, lr=args.lr, seed=args.seed,
        threads=args.threads, template=CHAT_TEMPLATE, specials=" ".join(SPECIAL_TOKENS),
    )  # fmt: skip
    (args.output / "README.md").write_text(card, encoding="utf-8")


MODEL_CARD = """\
# crucible/tiny-chat

The base model shipped with Crucible's local backend: a tiny chat model pretrained on two toy
tasks (2-digit addition, spelling made-up words backwards), the starting point of the default
LoRA fine-tuning run (`scripts/pretrain_base.py --check` measures how well that learns). A
test fixture, not a language model.

- **Architecture**: `LlamaForCausalLM` (transformers), 2 layers, hidden size 128, 4 attention
  heads, SwiGLU MLP 384, RMSNorm, RoPE (theta 10000), context {context} tokens, untied output
  layer; {params:,} parameters, float32 safetensors.
- **Tokenizer**: byte-level BPE built with `tokenizers` (256-byte initial alphabet: any text
  encodes and decodes losslessly; digits split one per token), {vocab} tokens including the
  special tokens `{specials}`. bos `<|bos|>`, eos `<|end|>` (end of turn and of document), pad
  `<|pad|>`.
- **Chat template** (Jinja, in `tokenizer_config.json`):
  `<|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>`; assistant turns are
  in `{{% generation %}}` blocks (`return_assistant_tokens_mask=True` works).

  ```jinja
  {template}
  ```
- **Corpus**: generated, nothing downloaded: the train side of Crucible's default tasks
  (`crucible.recipes._tasks`, split seed 0; held-out problems never seen), each problem as plain
  text and inside chat conversations (optional system message, one to three turns, phrasings
  other than the fine-tuning prompts, answers bare or in a sentence); {tokens:,} tokens per
  epoch.
- **Training**: {steps} steps of {batch} packed rows of {context} tokens, AdamW (lr {lr:g},
  betas 0.9/0.95, weight decay 0.01), warmup then cosine to a tenth, clip 1.0, seed {seed},
  {threads} threads; final training loss {loss:.3f} nats/token.
- **Made by**: `python scripts/pretrain_base.py --seed {seed} --threads {threads}`
  (deterministic on the same torch build); `python scripts/pretrain_base.py --check` measures
  LoRA fine-tuning on it against a random-init twin.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
```
"""


# ---- the check: LoRA fine-tuning as the default run does it -------------------------------


def chat_rows(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[TaskExample], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(tokens, assistant mask) of each default-task conversation, as the recipe renders it."""
    rows = []
    for example in examples:
        rendered = tokenizer.apply_chat_template(
            example.conversation()["messages"],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        rows.append((rendered["input_ids"][:max_length], rendered["assistant_masks"][:max_length]))
    return rows


def batch_loss(model: Any, rows: Sequence[tuple[list[int], list[int]]], pad: int) -> Any:
    """Sum of the answer tokens' negative log-likelihood (Tinker's cross_entropy), and count."""
    width = max(len(tokens) for tokens, _ in rows)
    ids = torch.full((len(rows), width), pad)
    attention = torch.zeros(len(rows), width, dtype=torch.long)  # right padding
    weights = torch.zeros(len(rows), width)
    for row, (tokens, mask) in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        attention[row, : len(tokens)] = 1
        weights[row, : len(mask)] = torch.tensor(mask, dtype=torch.float32)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return (nll * weights[:, 1:]).sum(), weights[:, 1:].sum()


def exact_match(
    model: Any, tokenizer: PreTrainedTokenizerBase, examples: Sequence[TaskExample]
) -> float:
    """Greedy answers (at most 12 new tokens, stop at <|end|>), batched with left padding."""
    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": e.prompt}], tokenize=False, add_generation_prompt=True
        )
        for e in examples
    ]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        generated = model.generate(
            **encoded,
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = tokenizer.batch_decode(
        generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
    )
    return sum(e.is_correct(a) for e, a in zip(examples, answers, strict=True)) / len(examples)


def lora_check(model: Any, tokenizer: PreTrainedTokenizerBase, label: str, seed: int) -> str:
    """The default run's fine-tuning (rank 16, alpha 32, 120 steps x 64, lr 3e-3 cosine,
    10 warmup steps, Adam betas 0.9/0.95, clip 1.0), then exact match on 200 held-out."""
    from peft import LoraConfig, get_peft_model

    from crucible.recipes._schedule import learning_rate as schedule

    split = default_task_split(split_seed=0, shuffle_seed=seed)
    tasks = ("addition", "reversal")
    test = {task: [e for e in split.test if e.task == task][:100] for task in tasks}
    before = {task: exact_match(model, tokenizer, examples) for task, examples in test.items()}
    torch.manual_seed(seed)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=0.0, betas=(0.9, 0.95), eps=1e-12,
                                  weight_decay=0.0, foreach=False)  # fmt: skip
    rows = chat_rows(tokenizer, split.train, max_length=64)
    order = list(range(len(rows)))
    random.Random(f"{seed}/epoch/0").shuffle(order)
    steps, batch_size, losses = 120, 64, []
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        batch = [rows[i] for i in order[step * batch_size : (step + 1) * batch_size]]
        loss, count = batch_loss(model, batch, tokenizer.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = schedule(step, steps, 3e-3, "cosine", warmup_steps=10)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item() / count.item())
        if step % 20 == 0:
            print(f"  {label} step {step}: loss/token {losses[-1]:.3f}", flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    after = {task: exact_match(model, tokenizer, examples) for task, examples in test.items()}

    def scores(by_task: dict[str, float]) -> str:
        overall = sum(by_task.values()) / len(by_task)
        return f"{100 * overall:.1f}% (" + ", ".join(
            f"{task} {100 * v:.0f}%" for task, v in by_task.items()) + ")"  # fmt: skip

    return (
        f"{label}: exact match before {scores(before)} -> after {scores(after)}; "
        f"loss/token step 1 {losses[0]:.3f} -> step {steps} {losses[-1]:.3f} "
        f"(min {min(losses):.3f}); {steps} steps in {seconds:.0f}s"
    )


def check(args: argparse.Namespace) -> int:
    tokenizer = AutoTokenizer.from_pretrained(args.output)
    shipped = AutoModelForCausalLM.from_pretrained(args.output, dtype=torch.float32)
    print(lora_check(shipped, tokenizer, f"{MODEL_NAME} (pretrained)", args.seed), flush=True)
    random_init = new_model(model_config(tokenizer), args.seed)
    print(lora_check(random_init, tokenizer, f"{MODEL_NAME} random init", args.seed), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16, help="rows of 512 tokens")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--vocab-size", type=int, default=512, help="upper bound")
    parser.add_argument("--min-frequency", type=int, default=1000, help="for a BPE merge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--check",
        action="store_true",
        help="instead of pretraining: LoRA fine-tune the model in --output and a random-init "
        "twin as the default run does, and report held-out exact match",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # reductions can differ with the thread count
    torch.set_flush_denormal(True)  # denormals slow CPU matmuls late in training
    torch.use_deterministic_algorithms(True)
    return check(args) if args.check else pretrain(args)


if __name__ == "__main__":
    sys.exit(main())
