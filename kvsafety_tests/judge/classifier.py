"""The classifier judge: the user's own Hugging Face sequence-classification model, by local path.

The mapping of the model's labels (``config.id2label``) to ours is explicit and strict: each model
label is matched by case-insensitive equality, never by substring, so a head with labels
``refusal`` and ``non-refusal`` needs both named. A map that leaves a model label out, names a
label the model lacks, names one twice, or cannot say ``refused`` (or can say nothing else) is
refused with one line naming the model's labels and how to write the map. Without a map only a
head whose labels are exactly ours (refused / complied / incoherent) is accepted.

In the ``judge`` setting the map is written into the name: ``classifier:MAP:PATH``, e.g.
``classifier:REJECTION=refused,NORMAL=complied:/models/rejection-head``; a bare folder path is a
head with our label names. transformers and torch are imported at the first ``label`` call,
never at import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .protocol import LABELS, JudgeError, check_pairs, model_folder

__all__ = ["ClassifierJudge", "parse_label_map", "resolve_label_map"]

_EXAMPLE = "REJECTION=refused,NORMAL=complied"


def parse_label_map(spec: str | Mapping[str, str]) -> dict[str, str]:
    """A classifier's label names (lower-cased) -> ours, from a dict or ``"NAME=label,NAME=label"``.

    Names are matched case-insensitively, so one named twice (in any case) is an error; targets
    must be in ``LABELS``.
    """
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        pairs = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, eq, target = part.partition("=")
            if not eq or not name.strip():
                raise JudgeError(f"label map entry {part!r} invalid; write MODEL_LABEL=OURS, e.g. {_EXAMPLE}")
            pairs.append((name.strip(), target.strip()))
    out: dict[str, str] = {}
    for name, target in pairs:
        if target not in LABELS:
            raise JudgeError(
                f"label map target {target!r} (for {name!r}) unknown; valid: {', '.join(LABELS)}"
            )
        if name.lower() in out:
            raise JudgeError(
                f"label map names {name!r} twice (labels match case-insensitively); name each model label once"
            )
        out[name.lower()] = target
    if not out:
        raise JudgeError(f"label map is empty; write MODEL_LABEL=OURS pairs, e.g. {_EXAMPLE}")
    return out


def _map_hint(labels: Sequence[str]) -> str:
    """How to write a map for these model labels: each named, with a placeholder target."""
    return ",".join(f"{v}=<{'|'.join(LABELS)}>" for v in labels)


def resolve_label_map(
    id2label: Mapping[int, str], label_map: str | Mapping[str, str] | None, where: str
) -> dict[int, str]:
    """Model label id -> our label, by the strict rules in the module docstring."""
    labels = [id2label[i] for i in sorted(id2label)]
    found = ", ".join(labels)
    lowered = [v.lower() for v in labels]
    clashes = sorted({v for v in labels if lowered.count(v.lower()) > 1})
    if clashes:
        raise JudgeError(
            f"{where}: labels {', '.join(clashes)} differ only in case, so no map can tell them apart; "
            f"its labels: {found}"
        )
    if label_map is None:
        if all(v in LABELS for v in lowered):
            mapping = {v: v for v in lowered}
        else:
            raise JudgeError(
                f"{where}: labels {found} are not ours ({', '.join(LABELS)}) and no label map was given; "
                f"name every label, e.g. judge = 'classifier:{_map_hint(labels)}:PATH'"
            )
    else:
        mapping = parse_label_map(label_map)
    unknown = sorted(set(mapping) - set(lowered))
    if unknown:
        raise JudgeError(
            f"label map names {', '.join(unknown)}, which {where} does not have; its labels: {found}"
        )
    unmapped = [v for v in labels if v.lower() not in mapping]
    if unmapped:
        raise JudgeError(
            f"{where}: label(s) {', '.join(unmapped)} have no mapping; name each of {found} as one of "
            f"{', '.join(LABELS)}, e.g. {_map_hint(labels)}"
        )
    targets = {mapping[v] for v in lowered}
    if "refused" not in targets or targets == {"refused"}:
        raise JudgeError(
            f"{where}: the label map sends its labels {found} to {', '.join(sorted(targets))} only; a refusal "
            "judge needs at least one label mapped to refused and one to complied or incoherent"
        )
    return {i: mapping[v.lower()] for i, v in id2label.items()}


class ClassifierJudge:
    """The user's Hugging Face sequence-classification model, read from a local folder.

    Its labels (``config.id2label``) are mapped to ours with ``label_map`` (``parse_label_map``,
    checked by the strict rules in the module docstring). ``with_prompt`` feeds (prompt,
    completion) as a text pair, for classifiers trained on both; the default is the completion
    alone. Only safetensors weights are read unless ``allow_pickle`` (pickled checkpoints can run
    code). It has no measured accuracy: the report says it is unmeasured.
    """

    version: str | None = None  # the user's model: no version of ours

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
        folder, config = model_folder(path, "classifier", allow_pickle=allow_pickle)
        id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        if not id2label:
            raise JudgeError(
                f"classifier {str(path)!r} has no id2label in config.json; it names no labels to map"
            )
        self.path = folder
        self.name = f"classifier:{folder.name}"
        self.id_to_ours = resolve_label_map(id2label, label_map, f"classifier {str(path)!r}")
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
            if sorted(self.id_to_ours) != list(range(model.config.num_labels)):
                raise JudgeError(
                    f"classifier {str(self.path)!r}: its head has {model.config.num_labels} outputs but "
                    f"config.json's id2label names ids {sorted(self.id_to_ours)}; fix id2label"
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
