"""XGenMM: SigLIP tiles -> perceiver tokens -> inserted at each <image> of the Phi-3 stream.

Where tensors are made and where they go:
  pixel tiles (T, 3, s, s) --vision_encoder--> features (T, g², D)
  --group_anyres_features (SPEC §3.4-3.5)--> chunks (C, g², D) + chunk masks (C, g²)
  --vision_tokenizer--> (C, L, E) --per image--> ((1+n)·L, E) image tokens
  --replace each <image> id--> LM input stream --lang_model--> hidden --lm_head--> logits.

`forward` takes the original training code's inputs and returns its outputs (padded multimodal
sequence, right-padded); the packed training path (issue 3) reuses `encode_images` and the decoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..config import XGenMMConfig
from ..data.anyres import anyres_feature_masks, get_anyres_grid_shape
from ..ops import loss as loss_ops
from .perceiver import PerceiverResampler
from .phi3 import AttentionLayout, Phi3ForCausalLM
from .siglip import SiglipVisionEncoder

IGNORE_INDEX = loss_ops.IGNORE_INDEX


@dataclass
class XGenMMOutput:
    """`.loss` and `.logits` as the original returned them (HF CausalLMOutput-like)."""
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None  # of the multimodal sequence
    labels: torch.Tensor | None = None  # of the multimodal sequence

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else (self.loss, self.logits)[key]


def check_vision_inputs(vision_x, image_size, batch_size: int) -> None:
    """The original's anyres input form: a list with one entry per sample, and image sizes beside it."""
    if isinstance(vision_x, torch.Tensor):
        raise TypeError("vision_x must be a list with one entry per sample (anyres tiles vary in count); "
                        "got a single tensor")
    if len(vision_x) != batch_size:
        raise ValueError(f"vision_x has {len(vision_x)} entries for a batch of {batch_size} samples")
    if image_size is None:
        raise ValueError("image_size (w, h) per image is required with anyres vision_x")


def sample_images(vision_x, image_size, i: int) -> tuple[list, list]:
    """Sample i's images and sizes as two equal-length lists, from any of the original's per-sample forms
    (one tensor and one size, lists of them, or None / [] for a text-only sample)."""
    imgs, szs = ([], []) if vision_x is None else (vision_x[i], image_size[i])
    if imgs is None or (isinstance(imgs, (list, tuple)) and len(imgs) == 0):
        imgs, szs = [], []
    elif isinstance(imgs, torch.Tensor):
        imgs, szs = [imgs], [szs]
    if len(imgs) != len(szs):
        raise ValueError(f"sample {i}: {len(imgs)} images but {len(szs)} image sizes")
    return list(imgs), list(szs)


def group_anyres_features(features: torch.Tensor, grid_shape: Sequence[int], g: int) -> torch.Tensor:
    """features (1 + n, g², D) of [base, tile_0..tile_{n-1}] -> (1 + n, g², D) perceiver inputs.

    The n grid tiles are laid out as one (nph·g, npw·g) map and re-cut into n row-major chunks of g²
    entries; for grids two or three tiles wide a chunk is a horizontal strip spanning all columns.
    """
    npw, nph = grid_shape
    base, tiles = features[:1], features[1:]
    d = features.shape[-1]
    fmap = tiles.view(nph, npw, g, g, d).permute(0, 2, 1, 3, 4)  # (nph, g_row, npw, g_col, D)
    chunks = fmap.reshape(nph * npw, g * g, d)
    return torch.cat([base, chunks], dim=0)


class XGenMM(nn.Module):
    def __init__(self, config: XGenMMConfig | str = "xgenmm_phi3_mini"):
        super().__init__()
        config = XGenMMConfig.resolve(config)
        if config.image_aspect_ratio != "anyres" or not config.anyres_patch_sampling:
            raise NotImplementedError("only image_aspect_ratio='anyres' with anyres_patch_sampling=True "
                                      "(the released v1.5 setting) is implemented")
        self.config = config
        self.vision_encoder = SiglipVisionEncoder(config.vision)
        self.vision_tokenizer = PerceiverResampler(config.vision.hidden_size, config.text.hidden_size,
                                                   config.perceiver)
        self.lang_model = Phi3ForCausalLM(config.text)
        self.vision_encoder.requires_grad_(False)  # frozen, as in the original recipe

    # ---- convenience ------------------------------------------------------------------------------
    @property
    def media_token_id(self) -> int:
        return self.config.media_token_id

    @property
    def pad_token_id(self) -> int:
        return self.config.text.pad_token_id

    @property
    def image_processor(self):
        from ..data.pillow_ref import ImageProcessor
        return ImageProcessor(self.config.tile_size)

    @property
    def device(self) -> torch.device:
        return self.lang_model.lm_head.weight.device

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.lang_model.model.gradient_checkpointing = enabled

    # ---- checkpoints ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, config: Any = None, dtype: torch.dtype | None = None,
                        device: Any = "cpu") -> "XGenMM":
        from .checkpoint import load_pretrained
        return load_pretrained(cls, path, config=config, dtype=dtype, device=device)

    def save_pretrained(self, out_dir: str, max_shard_size: int = 5 * 2**30) -> None:
        from .checkpoint import save_pretrained
        save_pretrained(self, out_dir, max_shard_size=max_shard_size)

    # ---- vision -----------------------------------------------------------------------------------
    def encode_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (T, 3, s, s) -> SigLIP features (T, g², D); no autograd graph while the encoder is
        frozen, so the features of a frozen encoder can be reused (e.g. by a DPO reference model)."""
        frozen = not any(p.requires_grad for p in self.vision_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.vision_encoder(pixel_values)

    def encode_images(self, pixel_values: torch.Tensor, tiles_per_image: Sequence[int],
                      image_sizes: Sequence[Sequence[int]], features: torch.Tensor | None = None) -> list[torch.Tensor]:
        """pixel_values (T, 3, s, s) for all images' tiles back to back -> per image ((1+n)·L, E).

        An image with one tile (e.g. a blank placeholder) is one chunk with an all-ones mask; an image
        with 1 + n tiles must have the n-tile grid its size selects. `features` (T, g², D): the vision
        encoder's output for these tiles, computed earlier (`encode_vision_features`); skips the encoder.
        """
        if len(tiles_per_image) == 0:
            return []
        g = self.config.vision.grid
        feats = self.encode_vision_features(pixel_values) if features is None else features  # (T, g², D)
        chunks, masks = [], []
        for i, (f, size) in enumerate(zip(feats.split(list(tiles_per_image)), image_sizes)):
            if f.shape[0] == 1:
                chunks.append(f)
                masks.append(torch.ones(1, g * g, device=f.device))
                continue
            grid_shape = get_anyres_grid_shape(size, self.config.anyres_grids, self.config.tile_size)
            if grid_shape[0] * grid_shape[1] != f.shape[0] - 1:
                raise ValueError(f"image {i}: {f.shape[0]} tiles (base + {f.shape[0] - 1}) but its size "
                                 f"(w, h) = {tuple(size)} selects a {grid_shape[0]}x{grid_shape[1]} grid; "
                                 "were the tiles made with a different grid list or image size?")
            chunks.append(group_anyres_features(f, grid_shape, g))
            masks.append(anyres_feature_masks(size, self.config.anyres_grids, self.config.tile_size, g,
                                              device=f.device))
        tokens = self.vision_tokenizer(torch.cat(chunks), torch.cat(masks).to(feats.dtype))  # (C, L, E)
        return [t.flatten(0, 1) for t in tokens.split(list(tiles_per_image))]

    # ---- the original's forward ------------------------------------------------------------------
    def forward(self, vision_x=None, lang_x: torch.Tensor | None = None, attention_mask=None, labels=None,
                image_size=None, return_logits: bool = True, packed=None, packed_logprobs: bool = False,
                vision_features=None, **unused):
        """Original call form (SPEC, issue 2 §5).

        vision_x: None, or a list with one entry per sample: a tile tensor (1, 1+n, 3, s, s) or
            (1+n, 3, s, s), a list of those for several images, or None / [] for a text-only sample.
        image_size: matching (w, h) per image (a list per sample when vision_x is nested).
        lang_x, attention_mask, labels: (B, T) with `<image>` ids where images go.
        Returns logits over the multimodal sequence (B, L, V), right-padded, and the mean shifted CE.
        `packed=PackedBatch` runs `forward_packed` instead (the form DeepSpeed's engine calls), or
        `forward_packed_logprobs` with `packed_logprobs=True` (`vision_features` passed on).
        """
        if packed is not None:
            if packed_logprobs:
                return self.forward_packed_logprobs(packed, vision_features=vision_features)
            return self.forward_packed(packed)
        if lang_x is None:
            raise ValueError("lang_x (B, T) token ids are required")
        B = lang_x.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(lang_x)
        per_sample_images = self._images_per_sample(vision_x, image_size, lang_x)
        embeds, mm_mask, mm_labels = self._build_multimodal_stream(lang_x, attention_mask, labels,
                                                                   per_sample_images)
        L = embeds.shape[1]
        positions = torch.arange(L, device=embeds.device).expand(B, L)
        hidden = self.lang_model(embeds, positions, AttentionLayout(key_padding_mask=mm_mask))
        logits = self.lang_model.lm_head(hidden)
        loss = loss_ops.causal_lm_loss(logits, mm_labels) if mm_labels is not None else None
        return XGenMMOutput(loss=loss, logits=logits if return_logits else None,
                            attention_mask=mm_mask, labels=mm_labels)

    # ---- the packed forward (no padding; what the trainer runs) ----------------------------------
    def forward_packed(self, batch, return_logits: bool = False) -> dict:
        """Loss over a `PackedBatch`: returns {"loss_sum", "num_targets", "loss"} (+ "logits").

        `loss_sum` is the summed CE over labelled targets so that callers can form the mean over a
        whole global batch (across accumulation steps and ranks); `loss` is the batch-local mean.
        The loss goes through the fused head + cross entropy (`ops.loss.linear_cross_entropy`) over the
        rows with a target: no (K, V) logits exist unless `return_logits` asks for all of them (N, V).
        """
        hidden, _ = self._packed_hidden(batch)
        keep = batch.targets != IGNORE_INDEX
        out: dict = {}
        if return_logits:
            out["logits"] = self.lang_model.lm_head(hidden)
        loss_sum = self.lang_model.lm_head(hidden[keep], targets=batch.targets[keep], reduction="sum")
        n = keep.sum()
        out.update(loss_sum=loss_sum, num_targets=n, loss=loss_sum / n.clamp_min(1))
        return out

    def forward_packed_logprobs(self, batch, vision_features: torch.Tensor | None = None) -> dict:
        """Summed log-probs of every sequence's labelled targets over a `PackedBatch` (DPO's quantity).

        Returns {"logps": (S,) fp32 sum of log p(target) per sequence, "num_targets": (S,) int64,
        "vision_features": (T, g², D) or None}. Only the hidden rows with a target go through the head
        (`ops.loss.linear_token_logprobs`; no (N, V) logits). `vision_features` (the encoder's output for
        `batch.pixel_values`, e.g. returned by the policy's pass) skips the vision encoder; the returned
        ones are detached when the encoder is frozen, else None.
        """
        hidden, feats = self._packed_hidden(batch, vision_features)
        keep = batch.targets != IGNORE_INDEX
        rows = keep.nonzero().flatten()  # (K,) stream positions with a target
        lp = self.lang_model.lm_head(hidden[rows], targets=batch.targets[rows])  # (K,) fp32
        bounds = batch.cu_seqlens[1:].to(device=rows.device, dtype=torch.long)
        seq = torch.searchsorted(bounds, rows, right=True)  # (K,) sequence of each target row
        S = batch.cu_seqlens.numel() - 1
        logps = lp.new_zeros(S).index_add(0, seq, lp)
        counts = torch.bincount(seq, minlength=S)
        frozen = feats is not None and not feats.requires_grad
        return {"logps": logps, "num_targets": counts, "vision_features": feats.detach() if frozen else None}

    def _packed_hidden(self, batch, vision_features: torch.Tensor | None = None):
        """Final hidden states (N, E) of a `PackedBatch`, and the vision features used (None: no image).

        The stream's embeddings come from one op (`ops.embedding.merge_vision_tokens`, a call of the
        embedding module): text rows look up the decoupled vocabulary, image slots take their perceiver
        tokens (slots sharing an image, `media_source`, take the same rows: encoded once)."""
        feats = tokens = source = None
        if batch.media_index.numel():
            dtype = self.vision_encoder.embeddings.patch_embedding.weight.dtype
            pixels = batch.pixel_values.to(dtype)
            feats = self.encode_vision_features(pixels) if vision_features is None else vision_features
            tokens = torch.cat(self.encode_images(pixels, batch.tiles_per_image, batch.image_sizes, features=feats))
            source = getattr(batch, "media_source", None)
        embeds = self.lang_model.get_input_embeddings()(batch.input_ids, media_index=batch.media_index,
                                                        tokens=tokens, media_source=source)  # (N, E)
        layout = AttentionLayout(cu_seqlens=batch.cu_seqlens, max_seqlen=getattr(batch, "max_seqlen", None))
        hidden = self.lang_model(embeds, batch.positions, layout)
        return hidden, feats

    def _images_per_sample(self, vision_x, image_size, lang_x) -> list[list[torch.Tensor]]:
        """Encode only the images whose sample has <image> tokens; returns per-sample token lists."""
        B = lang_x.shape[0]
        if vision_x is None:
            return [[] for _ in range(B)]
        check_vision_inputs(vision_x, image_size, B)
        tiles, sizes, owner = [], [], []
        n_media = (lang_x == self.media_token_id).sum(1).tolist()
        for i in range(B):
            imgs, szs = sample_images(vision_x, image_size, i)
            if n_media[i] > len(imgs):
                raise ValueError(f"sample {i}: {n_media[i]} <image> tokens but only {len(imgs)} images")
            for img, sz in list(zip(imgs, szs))[:n_media[i]]:  # images past the last <image> are unused
                t = img[0] if img.dim() == 5 else img
                if t.dim() != 4:
                    raise ValueError(f"sample {i}: image tiles must be (1+n, 3, s, s), got {tuple(img.shape)}")
                tiles.append(t)
                sizes.append((int(sz[0]), int(sz[1])))
                owner.append(i)
        result: list[list[torch.Tensor]] = [[] for _ in range(B)]
        if tiles:
            dtype = self.vision_encoder.embeddings.patch_embedding.weight.dtype
            pixels = torch.cat(tiles).to(device=self.device, dtype=dtype)
            for i, tok in zip(owner, self.encode_images(pixels, [t.shape[0] for t in tiles], sizes)):
                result[i].append(tok)
        return result

    def _build_multimodal_stream(self, lang_x, attention_mask, labels, per_sample_images):
        """Replace each <image> id by its image tokens; right-pad embeds with the pad id's *value*,
        the mask with 0 and labels with -100, exactly as the original stack_with_padding did."""
        embed = self.lang_model.get_input_embeddings()
        lang_embeds = embed(lang_x.to(self.device))
        attention_mask = attention_mask.to(self.device)
        labels = labels.to(self.device) if labels is not None else None
        rows_e, rows_m, rows_l = [], [], []
        for i in range(lang_x.shape[0]):
            pos = (lang_x[i] == self.media_token_id).nonzero().flatten().tolist()
            pieces_e, pieces_m, pieces_l, start = [], [], [], 0
            for tok_idx, img_tokens in zip(pos, per_sample_images[i]):
                n = img_tokens.shape[0]
                pieces_e += [lang_embeds[i, start:tok_idx], img_tokens.to(lang_embeds.dtype)]
                pieces_m += [attention_mask[i, start:tok_idx], attention_mask.new_ones(n)]
                if labels is not None:
                    pieces_l += [labels[i, start:tok_idx], labels.new_full((n,), IGNORE_INDEX)]
                start = tok_idx + 1
            pieces_e.append(lang_embeds[i, start:])
            pieces_m.append(attention_mask[i, start:])
            rows_e.append(torch.cat(pieces_e))
            rows_m.append(torch.cat(pieces_m))
            if labels is not None:
                pieces_l.append(labels[i, start:])
                rows_l.append(torch.cat(pieces_l))
        L = max(r.shape[0] for r in rows_e)
        embeds = lang_embeds.new_full((len(rows_e), L, lang_embeds.shape[-1]), float(self.pad_token_id))
        mask = attention_mask.new_zeros(len(rows_e), L)
        out_labels = labels.new_full((len(rows_e), L), IGNORE_INDEX) if labels is not None else None
        for i, (e, m) in enumerate(zip(rows_e, rows_m)):
            embeds[i, :e.shape[0]] = e
            mask[i, :m.shape[0]] = m
            if labels is not None:
                out_labels[i, :rows_l[i].shape[0]] = rows_l[i]
        return embeds, mask, out_labels

    # ---- generation (xgenmm_fast.inference: packed prefill, KV cache, decode steps) ----------------
    def generate(self, vision_x, lang_x: torch.Tensor, image_size=None, attention_mask=None, **kwargs):
        """The original `generate(vision_x, lang_x, attention_mask, image_size=..., **hf_kwargs)`.

        `lang_x` (B, T) may be left-padded (tokens with attention_mask 0 are dropped); vision_x and
        image_size as in `forward`. Returns only the new tokens, (B, n), padded with pad_token_id after
        each row's stop id, as HF's generate did for the original's inputs_embeds call. Keyword arguments:
        see `xgenmm_fast.inference.generate.generate_original`.
        """
        from ..inference.generate import generate_original
        return generate_original(self, vision_x, lang_x, image_size=image_size, attention_mask=attention_mask,
                                 **kwargs)

    def chat(self, images, question: str, history=None, tokenizer=None, **kwargs):
        """One chat turn with the Phi-3 template -> (answer, history). See `xgenmm_fast.inference.generate.chat`."""
        from ..inference.generate import chat
        return chat(self, images, question, history=history, tokenizer=tokenizer, **kwargs)
