"""Build a tiny random-weight Qwen3 model with its own small BPE tokenizer, entirely offline.

It exists so that the real vLLM engine and server can be exercised in CI without downloading
weights: the architecture, chat template (`<think>` blocks) and special tokens look like Qwen3's,
the weights are random. Needs `torch`, `transformers` and `tokenizers` (the vLLM virtualenv has
them); the main autotts install does not.

Generation from random weights is noise over the vocabulary, so a few logit biases make the noise
useful for testing the protocol: digits and `}` are frequent (probes then often close the brace and
yield an answer), `</think>` and the end-of-turn token rare but reachable (some branches stop
thinking on their own, others run into the thinking cap).

    python -m autotts.collect.tinymodel OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# A Qwen-style chat template. With thinking on (the default) the generation prompt ends at
# "<|im_start|>assistant\n" and the model opens "<think>" itself, as Qwen3 does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)

_CORPUS_WORDS = ["the", "answer", "is", "so", "we", "have", "let", "then", "find", "compute", "number", "sum", "product", "value", "therefore", "wait", "check", "again", "first", "second", "total", "each", "and", "of", "to", "in", "is", "a", "x", "y", "n", "k"]


def _corpus() -> list[str]:
    # Deterministic training text: words, numbers and LaTeX fragments like those in math answers.
    lines = []
    for i in range(400):
        w = _CORPUS_WORDS[i % len(_CORPUS_WORDS)]
        lines.append(f"{w} {i} + {i * 7 % 97} = {i + i * 7 % 97} \\boxed{{{i % 50}}} \\frac{{{i}}}{{2}}")
    return lines


def build_tokenizer(out: Path) -> object:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # One token, so that the random model writes boxed answers now and then.
    tok.add_tokens([AddedToken("\\boxed{", normalized=False, special=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def build_tiny_model(out: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen3 model (config, safetensors weights, tokenizer) to `out`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    vocab = len(tok)  # type: ignore[arg-type]
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}  # type: ignore[attr-defined]
    hidden = 64
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,  # vLLM's CPU attention needs head_dim >= 32
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        # Unit-scale embeddings and a larger LM head than the default init, so that the context
        # (not just the biases below) decides the next token and greedy probes vary.
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
        model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
        # Layers scaled to contribute O(1) to the residual stream (1/sqrt(fan-in)), so that
        # attention carries the context and probes differ between branches.
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj,
                        layer.mlp.down_proj):
                lin.weight.normal_(0.0, LAYER_GAIN / lin.in_features**0.5)
        # Dimension 0 of the residual stream is a constant: every embedding sets it and no layer
        # writes to it. After the final norm it acts as a bias input to the LM head.
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        bias = torch.zeros(vocab)
        for t, b in _biases(tok, vocab).items():
            bias[t] = b
        model.lm_head.weight[:, 0] = bias
    model.save_pretrained(str(out), safe_serialization=True)
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": [ids["<|im_end|>"]]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out


LM_HEAD_STD = 0.15
LAYER_GAIN = 1.0
BIASES = {"digit": 1.0, "}": 3.0, "\\boxed{": 1.5, "</think>": 1.0, "<|im_end|>": 0.0}


def _biases(tok: object, vocab: int) -> dict[int, float]:
    """Logit biases (per unit of the constant dimension) that shape the random model's output."""
    out: dict[int, float] = {}
    for t in range(vocab):
        s = tok.decode([t])  # type: ignore[attr-defined]
        if s.strip().isdigit():
            out[t] = BIASES["digit"]
        elif s.strip() in BIASES and s.strip() != "digit":
            out[t] = BIASES[s.strip()]
    conv = tok.convert_tokens_to_ids  # type: ignore[attr-defined]
    for name in ("</think>", "<|im_end|>"):
        out[conv(name)] = BIASES[name]
    for name in ("<|endoftext|>", "<|im_start|>", "<think>"):
        out[conv(name)] = -10.0  # never useful in the output
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m autotts.collect.tinymodel OUT_DIR")
    print(build_tiny_model(sys.argv[1]))
