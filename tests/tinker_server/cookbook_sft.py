"""A tinker-cookbook user's script: the cookbook's own supervised loop, unmodified, against a
Tinker-compatible server (``python -m crucible.tinker_server``) on ``crucible/tiny-chat``.

Runs with the python of the cookbook's venv (``scripts/cookbook_venv``), never Crucible's:
tinker-cookbook pins an older transformers. It imports nothing from Crucible. The cookbook is
configured only the ways it offers its users:

- the tokenizer: ``model_name`` resolves offline, either as the served name with
  ``HF_HUB_CACHE`` pointing at the server's ``--hf-cache`` folder (and ``HF_HUB_OFFLINE=1``),
  or as the model directory's absolute path;
- the renderer: no built-in renderer matches tiny-chat's chat template, so this script
  registers one (``register_renderer``) and checks it against the template;
- the data: the cookbook's ``FromConversationFileBuilder`` over a JSONL of conversations.

``--interrupt-at-batch K`` stands in for a preemption: fetching batch K raises, after the
cookbook has written its periodic checkpoints; run again without it, the cookbook resumes from
its own ``checkpoints.jsonl``. The last line printed is a JSON summary.

    TINKER_API_KEY=tml-local HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1 \\
    .venv-cookbook/bin/python tests/tinker_server/cookbook_sft.py \\
        --base-url http://127.0.0.1:8700 --data convs.jsonl --log-path runs/cookbook-sft
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import chz
import tinker
from tinker_cookbook import checkpoint_utils, renderers
from tinker_cookbook.renderers.base import (
    Message,
    ParseTermination,
    RenderContext,
    RenderedMessage,
    Renderer,
    parse_response_for_stop_token,
)
from tinker_cookbook.supervised import train
from tinker_cookbook.supervised.data import FromConversationFileBuilder
from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig, SupervisedDataset
from tinker_cookbook.tokenizer_utils import Tokenizer, get_tokenizer

RENDERER = "crucible/tiny-chat"


class TinyChatRenderer(Renderer):
    """crucible/tiny-chat's template: ``<|bos|>`` then ``<|role|>content<|end|>`` per message;
    the model's turn ends with ``<|end|>`` (its eos), which is also where sampling stops."""

    @property
    def has_extension_property(self) -> bool:
        return True  # nothing is dropped from earlier turns

    @property
    def _bos_tokens(self) -> list[int]:
        return self._encode(str(self.tokenizer.bos_token))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        header = tinker.types.EncodedTextChunk(tokens=self._encode(f"<|{message['role']}|>"))
        body = renderers.ensure_text(message["content"]) + str(self.tokenizer.eos_token)
        return RenderedMessage(
            header=header, output=[tinker.types.EncodedTextChunk(tokens=self._encode(body))]
        )

    def get_stop_sequences(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    def parse_response(self, response: list[int]) -> tuple[Message, ParseTermination]:
        return parse_response_for_stop_token(
            response, self.tokenizer, int(self.tokenizer.eos_token_id)
        )


def register_tiny_chat(model_name: str) -> None:
    """Register the renderer and check that it renders exactly what the chat template does."""
    renderers.register_renderer(RENDERER, lambda tokenizer, _images: TinyChatRenderer(tokenizer))
    tokenizer: Tokenizer = get_tokenizer(model_name)
    renderer = renderers.get_renderer(RENDERER, tokenizer)
    conversation: list[Message] = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="What is 12 + 34?"),
        Message(role="assistant", content="46"),
    ]
    expected = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)
    rendered, _weights = renderer.build_supervised_example(conversation)
    if rendered.to_ints() != list(expected):
        raise SystemExit(f"renderer != chat template: {rendered.to_ints()} vs {list(expected)}")
    prompt = renderer.build_generation_prompt(conversation[:2])
    expected_prompt = tokenizer.apply_chat_template(
        conversation[:2], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    if prompt.to_ints() != list(expected_prompt):
        raise SystemExit(f"generation prompt != template: {prompt.to_ints()} vs {expected_prompt}")


class SimulatedPreemption(Exception):
    pass


class _Interrupting(SupervisedDataset):
    def __init__(self, inner: SupervisedDataset, at_batch: int) -> None:
        self.inner, self.at_batch = inner, at_batch

    def get_batch(self, index: int) -> list[tinker.Datum]:
        if index == self.at_batch:
            raise SimulatedPreemption(f"preempted before batch {index}")
        return self.inner.get_batch(index)

    def set_epoch(self, seed: int = 0) -> None:
        self.inner.set_epoch(seed)

    def __len__(self) -> int:
        return len(self.inner)


@chz.chz
class InterruptibleConversationFileBuilder(FromConversationFileBuilder):
    """The cookbook's file builder, whose training set raises at ``interrupt_at_batch``."""

    interrupt_at_batch: int | None = None

    def __call__(self) -> tuple[SupervisedDataset, SupervisedDataset | None]:
        train_set, test_set = super().__call__()
        if self.interrupt_at_batch is not None:
            train_set = _Interrupting(train_set, self.interrupt_at_batch)
        return train_set, test_set


def sample_after_training(base_url: str, log_path: str, model_name: str) -> list[dict[str, str]]:
    """Sample the final checkpoint's weights through the renderer, as a cookbook user would."""
    final = checkpoint_utils.get_last_checkpoint(log_path, required_key="sampler_path")
    assert final is not None, "no sampler checkpoint in checkpoints.jsonl"
    service = tinker.ServiceClient(base_url=base_url)
    sampler = service.create_sampling_client(model_path=final.sampler_path).result()
    renderer = renderers.get_renderer(RENDERER, get_tokenizer(model_name))
    answers = []
    for question in ("What is 21 + 43?", "Spell zorp backwards."):
        prompt = renderer.build_generation_prompt([Message(role="user", content=question)])
        params = tinker.SamplingParams(
            max_tokens=24, temperature=0.0, stop=renderer.get_stop_sequences()
        )
        result = sampler.sample(prompt, num_samples=1, sampling_params=params).result()
        message, termination = renderer.parse_response(result.sequences[0].tokens)
        answers.append(
            {"question": question, "answer": str(message["content"]), "end": str(termination)}
        )
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--data", required=True, help="JSONL of {'messages': [...]}")
    parser.add_argument("--log-path", required=True)
    parser.add_argument("--model-name", default="crucible/tiny-chat")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--test-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--interrupt-at-batch", type=int, default=None)
    args = parser.parse_args()

    register_tiny_chat(args.model_name)
    config = train.Config(
        log_path=args.log_path,
        model_name=args.model_name,
        recipe_name="crucible_cookbook_sft",
        renderer_name=RENDERER,
        dataset_builder=InterruptibleConversationFileBuilder(
            file_path=args.data,
            test_size=args.test_size,
            common_config=ChatDatasetBuilderCommonConfig(
                model_name_for_tokenizer=args.model_name,
                renderer_name=RENDERER,
                max_length=256,
                batch_size=args.batch_size,
            ),
            interrupt_at_batch=args.interrupt_at_batch,
        ),
        learning_rate=args.learning_rate,
        lr_schedule="constant",
        lora_rank=args.lora_rank,
        base_url=args.base_url,
        save_every=args.save_every,
        eval_every=args.eval_every,
        infrequent_eval_every=0,
    )
    try:
        asyncio.run(train.main(config))
    except SimulatedPreemption as preempted:
        print(json.dumps({"interrupted": str(preempted)}))
        sys.exit(3)
    summary = {
        "checkpoints": [c.to_dict() for c in checkpoint_utils.load_checkpoints_file(args.log_path)],
        "samples": sample_after_training(args.base_url, args.log_path, args.model_name),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
