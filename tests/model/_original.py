"""An independent stand-in for the original xGen-MM forward, used only by tests.

Built from stock transformers modules (SiglipVisionModel, Phi3Model with eager attention), a perceiver
written straight from SPEC §1.2 with einsum and a concatenated key tensor, and the original algorithm's
steps (per-image spatial merge and re-chunking, per-sample insertion loop, right padding with the pad
id's value). It shares no code with xgenmm_fast.model; weights are copied in from an XGenMM instance.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import Phi3Config, SiglipVisionConfig
from transformers.models.phi3.modeling_phi3 import Phi3Model
from transformers.models.siglip.modeling_siglip import SiglipVisionModel


def hf_siglip(cfg):
    v = cfg.vision
    hf = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        layer_norm_eps=v.layer_norm_eps, hidden_act="gelu_pytorch_tanh", attn_implementation="eager"))
    return hf.eval()


def hf_phi3(cfg):
    t = cfg.text
    hf = Phi3Model(Phi3Config(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps,
        max_position_embeddings=t.max_position_embeddings, sliding_window=t.sliding_window,
        pad_token_id=t.pad_token_id, rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
        attn_implementation="eager"))
    return hf.eval()


def load_from(model, hf_vision, hf_text, sd):
    """Copy an XGenMM state dict (unprefixed original keys) into the HF modules."""
    vis = {k[len("vision_encoder."):]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    missing, unexpected = hf_vision.load_state_dict(vis, strict=False)
    assert not unexpected and not [m for m in missing if not m.startswith("head.")], (missing, unexpected)
    txt = {k[len("lang_model.model."):]: v for k, v in sd.items()
           if k.startswith("lang_model.model.") and "additional_embedding" not in k}
    hf_text.load_state_dict(txt, strict=True)


class SpecPerceiver:
    """SPEC §1.2, literally: concatenated keys, masked_fill, softmax, no fusion."""

    def __init__(self, sd, cfg):
        self.sd = {k[len("vision_tokenizer."):]: v for k, v in sd.items() if k.startswith("vision_tokenizer.")}
        self.cfg = cfg.perceiver

    def ln(self, x, name):
        return F.layer_norm(x, (x.shape[-1],), self.sd[name + ".weight"], self.sd[name + ".bias"], 1e-5)

    def __call__(self, x, mask):
        """x (N, M, D), mask (N, M) -> (N, L, E)."""
        p, h = self.sd, self.cfg.heads
        lat = p["latents"][None].expand(x.shape[0], -1, -1)
        mask = torch.cat([mask, torch.ones(x.shape[0], lat.shape[1])], dim=1)
        for i in range(self.cfg.depth):
            a = f"layers.{i}.0."
            xn, ln = self.ln(x, a + "norm_media"), self.ln(lat, a + "norm_latents")
            q = ln @ p[a + "to_q.weight"].T
            k, v = (torch.cat([xn, ln], 1) @ p[a + "to_kv.weight"].T).chunk(2, dim=-1)
            q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3) for t in (q, k, v))
            sim = torch.einsum("bhid,bhjd->bhij", q * self.cfg.dim_head ** -0.5, k)
            sim = sim.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
            out = torch.einsum("bhij,bhjd->bhid", sim.softmax(-1), v)
            out = out.permute(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], -1)
            lat = out @ p[a + "to_out.weight"].T + lat
            f = f"layers.{i}.1."
            y = self.ln(lat, f + "0") @ p[f + "1.weight"].T
            lat = F.gelu(y) @ p[f + "3.weight"].T + lat
        return self.ln(lat, "norm") @ p["projection.weight"].T + p["projection.bias"]


def _best_grid(w, h, grids):
    best, best_eff, best_waste = None, 0, math.inf
    for gw, gh in grids:
        s = min(gw / w, gh / h)
        eff = min(int(w * s) * int(h * s), w * h)
        waste = gw * gh - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (gw, gh), eff, waste
    return best


def _unpad_mask(cur_h, cur_w, w, h):
    m = torch.ones(cur_h, cur_w)
    if w / h > cur_w / cur_h:
        pad = (cur_h - int(h * (cur_w / w))) // 2
        m[:pad, :] = 0
        m[cur_h - pad:, :] = 0
    else:
        pad = (cur_w - int(w * (cur_h / h))) // 2
        m[:, :pad] = 0
        m[:, cur_w - pad:] = 0
    return m


class OriginalXGenMM:
    def __init__(self, model):
        self.cfg = cfg = model.config
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.vision, self.text = hf_siglip(cfg), hf_phi3(cfg)
        load_from(model, self.vision, self.text, sd)
        self.perceiver = SpecPerceiver(sd, cfg)
        self.sd = sd
        self.media_id = cfg.text.initial_tokenizer_len
        self.pad_id = cfg.text.pad_token_id

    def embed(self, ids):
        base_len = self.cfg.text.initial_tokenizer_len
        out = F.embedding(ids.clamp(max=base_len - 1), self.sd["lang_model.model.embed_tokens.weight"])
        extra = ids >= base_len
        add = self.sd["lang_model.model.embed_tokens.additional_embedding.weight"]
        out[extra] = add[ids[extra] - base_len]
        return out

    def head(self, h):
        n = self.cfg.text.initial_tokenizer_len
        base = h @ self.sd["lang_model.lm_head.weight"].T + self.sd["lang_model.lm_head.bias"]
        add = h @ self.sd["lang_model.lm_head.additional_fc.weight"].T + self.sd["lang_model.lm_head.additional_fc.bias"]
        return torch.cat([base[..., :n], add], -1)

    @torch.no_grad()
    def __call__(self, vision_x, lang_x, attention_mask, labels, image_size):
        cfg, g = self.cfg, self.cfg.vision.image_size // self.cfg.vision.patch_size
        nested = isinstance(vision_x[0], list)
        images = [x.squeeze(0) for s in vision_x for x in s] if nested else [x.squeeze(0) for x in vision_x]
        sizes = [s for ss in image_size for s in ss] if nested else list(image_size)
        feats = self.vision(torch.cat(images)).last_hidden_state.split([im.shape[0] for im in images])
        grids = cfg.anyres_grids
        per_image, masks = [], []
        for f, (w, h) in zip(feats, sizes):
            if f.shape[0] == 1:
                per_image.append(f)
                masks.append(torch.ones(1, g * g))
                continue
            gw, gh = _best_grid(w, h, grids)
            npw, nph = gw // cfg.tile_size, gh // cfg.tile_size
            t = f[1:].view(nph, npw, g, g, -1).permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
            m = _unpad_mask(t.shape[1], t.shape[2], w, h)
            t = t.view(-1, nph, npw, g * g).flatten(1, 2).permute(1, 2, 0)
            m = m.view(nph, npw, g * g).flatten(0, 1)
            per_image.append(torch.cat([f[:1], t]))
            masks.append(torch.cat([torch.ones(1, g * g), m]))
        toks = self.perceiver(torch.cat(per_image), torch.cat(masks))
        toks = [t.flatten(0, 1) for t in toks.split([p.shape[0] for p in per_image])]
        if nested:
            counts, it = [len(s) for s in vision_x], iter(toks)
            toks = [[next(it) for _ in range(c)] for c in counts]
        else:
            toks = [[t] for t in toks]

        emb = self.embed(lang_x)
        rows_e, rows_m, rows_l = [], [], []
        for i in range(lang_x.shape[0]):
            idxs = torch.where(lang_x[i] == self.media_id)[0].tolist()
            e, m, l = emb[i], attention_mask[i], labels[i]
            offset = 0
            for j, idx in enumerate(idxs):
                idx += offset
                vt = toks[i][j]
                e = torch.cat([e[:idx], vt, e[idx + 1:]])
                m = torch.cat([m[:idx], torch.ones(vt.shape[0], dtype=m.dtype), m[idx + 1:]])
                l = torch.cat([l[:idx], torch.full((vt.shape[0],), -100), l[idx + 1:]])
                offset += vt.shape[0] - 1
            rows_e.append(e), rows_m.append(m), rows_l.append(l)
        L = max(r.shape[0] for r in rows_e)
        E = torch.full((len(rows_e), L, emb.shape[-1]), float(self.pad_id))
        M = torch.zeros(len(rows_e), L, dtype=attention_mask.dtype)
        Lb = torch.full((len(rows_e), L), -100)
        for i in range(len(rows_e)):
            n = rows_e[i].shape[0]
            E[i, :n], M[i, :n], Lb[i, :n] = rows_e[i], rows_m[i], rows_l[i]
        hidden = self.text(inputs_embeds=E, attention_mask=M).last_hidden_state
        logits = self.head(hidden)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), Lb[:, 1:].reshape(-1),
                               ignore_index=-100)
        return logits, loss, M, Lb
