"""The detector adapters on tiny random models built from configs and saved to a temporary
directory (no weights are downloaded): they load, run and return the right types. The numbers a
random model produces are meaningless, so only shapes, types and ranges are checked here; the
GenEval rules themselves are tested in test_eval_geneval.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pairuni.eval.detectors import (
    COLORS,
    ClipColorClassifier,
    ColorClassifier,
    Detection,
    Detector,
    Owlv2Detector,
    crop_box,
)
from pairuni.eval.geneval import GenEvalPrompt, GenEvalRules, judge_image


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz-"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def text_config(tokenizer) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


VISION = {
    "image_size": 64,
    "patch_size": 16,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


@pytest.fixture(scope="module")
def owlv2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
    )

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = Owlv2Config(
        text_config=text_config(tokenizer), vision_config=VISION, projection_dim=32
    )
    directory = tmp_path_factory.mktemp("owlv2")
    Owlv2ForObjectDetection(config).save_pretrained(directory)
    image_processor = Owlv2ImageProcessorPil(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = CLIPConfig(text_config=text_config(tokenizer), vision_config=VISION, projection_dim=16)
    directory = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(directory)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def test_owlv2_adapter_returns_detections_in_image_pixels(owlv2_dir: Path) -> None:
    detector = Owlv2Detector(owlv2_dir, min_score=0.0)
    assert isinstance(detector, Detector)
    image = Image.new("RGB", (80, 50), (200, 30, 30))  # not square: OWLv2 pads it
    found = detector.detect(image, ["dog", "traffic light"])
    assert found and all(isinstance(d, Detection) for d in found)
    assert {d.label for d in found} <= {"dog", "traffic light"}
    for d in found:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 50
        assert 0.0 <= d.score <= 1.0 and d.color is None
    assert detector.detect(image, []) == []


def test_owlv2_detections_feed_the_geneval_judge(owlv2_dir: Path, clip_dir: Path) -> None:
    detector = Owlv2Detector(owlv2_dir, min_score=0.0)
    classifier = ClipColorClassifier(clip_dir)
    assert isinstance(classifier, ColorClassifier)
    prompt = GenEvalPrompt(
        "0", "colors", "a red dog", ({"class": "dog", "count": 1, "color": "red"},)
    )
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    rules = GenEvalRules(threshold=0.0)
    verdict = judge_image(
        prompt, detector.detect(image, prompt.class_names), rules, image, classifier
    )
    assert isinstance(verdict.correct, bool)


def test_clip_colour_classifier_names_one_colour_per_box(clip_dir: Path) -> None:
    classifier = ClipColorClassifier(clip_dir)
    image = Image.new("RGB", (40, 30), (0, 0, 255))
    colours = classifier.classify(image, [(0, 0, 10, 10), (5, 5, 40, 30), (39, 29, 60, 60)], "car")
    assert len(colours) == 3 and all(c in COLORS for c in colours)
    assert classifier.classify(image, [], "car") == []
    weights = classifier.class_weights("car")
    assert tuple(weights.shape) == (len(COLORS), 16)  # one unit vector per colour
    assert weights.norm(dim=-1).sub(1).abs().max() < 1e-5
    boxes = [(0, 0, 10, 10), (5, 5, 40, 30)]
    assert colours[:2] == naive_colours(clip_dir, image, boxes, "car")


def naive_colours(clip_dir: Path, image: Image.Image, boxes: list, name: str) -> list[str]:
    """The GenEval recipe written out plainly, one text and one crop at a time."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)

    def unit(v: torch.Tensor) -> torch.Tensor:
        v = v if hasattr(v, "dim") else v.pooler_output
        return v[0] / v[0].norm()

    templates = [f"a photo of a {{}} {name}", f"a photo of a {{}}-colored {name}"]
    templates.append("a photo of a {} object")
    rows = []
    with torch.no_grad():
        for colour in COLORS:
            embs = []
            for template in templates:
                tokens = processor(text=[template.format(colour)], return_tensors="pt")
                embs.append(unit(model.get_text_features(**tokens)))
            mean = torch.stack(embs).mean(0)
            rows.append(mean / mean.norm())
        out = []
        for x0, y0, x1, y1 in boxes:
            pixels = processor(images=[image.crop((x0, y0, x1, y1))], return_tensors="pt")
            emb = unit(model.get_image_features(**pixels))
            out.append(COLORS[int(torch.stack(rows).matmul(emb).argmax())])
    return out


def test_crop_box_clamps_to_the_image() -> None:
    image = Image.new("RGB", (20, 10))
    assert crop_box(image, (-5, -5, 8, 4)).size == (8, 4)
    assert crop_box(image, (19.6, 9.5, 40, 40)).size == (1, 1)  # at least one pixel


def test_missing_model_directory_says_how_to_provide_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        Owlv2Detector(tmp_path)
