"""The modules that are exported: VAR's own blocks, head and VQVAE, called as VAR.forward,
VAR.autoregressive_infer_cfg and VectorQuantizer2 call them. Only the few lines of glue around them are written here,
each following the VAR line it names, because VAR has no step function and its forward drops labels at random."""
import torch
from torch import nn


class FullSequence(nn.Module):
    """VAR.forward (teacher forcing) without the class dropout of training, for a float32 or float16 model."""

    def __init__(self, var):
        super().__init__()
        self.var = var

    def forward(self, label_B, x_BLCv_wo_first_l):
        var = self.var
        B = x_BLCv_wo_first_l.shape[0]
        dtype = var.word_embed.weight.dtype
        # VAR.forward, less `label_B = where(rand(B) < cond_drop_rate, num_classes, label_B)`
        sos = cond_BD = var.class_emb(label_B)
        sos = sos.unsqueeze(1).expand(B, var.first_l, -1) + var.pos_start.expand(B, var.first_l, -1)
        x_BLC = torch.cat((sos, var.word_embed(x_BLCv_wo_first_l.to(dtype))), dim=1)
        x_BLC = x_BLC + (var.lvl_embed(var.lvl_1L.expand(B, -1)) + var.pos_1LC)
        attn_bias = var.attn_bias_for_masking.to(dtype)
        cond_BD_or_gss = var.shared_ada_lin(cond_BD)
        for b in var.blocks:
            x_BLC = b(x=x_BLC, cond_BD=cond_BD_or_gss, attn_bias=attn_bias)
        return logits(var, x_BLC, cond_BD)


def logits(var, h, cond_BD):
    """VAR.get_logits; in float16 without its float32 casts (PyTorch's CPU Linear refuses float32 inputs on float16
    weights, and a float16 export keeps the model's type)."""
    if var.head.weight.dtype == torch.float32:
        return var.get_logits(h, cond_BD)
    return var.head(var.head_nm(h, cond_BD))


class GenerationStep(nn.Module):
    """One scale of VAR.autoregressive_infer_cfg with the KV cache as graph inputs and outputs. The first scale is the
    call with an empty cache: its one token is the class embedding plus pos_start (x_next_BlCv is then ignored)."""

    def __init__(self, var):
        super().__init__()
        self.var = var

    def forward(self, label_B, x_next_BlCv, cfg, past):
        var = self.var
        B, l = x_next_BlCv.shape[0], x_next_BlCv.shape[1]
        dtype = var.word_embed.weight.dtype
        Lp = past[0].shape[2]
        sos = cond_BD = var.class_emb(torch.cat((label_B, torch.full_like(label_B, fill_value=var.num_classes)), dim=0))
        lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
        # scale 0: sos.unsqueeze(1).expand(2B, first_l, -1) + pos_start.expand(2B, first_l, -1) + lvl_pos[:, :first_l]
        # later:   word_embed(next).repeat(2, 1, 1) + lvl_pos[:, cur_L : cur_L + pn²] (VAR adds before repeating)
        first = sos.unsqueeze(1) + var.pos_start
        later = var.word_embed(x_next_BlCv.to(dtype)).repeat(2, 1, 1)
        positions = torch.arange(l, device=label_B.device) + Lp
        is_first = (positions < var.first_l).unsqueeze(-1)
        x = torch.where(is_first, first, later) + lvl_pos[:, Lp:Lp + l]
        cond_BD_or_gss = var.shared_ada_lin(cond_BD)
        present = []
        for i, b in enumerate(var.blocks):
            b.attn.caching, b.attn.cached_k, b.attn.cached_v = True, past[2 * i], past[2 * i + 1]
            x = b(x=x, cond_BD=cond_BD_or_gss, attn_bias=None)
            present += [b.attn.cached_k, b.attn.cached_v]
            b.attn.kv_caching(False)
        logits_BlV = logits(var, x, cond_BD)
        t = cfg.to(logits_BlV.dtype)
        return ((1 + t) * logits_BlV[:B] - t * logits_BlV[B:], *present)


class VqNextScale(nn.Module):
    """Scale `si` of the sampling loop after the tokens are drawn: their codebook vectors (VAR's lines), then
    VectorQuantizer2.get_next_autoregressive_input; the next scale's transformer input, flattened as VAR does."""

    def __init__(self, vae, si: int):
        super().__init__()
        self.quant, self.si = vae.quantize, si

    def forward(self, f_hat, idx_Bl):
        quant, si = self.quant, self.si
        patch_nums = quant.v_patch_nums
        B, pn = f_hat.shape[0], patch_nums[si]
        h_BChw = quant.embedding(idx_Bl).transpose(1, 2).reshape(B, quant.Cvae, pn, pn)
        f_hat, next_map = quant.get_next_autoregressive_input(si, len(patch_nums), f_hat.clone(), h_BChw)
        if si == len(patch_nums) - 1:
            return f_hat
        return f_hat, next_map.view(B, quant.Cvae, -1).transpose(1, 2)


class VaeDecoder(nn.Module):
    """VQVAE.fhat_to_img: f_hat → image in [-1, 1] (VAR's sampler maps it to [0, 1] afterwards)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, f_hat):
        return self.vae.fhat_to_img(f_hat)
