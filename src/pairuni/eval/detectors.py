"""Object detectors for GenEval, behind one small protocol.

GenEval judges an image from the objects a detector finds in it. Any object with a
`detect(image, class_names) -> list[Detection]` method plugs in: the transformers OWLv2 adapter
below (open-vocabulary, weights from a local directory), or the ShapesWorld detector of the
miniature, which knows each shape's colour exactly.

Colour: the official GenEval classifies the colour of each detected object with CLIP on its crop.
A `Detection` may carry its colour directly (`color`); when it does not, the GenEval judge asks
a `ColorClassifier`, e.g. `ClipColorClassifier`, which follows the official zero-shot recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
"""GenEval's ten colour names, in the official order."""

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in pixels of the image, x to the right, y down."""


@dataclass(frozen=True)
class Detection:
    """One detected object: its class name (one of the names asked for), box, confidence in
    [0, 1], and its colour (one of `COLORS`) when the detector knows it."""

    label: str
    box: Box
    score: float
    color: str | None = None


@runtime_checkable
class Detector(Protocol):
    """Finds instances of the named classes in an image."""

    def detect(self, image: Image.Image, class_names: Sequence[str]) -> list[Detection]:
        """Every instance found of any of `class_names`; `label` is the name as given."""
        ...


@runtime_checkable
class ColorClassifier(Protocol):
    """Names the colour of objects of one class, from their boxes in an image."""

    def classify(self, image: Image.Image, boxes: Sequence[Box], class_name: str) -> list[str]:
        """One colour from `COLORS` per box."""
        ...


def require_local_dir(path: str | Path, what: str) -> Path:
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory}: no {what} checkpoint here (config.json missing). Weights are never "
            "downloaded at run time: save the model with `save_pretrained` (or "
            "`huggingface-cli download ... --local-dir`) and pass that directory."
        )
    return directory


def crop_box(image: Image.Image, box: Box) -> Image.Image:
    """The image cropped to the box (clamped to the image; at least one pixel)."""
    x0, y0, x1, y1 = box
    left = min(max(int(x0), 0), image.width - 1)
    top = min(max(int(y0), 0), image.height - 1)
    right = max(min(round(x1), image.width), left + 1)
    bottom = max(min(round(y1), image.height), top + 1)
    return image.crop((left, top, right, bottom))


class Owlv2Detector:
    """transformers' OWLv2 (`Owlv2ForObjectDetection` + `Owlv2Processor`) from a local directory.

    Each class name becomes the text query `query_template.format(name)`. Boxes come back in the
    pixels of the original image (OWLv2 pads images to a square; its post-processing is given the
    padded size and the boxes are clipped to the image). Detections scoring below `min_score` are
    dropped here; GenEval's own thresholds apply afterwards.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        query_template: str = "a photo of a {}",
        min_score: float = 0.05,
    ) -> None:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        directory = require_local_dir(model_dir, "OWLv2")
        self.processor = Owlv2Processor.from_pretrained(directory)
        self.model = Owlv2ForObjectDetection.from_pretrained(directory).to(device).eval()
        self.device = device
        self.query_template = query_template
        self.min_score = min_score

    def detect(self, image: Image.Image, class_names: Sequence[str]) -> list[Detection]:
        import torch

        if not class_names:
            return []
        image = image.convert("RGB")
        queries = [[self.query_template.format(name) for name in class_names]]
        inputs = self.processor(
            text=queries, images=image, return_tensors="pt", padding=True, truncation=True
        ).to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        side = max(image.width, image.height)
        found = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.min_score, target_sizes=torch.tensor([[side, side]])
        )[0]
        detections = []
        for box, score, label in zip(
            found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist(), strict=True
        ):
            x0, y0, x1, y1 = box
            clipped = (
                min(max(x0, 0.0), image.width),
                min(max(y0, 0.0), image.height),
                min(max(x1, 0.0), image.width),
                min(max(y1, 0.0), image.height),
            )
            detections.append(Detection(class_names[int(label)], clipped, float(score)))
        return detections


class ClipColorClassifier:
    """GenEval's colour classifier: zero-shot CLIP on each object's crop.

    For a class C the classifier of colour c is the mean of the normalised text embeddings of
    "a photo of a {c} {C}", "a photo of a {c}-colored {C}" and "a photo of a {c} object"
    (renormalised); a crop gets the colour whose classifier has the highest cosine with its image
    embedding. The official evaluation uses OpenCLIP ViT-L-14 (OpenAI weights); any
    transformers `CLIPModel` saved in a local directory works here.
    """

    TEMPLATES = (
        "a photo of a {c} {cls}",
        "a photo of a {c}-colored {cls}",
        "a photo of a {c} object",
    )

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        directory = require_local_dir(model_dir, "CLIP")
        self.processor = CLIPProcessor.from_pretrained(directory)
        self.model = CLIPModel.from_pretrained(directory).to(device).eval()
        self.device = device
        self._classifiers: dict[str, object] = {}

    def class_weights(self, class_name: str):  # -> torch.Tensor (len(COLORS), dim)
        import torch

        if class_name not in self._classifiers:
            rows = []
            for color in COLORS:
                texts = [t.format(c=color, cls=class_name) for t in self.TEMPLATES]
                tokens = self.processor(text=texts, return_tensors="pt", padding=True).to(
                    self.device
                )
                with torch.no_grad():
                    emb = self.model.get_text_features(**tokens)
                emb = torch.nn.functional.normalize(as_tensor(emb), dim=-1).mean(dim=0)
                rows.append(torch.nn.functional.normalize(emb, dim=-1))
            self._classifiers[class_name] = torch.stack(rows)
        return self._classifiers[class_name]

    def classify(self, image: Image.Image, boxes: Sequence[Box], class_name: str) -> list[str]:
        import torch

        if not boxes:
            return []
        crops = [crop_box(image.convert("RGB"), box) for box in boxes]
        pixels = self.processor(images=crops, return_tensors="pt").to(self.device)
        with torch.no_grad():
            emb = as_tensor(self.model.get_image_features(**pixels))
        emb = torch.nn.functional.normalize(emb, dim=-1)
        best = (emb @ self.class_weights(class_name).T).argmax(dim=-1)
        return [COLORS[int(i)] for i in best]


def as_tensor(output):  # -> torch.Tensor
    """`get_*_features` return a tensor in some transformers versions and an output object with
    `pooler_output` in others."""
    return output if hasattr(output, "dim") else output.pooler_output
