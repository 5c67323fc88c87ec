"""Vision-language adapters (open_clip CLIP, BiomedCLIP, MedCLIP), offline.

Everything is built tiny through the real construction code; checkpoints are
made from tiny models, saved to tmp and read back through ``--weights``.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch

from fmeval.adapters import ADAPTERS, create_adapter
from fmeval.adapters.base import file_digest
from fmeval.adapters.medclip import MEDCLIP_WEIGHTS_URL, POSITION_IDS_KEY, SWIN_PREFIX
from fmeval.errors import ModelError

VL_NAMES = ("clip-vit-b32", "clip-vit-b16", "biomedclip", "medclip")
TEXTS = ["a", "b c"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core box extra
    intra-op threads spin against other processes (10x slower measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(adapter, n: int = 4, seed: int = 0, size: int | None = None) -> torch.Tensor:
    s = size or adapter.preprocess.input_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _outputs(adapter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return adapter.encode_image(x), adapter.encode_text(TEXTS)


# -- registry and tiny builds -------------------------------------------------


def test_registered_with_text_tag():
    for name in VL_NAMES:
        assert ADAPTERS.entry(name).tags["text"] == "yes"
    assert ADAPTERS.entry("clip-vit-b32").tags["weights"] == "open_clip:ViT-B-32/openai"
    assert ADAPTERS.entry("biomedclip").tags["weights"].startswith(
        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256"
    )


@pytest.mark.parametrize("name", VL_NAMES)
def test_tiny_shapes_and_ids(name):
    a = create_adapter(name, tiny=True)
    assert a.supports_text and not a.training
    img, txt = _outputs(a, _images(a))
    assert img.shape == (4, a.feature_dim) and txt.shape == (2, a.feature_dim)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    assert a.preprocess.input_size in (28, 32)
    assert a.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert a.weights_id.startswith("random:") and ":tiny:seed0" in a.weights_id
    assert a.text_id.startswith(a.weights_id + "|")


def test_preprocess_comes_from_the_model():
    med = create_adapter("medclip", tiny=True).preprocess
    assert med.grayscale and med.mean == (0.5862785803043838,) * 3
    assert med.std == (0.27950088968644304,) * 3
    clip = create_adapter("clip-vit-b32", tiny=True).preprocess
    assert not clip.grayscale and clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_openai_tag_forces_quick_gelu():
    """OpenAI weights were trained with QuickGELU; open_clip 3 only warns if it differs."""
    b32 = create_adapter("clip-vit-b32", tiny=True)
    b16 = create_adapter("clip-vit-b16", tiny=True)
    assert type(b32.backbone.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(b16.backbone.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"
    assert "quickgelu" in b32.weights_id and "quickgelu" not in b16.weights_id


@pytest.mark.parametrize("name", VL_NAMES)
def test_seeded_determinism(name):
    a0, a0b, a1 = (create_adapter(name, tiny=True, seed=s) for s in (0, 0, 1))
    x = _images(a0)
    (i0, t0), (i0b, t0b), (i1, t1) = (_outputs(a, x) for a in (a0, a0b, a1))
    assert torch.equal(i0, i0b) and torch.equal(t0, t0b)
    assert not torch.allclose(i0, i1) and not torch.allclose(t0, t1)
    assert a0.weights_id == a0b.weights_id != a1.weights_id


def test_text_follows_the_module():
    a = create_adapter("biomedclip", tiny=True).to(torch.float64)
    with torch.no_grad():
        assert a.encode_text(TEXTS).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", VL_NAMES)
def test_text_tokens_move_to_the_module_device(name):
    a = create_adapter(name, tiny=True, device="cuda")
    img, txt = _outputs(a, _images(a).cuda())
    assert img.is_cuda and txt.is_cuda and txt.shape == (2, a.feature_dim)


@pytest.mark.parametrize("name", VL_NAMES)
def test_input_size_override(name):
    a = create_adapter(name, tiny=True, input_size=48)
    assert a.preprocess.input_size == 48 and a.weights_id.endswith("@48:seed0")
    img, _ = _outputs(a, _images(a))
    assert img.shape == (4, a.feature_dim)


# -- LoRA targets, checked with peft itself -----------------------------------


@pytest.mark.parametrize("name", VL_NAMES)
def test_lora_targets_train_with_peft(name):
    peft = pytest.importorskip("peft")
    a = create_adapter(name, tiny=True)
    model = peft.get_peft_model(
        copy.deepcopy(a.backbone), peft.LoraConfig(r=2, target_modules=list(a.lora_targets))
    )
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) >= 4
    for n, p in lora.items():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # peft starts B at 0: no gradient to A
    model.train()
    model(_images(a)).square().mean().backward()
    # Every adapter weight must be on the forward path (a LoRA on open_clip's
    # MultiheadAttention.out_proj alone never is).
    dead = [n for n, p in lora.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


# -- pretrained requests offline ---------------------------------------------


@pytest.mark.parametrize("name", ["clip-vit-b32", "biomedclip"])
def test_pretrained_offline_is_one_clear_error(name):
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as info:
        create_adapter(name)
    assert time.perf_counter() - t0 < 15
    msg = str(info.value)
    assert msg.startswith(f"could not fetch pretrained weights for {name} (")
    assert "--weights PATH" in msg and "--tiny" in msg and "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_medclip_without_weights_says_where_to_get_them(tmp_path):
    with pytest.raises(ModelError, match="medclip-vit-pretrained.zip") as info:
        create_adapter("medclip")
    assert MEDCLIP_WEIGHTS_URL in str(info.value) and "--weights" in str(info.value)
    ckpt = tmp_path / "pytorch_model.bin"
    torch.save({}, ckpt)
    with pytest.raises(ModelError, match="vocab.txt"):
        create_adapter("medclip", weights=ckpt)


# -- open_clip local checkpoints ----------------------------------------------


@pytest.mark.parametrize("name", ["clip-vit-b16", "biomedclip"])
def test_open_clip_checkpoint_round_trip(name, tmp_path):
    src = create_adapter(name, tiny=True, seed=3)
    sd = src.model.state_dict()
    if name == "biomedclip":  # released BiomedCLIP checkpoints still carry it
        sd["text.transformer.embeddings.position_ids"] = torch.arange(256)[None]
    path = tmp_path / "open_clip_model.pt"
    torch.save(sd, path)
    dst = create_adapter(name, tiny=True, weights=path)  # seed 0: different random init
    x = _images(src)
    for a, b in zip(_outputs(src, x), _outputs(dst, x)):
        assert torch.equal(a, b)
    assert dst.weights_id == f"file:{file_digest(path)[:16]}"
    assert dst.load_report.clean


def test_open_clip_checkpoint_mismatch_is_loud(tmp_path):
    sd = create_adapter("clip-vit-b32", tiny=True).model.state_dict()
    extra = dict(sd, **{"visual.stray": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ModelError, match="1 unexpected: visual.stray"):
        create_adapter("clip-vit-b32", tiny=True, weights=tmp_path / "extra.pt")
    loose = create_adapter("clip-vit-b32", tiny=True, weights=tmp_path / "extra.pt", strict=False)
    assert loose.load_report.unexpected == ["visual.stray"]


@pytest.mark.parametrize("name", ["clip-vit-b16", "biomedclip"])
def test_open_clip_checkpoint_resized_on_load(name, tmp_path):
    """A 32 px checkpoint loads into a 48 px model (position grid resampled)."""
    src = create_adapter(name, tiny=True, seed=3)
    torch.save(src.model.state_dict(), tmp_path / "ckpt.pt")
    a = create_adapter(name, tiny=True, weights=tmp_path / "ckpt.pt", input_size=48)
    img, txt = _outputs(a, _images(a))
    assert img.shape == (4, a.feature_dim) and torch.isfinite(img).all()
    assert torch.equal(txt, _outputs(src, _images(src))[1])  # text tower untouched
    assert a.weights_id.endswith("@48")


# -- MedCLIP checkpoint mapping (transformers 4.x names) ----------------------

# Written independently of fmeval.adapters.medclip.SWIN_RENAMES: 5.x -> 4.x.
TO_V4 = (
    ("attention.relative_position_bias.relative_position_bias_table",
     "attention.self.relative_position_bias_table"),
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    ("attention.o_proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
)


def _medclip_v4_state_dict(adapter) -> dict[str, torch.Tensor]:
    """The tiny model's weights as MedCLIP's released (transformers 4.24) file names them."""
    sd = {}
    for key, value in adapter.model.state_dict().items():
        if key.startswith(SWIN_PREFIX):
            for new, old in TO_V4:
                if new in key:
                    key = key.replace(new, old)
                    break
        sd[key] = value.clone()
    for key, buf in adapter.model.named_buffers():  # persistent buffers under 4.x
        if key.endswith("relative_position_index"):
            sd[key.replace("attention.relative_position_bias.", "attention.self.")] = buf.clone()
    sd[POSITION_IDS_KEY] = torch.arange(128)[None]
    return sd


def test_medclip_loads_4x_checkpoint(tmp_path):
    src = create_adapter("medclip", tiny=True, seed=5)
    sd = _medclip_v4_state_dict(src)
    assert any(".attention.self.query." in k for k in sd if k.startswith(SWIN_PREFIX))
    assert any(k.endswith("blocks.0.output.dense.weight") for k in sd)
    assert any(k.endswith("attention.self.relative_position_index") for k in sd)
    ckpt = tmp_path / "pytorch_model.bin"
    torch.save(sd, ckpt)
    x = _images(src)
    for weights in (ckpt, tmp_path):  # the file or its folder
        dst = create_adapter("medclip", tiny=True, weights=weights)
        for a, b in zip(_outputs(src, x), _outputs(dst, x)):
            assert torch.equal(a, b)
        assert dst.weights_id == f"file:{file_digest(ckpt)[:16]}"
        assert dst.load_report.clean
        assert dst.logit_scale == src.logit_scale


def test_medclip_logit_scale_is_clamped(tmp_path):
    src = create_adapter("medclip", tiny=True)
    with torch.no_grad():
        src.model.logit_scale.fill_(7.0)
    assert src.logit_scale == pytest.approx(100.0)


@pytest.mark.parametrize("corrupt", ["extra", "shape"])
def test_medclip_mismatch_is_loud_unless_not_strict(corrupt, tmp_path):
    sd = _medclip_v4_state_dict(create_adapter("medclip", tiny=True, seed=5))
    if corrupt == "extra":
        sd["text_model.model.embeddings.stray"] = torch.zeros(3)
        expect = "unexpected: text_model.model.embeddings.stray"
    else:
        sd["text_model.projection_head.weight"] = torch.zeros(7, 32)
        expect = "shape mismatch: text_model.projection_head.weight"
    ckpt = tmp_path / "pytorch_model.bin"
    torch.save(sd, ckpt)
    with pytest.raises(ModelError, match=expect):
        create_adapter("medclip", tiny=True, weights=ckpt)
    loose = create_adapter("medclip", tiny=True, weights=ckpt, strict=False)
    assert not loose.load_report.clean


def test_medclip_text_pools_over_padding():
    """Faithful to MedCLIP: a prompt's embedding depends on its batch's padding."""
    a = create_adapter("medclip", tiny=True)
    with torch.no_grad():
        alone = a.encode_text(["a"])
        padded = a.encode_text(["a", "a photo of a chest x ray"])[:1]
    assert not torch.allclose(alone, padded)


# -- real end-to-end zero-shot sanity check -----------------------------------


@pytest.mark.slow
def test_tiny_clip_learns_digits_zero_shot():
    """Train a tiny CLIP briefly on real digits; prompts must then classify held-out ones.

    End to end through the real tokenizer, text tower and projections (~0.9
    held-out accuracy after 400 steps; chance is 0.1).
    """
    datasets = pytest.importorskip("sklearn.datasets")
    F = torch.nn.functional
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = (F.interpolate(x, size=32, mode="bilinear").repeat(1, 3, 1, 1) - 0.5) / 0.25
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    names = "zero one two three four five six seven eight nine".split()
    prompts = [f"a photo of the digit {n}" for n in names]

    a = create_adapter("clip-vit-b32", tiny=True).train()
    opt = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = train[torch.randint(0, len(train), (32,), generator=g)]
        img = F.normalize(a.encode_image(x[idx]), dim=-1)
        txt = F.normalize(a.encode_text(prompts), dim=-1)
        scale = a.model.logit_scale.exp().clamp(max=100)
        loss = F.cross_entropy(scale * img @ txt.T, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    a.eval()
    with torch.no_grad():
        img = F.normalize(a.encode_image(x[test]), dim=-1)
        txt = F.normalize(a.encode_text(prompts), dim=-1)
        acc = ((a.logit_scale * img @ txt.T).argmax(1) == y[test]).float().mean().item()
    assert acc > 0.75, acc
