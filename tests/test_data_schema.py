"""Schema checks of `pairuni.data.schema`: each error names the field a user must fix."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from pairuni.data import (
    FieldValueError,
    GenerationSample,
    ImageRef,
    Pair,
    Quadruple,
    UnderstandingSample,
)
from pairuni.data.errors import field_errors


def pair(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "pair_id": "p0",
        "kind": "retrieved",
        "similarity": 0.64,
        "gen_prompt": "a red cube left of a blue ball",
        "und_image": "images/u0.png",
        "und_question": "What colour is the cube?",
        "und_options": ["red", "green", "blue", "yellow"],
        "und_answer": "A",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def only_error(model: type, data: dict[str, object]) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    errors = field_errors(caught.value)
    assert len(errors) == 1, errors
    return errors[0]


def test_retrieved_weight_defaults_to_sqrt_similarity() -> None:
    # sqrt(0.64) = 0.8 and sqrt(0.49) = 0.7, by hand.
    assert Pair.model_validate(pair(similarity=0.64)).weight == pytest.approx(0.8)
    assert Pair.model_validate(pair(similarity=0.49)).weight == pytest.approx(0.7)


def test_written_weight_is_kept() -> None:
    # A builder may write linear weights; the trainer recomputes anyway, the file keeps them.
    assert Pair.model_validate(pair(similarity=0.64, weight=0.64)).weight == 0.64


def test_aligned_pair_defaults() -> None:
    aligned = Pair.model_validate(pair(kind="aligned", similarity=...))
    assert (aligned.similarity, aligned.weight) == (1.0, 1.0)


def test_bad_option_letter_names_und_answer() -> None:
    field, message = only_error(Pair, pair(und_answer="E"))
    assert field == "und_answer"
    assert message.startswith("answer 'E' is not one of the option letters A, B, C, D")


def test_open_question_takes_any_answer() -> None:
    assert Pair.model_validate(pair(und_options=[], und_answer="two")).und_answer == "two"


def test_empty_option_names_its_index() -> None:
    field, message = only_error(Pair, pair(und_options=["red", "green", " ", "blue"]))
    assert (field, message) == ("und_options.2", "an option is empty")


def test_repeated_option_names_its_index() -> None:
    field, message = only_error(
        UnderstandingSample,
        {"id": "u", "image": "a.png", "question": "q", "options": ["a", "b", "a"], "answer": "A"},
    )
    assert field == "options.2"
    assert "repeats option 0" in message


def test_too_many_options() -> None:
    options = [f"o{i}" for i in range(11)]
    field, _ = only_error(Pair, pair(und_options=options))
    assert field == "und_options"


def test_retrieved_pair_without_similarity() -> None:
    field, message = only_error(Pair, pair(similarity=...))
    assert field == "similarity"
    assert "retrieved pair needs its `similarity`" in message


@pytest.mark.parametrize("kind", ["aligned", "retrieved"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_similarity_out_of_range(kind: str, value: float) -> None:
    field, message = only_error(Pair, pair(kind=kind, similarity=value))
    assert field == "similarity"
    assert f"got {value}" in message


def test_non_finite_similarity() -> None:
    field, message = only_error(Pair, pair(similarity=float("nan")))
    assert field == "similarity"
    assert "finite" in message


def test_aligned_pair_with_other_weight() -> None:
    field, _ = only_error(Pair, pair(kind="aligned", similarity=..., weight=0.5))
    assert field == "weight"


def test_weight_out_of_range() -> None:
    field, _ = only_error(Pair, pair(weight=1.2))
    assert field == "weight"


def test_wrong_type_and_missing_fields() -> None:
    with pytest.raises(ValidationError) as caught:
        Pair.model_validate(pair(und_question=..., und_answer=5))
    errors = dict(field_errors(caught.value))
    assert errors["und_question"] == "required field is missing"
    assert errors["und_answer"].startswith("Input should be a valid string, got 5 (int)")


def test_empty_ids_are_rejected() -> None:
    for model, data in [
        (UnderstandingSample, {"id": "", "image": "a.png", "question": "q", "answer": "a"}),
        (GenerationSample, {"id": "", "prompt": "p"}),
        (Pair, pair(pair_id="")),
    ]:
        field, _ = only_error(model, data)
        assert field in ("id", "pair_id")


def test_quadruple_checks_options_too() -> None:
    data = {
        "id": "q",
        "origin": "generation",
        "image": "a.png",
        "prompt": "p",
        "question": "q",
        "options": ["x", "y"],
        "answer": "C",
    }
    field, _ = only_error(Quadruple, data)
    assert field == "answer"


def test_image_ref_forms() -> None:
    assert ImageRef.model_validate("images/a.png").path == "images/a.png"
    raw = bytes(range(256))
    decoded = ImageRef.model_validate({"bytes": base64.b64encode(raw).decode(), "path": "a.png"})
    assert decoded.data == raw
    assert ImageRef.model_validate({"bytes": raw}).data == raw  # parquet / HF: raw bytes


def test_image_ref_json_is_base64() -> None:
    raw = b"\x00\xff\x10"
    dumped = ImageRef(bytes=raw, path="x.png").model_dump(mode="json", by_alias=True)
    assert dumped == {"path": "x.png", "bytes": "AP8Q"}  # base64 of 00 ff 10, by hand
    assert ImageRef.model_validate(dumped).data == raw


def test_image_ref_errors_name_subfield() -> None:
    field, message = only_error(Pair, pair(und_image={"bytes": "not base64!"}))
    assert field == "und_image.bytes"
    assert "not valid base64" in message
    field, message = only_error(Pair, pair(und_image={"path": None}))
    assert field == "und_image"
    assert "needs a `path` or `bytes`" in message
    field, _ = only_error(Pair, pair(und_image={"path": ""}))
    assert field == "und_image.path"


def test_field_value_error_keeps_field() -> None:
    error = FieldValueError("und_options.2", "bad")
    assert (error.field, str(error)) == ("und_options.2", "bad")
    assert isinstance(error, ValueError)


def test_extra_fields_are_kept() -> None:
    record = UnderstandingSample.model_validate(
        {"id": "u", "image": "a.png", "question": "q", "answer": "a", "scene": {"objects": []}}
    )
    assert record.model_extra == {"scene": {"objects": []}}
