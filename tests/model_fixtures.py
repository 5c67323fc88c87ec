"""Tiny models of real classes, saved the way users hand them to fmeval (offline).

* transformers ViT, DINOv2, CLIP and SigLIP built from small configs and saved with
  ``save_pretrained`` (model, image processor, and for the dual encoders a tokenizer:
  a BERT WordPiece tokenizer over a small vocabulary, since CLIP's BPE and SigLIP's
  SentencePiece files cannot be fetched here; the model classes are the real ones);
* a user's ``my_encoder.py`` with a ``build`` factory returning a plain nn.Module;
* a plugin package laid out as ``pip install --target`` leaves it (the module and its
  ``*.dist-info`` with ``entry_points.txt``), found through importlib.metadata.
"""

from __future__ import annotations

from pathlib import Path

W, L, H, S = 32, 2, 2, 32  # width, layers, heads, image side


def _vision(**extra):
    return dict(image_size=S, patch_size=8, hidden_size=W, num_hidden_layers=L, num_attention_heads=H,
                intermediate_size=2 * W, **extra)


def _tokenizer(folder: Path) -> tuple[int, int]:
    from transformers import BertTokenizerFast

    from fmeval.adapters.text_offline import write_wordpiece_vocab

    n = write_wordpiece_vocab(folder, lowercase=True)
    tok = BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    return n, tok.sep_token_id


def save_hf(kind: str, folder: Path, seed: int = 0) -> Path:
    """A tiny ``kind`` (vit, dinov2, clip, siglip) saved into ``folder``; returns it."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    mean = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    if kind == "vit":
        model = T.ViTModel(T.ViTConfig(**_vision()), add_pooling_layer=False)
        proc = T.ViTImageProcessor(size={"height": S, "width": S}, **mean)
    elif kind == "dinov2":
        model = T.Dinov2Model(T.Dinov2Config(**_vision()))
        proc = T.BitImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S},
                                   do_center_crop=True, **mean)
    elif kind in ("clip", "siglip"):
        vocab, eos = _tokenizer(folder)
        text = dict(vocab_size=vocab, hidden_size=W, num_hidden_layers=L, num_attention_heads=H,
                    intermediate_size=2 * W, max_position_embeddings=16, eos_token_id=eos)
        if kind == "clip":
            model = T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=_vision(), projection_dim=W))
            proc = T.CLIPImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S},
                                        image_mean=[0.4815, 0.4578, 0.4082], image_std=[0.2686, 0.2613, 0.2758])
        else:
            model = T.SiglipModel(T.SiglipConfig(text_config=text, vision_config=_vision()))
            with torch.no_grad():  # SigLIP's published initialisation: scale log(10), bias -10
                model.logit_scale.fill_(2.302585)
                model.logit_bias.fill_(-10.0)
            proc = T.SiglipImageProcessor(size={"height": S, "width": S}, **mean)
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


MY_ENCODER = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """Maps normalised images [N, 3, H, W] to features [N, 16]."""

    input_size = 32
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def build():
    torch.manual_seed(SEED)
    return Tiny()


def not_a_model():
    return "nope"
'''


def write_encoder(folder: Path, seed: int = 0) -> Path:
    path = folder / "my_encoder.py"
    path.write_text(MY_ENCODER.replace("SEED", str(seed)))
    return path


def write_plugin(site: Path, *, package: str = "fmeval-demo-plugin", broken: bool = False) -> Path:
    """A plugin as installed by pip into ``site``: module + dist-info registering ``demo-encoder``."""
    mod = "fmeval_demo_plugin"
    (site / mod).mkdir(parents=True, exist_ok=True)
    body = MY_ENCODER.replace("SEED", "0")
    (site / mod / "__init__.py").write_text(("import not_installed_dependency\n" if broken else "") + body)
    dist = site / f"{package.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[fmeval.adapters]\ndemo-encoder = {mod}:build\n")
    (dist / "RECORD").write_text("")
    return site
