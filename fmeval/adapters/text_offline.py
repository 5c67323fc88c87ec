"""Offline text-tower helpers shared by the vision-language adapters.

Tiny and random builds of open_clip's BiomedCLIP-shaped model and of MedCLIP
need a tokenizer of the real kind without a download; both adapter families
use these, so they live below both (families never import each other).
"""

from __future__ import annotations

import atexit
import shutil
import string
import tempfile
from pathlib import Path

from fmeval.errors import ModelError

_SCRATCH: Path | None = None


def scratch_dir() -> Path:
    """Per-process temp folder for generated configs and vocabularies."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="fmeval-openclip-"))
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_WORDS = (
    "a an the of in on with and or no not photo image picture scan x ray xray chest "
    "lung lungs normal abnormal pneumonia disease tissue cell cells blood skin eye "
    "retina breast colon organ finding findings there is are sign signs showing "
    "digit zero one two three four five six seven eight nine"
).split()


# --------------------------------------------------------------------------- #
# Tokenizer files
# --------------------------------------------------------------------------- #
def write_wordpiece_vocab(folder: Path, *, lowercase: bool, size: int | None = None) -> int:
    """Write a small deterministic WordPiece ``vocab.txt`` (+ tokenizer config).

    Offline tiny/random builds need *a* tokenizer of the real kind; padding it
    with ``[unusedN]`` entries up to ``size`` gives the real embedding shape.
    Returns the vocabulary size.
    """
    letters = string.ascii_lowercase if lowercase else string.ascii_letters
    pieces = list(letters + string.digits + string.punctuation)
    tokens = [*BERT_SPECIALS, *pieces, *(f"##{c}" for c in letters + string.digits), *TINY_WORDS]
    tokens = list(dict.fromkeys(tokens))
    if size is not None:
        if size < len(tokens):
            raise ModelError(f"synthetic vocabulary needs at least {len(tokens)} entries.")
        tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "BertTokenizer", "do_lower_case": %s}' % str(lowercase).lower()
    )
    return len(tokens)
