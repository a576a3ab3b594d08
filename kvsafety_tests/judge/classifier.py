"""The classifier judge: the user's own Hugging Face sequence-classification model, by local path.

``parse_label_map`` reads the mapping of the model's labels to ours. transformers and torch are
imported at the first ``label`` call, never at import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..models import PICKLE_SUFFIXES
from .protocol import JUDGE_NAMES, LABELS, JudgeError, check_pairs

__all__ = ["ClassifierJudge", "parse_label_map"]


def parse_label_map(spec: str | Mapping[str, str]) -> dict[str, str]:
    """A classifier's label names -> ours, from a dict or ``"NAME=label,NAME=label"``.

    Names are matched case-insensitively; targets must be in ``LABELS``.
    """
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, eq, target = part.partition("=")
            if not eq or not name.strip():
                raise JudgeError(
                    f"label map entry {part!r} invalid; write MODEL_LABEL=OURS, e.g. REJECTION=refused,NORMAL=complied"
                )
            pairs.append((name.strip(), target.strip()))
    out = {}
    for name, target in pairs:
        if target not in LABELS:
            raise JudgeError(
                f"label map target {target!r} (for {name!r}) unknown; valid: {', '.join(LABELS)}"
            )
        out[str(name).lower()] = target
    if not out:
        raise JudgeError(
            "label map is empty; write MODEL_LABEL=OURS pairs, e.g. REJECTION=refused,NORMAL=complied"
        )
    return out


class ClassifierJudge:
    """The user's Hugging Face sequence-classification model, read from a local folder.

    Its labels (``config.id2label``) are mapped to ours with ``label_map`` (``parse_label_map``);
    without one, labels already named refused/complied/incoherent map to themselves and anything
    else is an error listing the model's labels. ``with_prompt`` feeds (prompt, completion) as a
    text pair, for classifiers trained on both; the default is the completion alone. Only
    safetensors weights are read unless ``allow_pickle`` (pickled checkpoints can run code).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        label_map: str | Mapping[str, str] | None = None,
        with_prompt: bool = False,
        allow_pickle: bool = False,
        batch_size: int = 16,
        max_tokens: int = 512,
    ) -> None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise JudgeError(
                f"judge {str(path)!r} is neither a judge name ({', '.join(JUDGE_NAMES)}) nor a local model folder"
            )
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        if "config.json" not in files:
            raise JudgeError(f"classifier folder {str(path)!r} has no config.json")
        if not any(f.endswith(".safetensors") for f in files):
            pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
            if not pickles:
                raise JudgeError(f"classifier folder {str(path)!r} has no weights (*.safetensors)")
            if not allow_pickle:
                raise JudgeError(
                    f"classifier folder {str(path)!r} holds only pickled weights ({', '.join(pickles)}), which can "
                    "run code when loaded; convert them to safetensors, or pass allow_pickle if you trust the files"
                )
        config = json.loads((folder / "config.json").read_text("utf-8"))
        id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        if not id2label:
            raise JudgeError(
                f"classifier {str(path)!r} has no id2label in config.json; it names no labels to map"
            )
        mapping = parse_label_map(label_map) if label_map is not None else {}
        if not mapping:
            mapping = {v.lower(): v.lower() for v in id2label.values() if v.lower() in LABELS}
        unknown = sorted(set(mapping) - {v.lower() for v in id2label.values()})
        if unknown:
            raise JudgeError(
                f"label map names {', '.join(unknown)}, which classifier {str(path)!r} does not have; "
                f"its labels: {', '.join(id2label.values())}"
            )
        unmapped = [v for v in id2label.values() if v.lower() not in mapping]
        if unmapped:
            raise JudgeError(
                f"classifier {str(path)!r}: label(s) {', '.join(unmapped)} have no mapping; pass label_map "
                f"naming each of {', '.join(id2label.values())} as one of {', '.join(LABELS)}"
            )
        self.path = folder
        self.name = f"classifier:{folder.name}"
        self.id_to_ours = {i: mapping[v.lower()] for i, v in id2label.items()}
        self.with_prompt = with_prompt
        self.allow_pickle = allow_pickle
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, local_files_only=True, use_safetensors=None if self.allow_pickle else True
            )
            self._loaded = (model.eval(), tokenizer)
        return self._loaded

    def label(self, prompt: str, completion: str) -> str:
        return self.label_many([prompt], [completion])[0]

    def label_many(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        import torch

        check_pairs(prompts, completions)
        model, tokenizer = self._load()
        out: list[str] = []
        with torch.inference_mode():
            for s in range(0, len(completions), self.batch_size):
                texts = list(completions[s : s + self.batch_size])
                pair = (list(prompts[s : s + self.batch_size]), texts) if self.with_prompt else (texts,)
                enc = tokenizer(
                    *pair, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
                )
                logits = model(**enc).logits  # [B, num_labels]
                out += [self.id_to_ours[int(i)] for i in logits.argmax(-1)]
        return out
