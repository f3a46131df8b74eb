"""Offline text encoders and tokenizers for the video model and the first-frame model.

Real runs load the text encoder and tokenizer that came with a pretrained pipeline (UMT5 for Wan).
The `debug` models need one that exists without a model hub: a randomly initialised transformers
`CLIPTextModel` with the real CLIP BPE tokenizer, rebuilt from the vocabulary open_clip ships inside
its package. Both save and load with `save_pretrained`/`from_pretrained`, so they sit in a diffusers
pipeline directory like any other component.
"""

from __future__ import annotations

import gzip

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from vf3d.models.video.config import VideoArchitectureConfig

# CLIP's BPE: 256 byte symbols, the same with an end-of-word marker, 48,894 merges and the two
# special tokens (open_clip's SimpleTokenizer and transformers' CLIPTokenizer number them alike).
CLIP_MERGES = 49152 - 256 - 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def clip_tokenizer(max_tokens: int) -> CLIPTokenizer:
    """The CLIP BPE tokenizer, built offline from open_clip's bundled merges.

    Token ids equal open_clip's (and OpenAI CLIP's): vocabulary = byte symbols, byte symbols + "</w>",
    one token per merge in merge order, then the start and end tokens.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + "</w>" for symbol in byte_symbols] + ["".join(merge) for merge in merges] + [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)


def random_clip_text_encoder(architecture: VideoArchitectureConfig, max_tokens: int, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A randomly initialised CLIP text transformer of the configured size (uses torch's global RNG)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=architecture.text_hidden_size,
        intermediate_size=4 * architecture.text_hidden_size,
        num_hidden_layers=architecture.text_layers,
        num_attention_heads=architecture.text_heads,
        max_position_embeddings=max_tokens,
        projection_dim=architecture.text_hidden_size,
        bos_token_id=tokenizer.convert_tokens_to_ids(START_TOKEN),
        eos_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def encode_prompts(text_encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_tokens: int) -> torch.Tensor:
    """Prompts → per-token text embeddings [B, max_tokens, D] with padding positions zeroed.

    Every prompt is padded to `max_tokens`, so a prompt's embedding does not depend on the others
    in its batch. Wan's DiT cross-attends without a mask and was trained with zeros after the last
    real token, hence the zeroing.
    """
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_tokens,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    mask = tokens.attention_mask.to(device)
    hidden = text_encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
    return hidden * mask[..., None].to(hidden.dtype)
